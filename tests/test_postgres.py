"""The registry on a real PostgreSQL server, and the same checks on SQLite.

Postgres tests need ``XREG_TEST_POSTGRES_URL``, a superuser URL of a throw-away
server (``.ci/run`` starts one with ``.ci/postgres.sh``; a developer runs
``eval "$(.ci/postgres.sh start)"``).  Every test gets a database of its own, dropped
afterwards.  Without the variable those cases skip and say why.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Iterator

import pytest
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import URL, make_url

from xcross_registry import database, schema
from xcross_registry.registry import Registry
from xcross_registry.safe_text import mask_url
from xcross_registry.schema import (AdapterVersion, BaseModel, CandidateSet, Composition,
                                    CompositionSource, Domain, EvaluationResult, Tag)

ADMIN_URL = os.environ.get("XREG_TEST_POSTGRES_URL", "")
NO_SERVER = ("XREG_TEST_POSTGRES_URL is not set: start a throw-away server with "
             "eval \"$(.ci/postgres.sh start)\" (.ci/run does this)")
needs_postgres = pytest.mark.skipif(not ADMIN_URL, reason=NO_SERVER)
PASSWORD = "p@ss%w0rd"
SMALL = "users=10&items=60&max_len=6"
QUICK = ["--epochs", "1", "--max-users", "16", "--batch-size", "8", "--negatives", "3"]


def _admin():
    return create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")


@contextlib.contextmanager
def fresh_database(owner: str | None = None) -> Iterator[URL]:
    """An empty database on the test server (owned by ``owner``), dropped afterwards."""
    name = f"xreg_test_{uuid.uuid4().hex[:12]}"
    admin = _admin()
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE {name}' + (f' OWNER "{owner}"' if owner else "")))
    try:
        yield make_url(ADMIN_URL).set(database=name)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request, xreg_home, monkeypatch) -> Iterator[str]:
    """The registry's URL on each backend, set in XREG_DATABASE_URL (subprocesses inherit it)."""
    if request.param == "sqlite":
        url = f"sqlite:///{xreg_home / 'registry.db'}"
        monkeypatch.setenv("XREG_DATABASE_URL", url)
        yield url
        return
    yield from _postgres_registry(monkeypatch)


@pytest.fixture
def postgres_backend(xreg_home, monkeypatch) -> Iterator[str]:
    """A registry in a fresh database of the test server, set in XREG_DATABASE_URL."""
    yield from _postgres_registry(monkeypatch)


def _postgres_registry(monkeypatch) -> Iterator[str]:
    if not ADMIN_URL:
        pytest.skip(NO_SERVER)
    with fresh_database() as url:
        rendered = url.render_as_string(hide_password=False)
        monkeypatch.setenv("XREG_DATABASE_URL", rendered)
        yield rendered


def test_migrations_from_empty(xreg, backend):
    first = xreg("init")
    assert first.exit_code == 0, first.stderr
    shown = mask_url(make_url(backend))
    assert first.stdout.startswith(f"registry ready at {shown} (schema {schema.SCHEMA_HEAD})")
    engine = database.make_engine(backend)
    assert database.current_revision(engine) == schema.SCHEMA_HEAD
    tables = set(inspect(engine).get_table_names())
    assert {schema.VERSION_TABLE, "domains", "adapter_versions", "compositions",
            "composition_sources", "evaluation_results", "tags", "base_models",
            "candidate_sets"} <= tables
    assert "alembic_version" not in tables
    again = xreg("init")  # a second init finds the schema at head and changes nothing
    assert again.exit_code == 0 and f"(schema {schema.SCHEMA_HEAD})" in again.stdout
    engine.dispose()


def test_every_registry_command(xreg, backend):
    assert xreg("init").exit_code == 0
    for name in ("toys", "tools"):
        added = xreg("add-domain", name, "--plugin", "synthetic", "--data", f"{name}?{SMALL}",
                     "--description", f"little {name}", "--json")
        assert added.exit_code == 0, added.stderr
        assert added.json()["summary"]["users"]["train"] == 7
    duplicate = xreg("add-domain", "toys", "--plugin", "synthetic", "--data", "toys")
    assert duplicate.exit_code == 1
    assert duplicate.stderr.startswith("error: domain 'toys' already exists")
    assert [d["name"] for d in xreg("domains", "--json").json()] == ["tools", "toys"]
    shown = xreg("show", "toys", "--json").json()
    assert shown["description"] == "little toys" and shown["adapters"] == []
    assert xreg("adapters", "--json").json() == []
    assert xreg("compositions", "--json").json() == []
    assert xreg("leaderboard", "toys").stdout.strip() == "no evaluations on toys yet"
    assert xreg("plugins", "--json").exit_code == 0
    items = xreg("items", "toys", "--json")
    assert items.exit_code == 0 and len(items.json()) == 50  # the first 50 of 60

    registry = Registry()
    candidates, digest = registry.candidate_set("toys", "test", "sampled", seed=0)
    assert registry.candidate_set("toys", "test", "sampled", seed=0)[1] == digest
    domain_id = registry.domain("toys").id
    registry.set_tag("domain", domain_id, "owner", "team-a")
    registry.set_tag("domain", domain_id, "owner", "team-b")
    assert registry.tags("domain", domain_id) == {"owner": "team-b"}
    with registry.session() as session:
        base = BaseModel(name="tiny", family="encoder", model_type="bert", hidden_size=8,
                         num_layers=1)
        session.add(base)
        session.flush()
        session.add(AdapterVersion(domain_id=domain_id, base_model_id=base.id, version=1,
                                   artifact_digest="0" * 64, trainable_parameters=10,
                                   data_fingerprint="f" * 64, training_config={"a": [1, 2]}))
    assert [a["training_config"] for a in xreg("adapters", "toys", "--json").json()] == \
        [{"a": [1, 2]}]
    refused = xreg("remove", "toys")
    assert refused.exit_code == 1 and "used by toys@v1" in refused.stderr
    assert xreg("remove", "toys", "--force").exit_code == 0
    assert xreg("remove", "tools").exit_code == 0
    assert xreg("domains", "--json").json() == []
    assert registry.count(AdapterVersion) == registry.count(Tag) == 0
    assert registry.count(CandidateSet) == 1  # kept: candidates belong to the data, not the name
    gc = xreg("gc", "--dry-run", "--json")
    assert gc.exit_code == 0, gc.stderr


WRITER = textwrap.dedent("""
    import os, sys, time
    from xcross_registry.cli import main

    prefix, go, recipe = sys.argv[1:4]
    while not os.path.exists(go):  # start together
        time.sleep(0.01)
    for i in range(50):
        sys.argv = ["xreg", "add-domain", f"{prefix}-{i}", "--plugin", "synthetic",
                    "--data", recipe, "--json"]
        try:
            main()
        except SystemExit as exit_:
            if exit_.code:
                raise
""")


def _start_together(script: str, runs: list[list[str]], go: Path) -> list[tuple[int, str]]:
    """Run ``script`` once per argument list, all released at the same moment."""
    processes = [subprocess.Popen([sys.executable, "-c", script, *args], env=dict(os.environ),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                 for args in runs]
    go.touch()
    results = []
    for process in processes:
        _, err = process.communicate(timeout=900)
        results.append((process.returncode, err))
    return results


@pytest.mark.slow
def test_8_processes_add_50_domains_each(xreg, backend, tmp_path):
    assert xreg("init").exit_code == 0  # as a team's admin would, before anyone registers
    go = tmp_path / "go"
    results = _start_together(WRITER, [[f"p{n}", str(go), f"toys?{SMALL}"] for n in range(8)], go)
    for code, err in results:
        assert code == 0 and err == "", err
    names = {d.name for d in Registry().domains()}
    assert names == {f"p{n}-{i}" for n in range(8) for i in range(50)}


FIRST_USE = textwrap.dedent("""
    import os, sys, time
    go = sys.argv[1]
    while not os.path.exists(go):
        time.sleep(0.005)
    from xcross_registry.registry import Registry
    Registry()
""")


@pytest.mark.slow
@needs_postgres
@pytest.mark.parametrize("round_", range(2))
def test_8_simultaneous_first_uses_of_an_empty_postgres_database(tmp_path, monkeypatch, round_):
    with fresh_database() as url:
        monkeypatch.setenv("XREG_DATABASE_URL", url.render_as_string(hide_password=False))
        go = tmp_path / "go"
        results = _start_together(FIRST_USE, [[str(go)]] * 8, go)
        assert [code for code, _ in results] == [0] * 8, [err for _, err in results]
        engine = database.make_engine(url.render_as_string(hide_password=False))
        assert database.current_revision(engine) == schema.SCHEMA_HEAD
        with engine.connect() as connection:
            assert connection.execute(
                text(f"SELECT count(*) FROM {schema.VERSION_TABLE}")).scalar() == 1
        engine.dispose()


@needs_postgres
def test_password_with_at_and_percent_is_masked_and_migrates(xreg, xreg_home, monkeypatch):
    role = f"xreg_pw_{uuid.uuid4().hex[:8]}"
    admin = _admin()
    with admin.connect() as connection:
        connection.execute(text(f"CREATE ROLE {role} LOGIN PASSWORD '{PASSWORD}'"))
    try:
        with fresh_database(owner=role) as owned:
            url = owned.set(username=role, password=PASSWORD)
            rendered = url.render_as_string(hide_password=False)
            assert "p%40ss%25w0rd" in rendered
            monkeypatch.setenv("XREG_DATABASE_URL", rendered)
            init = xreg("init")
            assert init.exit_code == 0, init.stderr
            assert f"registry ready at postgresql+psycopg://{role}:***@{url.host}:{url.port}/" \
                   f"{url.database} (schema {schema.SCHEMA_HEAD})" in init.stdout
            added = xreg("add-domain", "toys", "--plugin", "synthetic", "--data", f"toys?{SMALL}")
            assert added.exit_code == 0, added.stderr
            missing = xreg("show", "nothing")
            wrong = url.set(password=PASSWORD + "x").render_as_string(hide_password=False)
            monkeypatch.setenv("XREG_DATABASE_URL", wrong)
            refused = xreg("domains")
            assert refused.exit_code == 1
            assert refused.stderr.startswith(f"error: cannot connect to registry database "
                                             f"postgresql+psycopg://{role}:***@"), refused.stderr
            assert "password authentication failed" in refused.stderr
            for output in (init.stdout, init.stderr, added.stdout, added.stderr,
                           missing.stderr, refused.stderr):
                assert "w0rd" not in output and "p@ss" not in output and "%40" not in output
    finally:
        with admin.connect() as connection:
            connection.execute(text(f"DROP ROLE IF EXISTS {role}"))
        admin.dispose()


@needs_postgres
def test_password_in_the_query_string_is_masked(xreg, xreg_home, monkeypatch):
    """libpq's ``?user=u&password=…`` form: masked in init's line and in a connection error."""
    with fresh_database() as url:
        secret = url.password
        query_form = (f"postgresql://{url.host}:{url.port}/{url.database}?user={url.username}"
                      f"&password={secret}")
        monkeypatch.setenv("XREG_DATABASE_URL", query_form)
        init = xreg("init")
        assert init.exit_code == 0, init.stderr
        assert f"registry ready at postgresql+psycopg://{url.host}:{url.port}/{url.database}" \
               f"?password=***&user={url.username} " in init.stdout
        monkeypatch.setenv("XREG_DATABASE_URL", query_form + "-wrong")
        refused = xreg("domains")
        assert refused.exit_code == 1 and "password authentication failed" in refused.stderr
        for output in (init.stdout, init.stderr, refused.stdout, refused.stderr):
            assert secret not in output


@pytest.mark.slow
def test_train_compose_evaluate_on_postgres(xreg, postgres_backend, tiny_base_model):
    """The SQLite flow is tests/test_composer.py's."""
    for name in ("toys", "tools", "kitchen"):
        assert xreg("add-domain", name, "--plugin", "synthetic", "--data",
                    f"{name}?users=120&items=60&max_len=8").exit_code == 0
    for name in ("toys", "tools"):
        trained = xreg("train-adapter", name, *QUICK, "--base-model", str(tiny_base_model), "--json")
        assert trained.exit_code == 0, trained.stderr
    composed = xreg("compose", "--sources", "toys,tools", "--target", "kitchen", *QUICK,
                    "--fraction", "0.5", "--json")
    assert composed.exit_code == 0, composed.stderr
    assert [s["adapter"] for s in composed.json()["sources"]] == ["toys@v1", "tools@v1"]
    evaluated = xreg("evaluate", "kitchen-x", "--json")
    assert evaluated.exit_code == 0, evaluated.stderr
    assert evaluated.json()["metrics"] == composed.json()["evaluation"]["metrics"]
    board = xreg("leaderboard", "kitchen", "--json")
    assert board.exit_code == 0, board.stderr
    registry = Registry()
    assert registry.count(AdapterVersion) == 2 and registry.count(Composition) == 1
    assert registry.count(CompositionSource) == 2 and registry.count(EvaluationResult) == 2
    assert registry.count(CandidateSet) == 1 and registry.count(Domain) == 3
    assert make_url(registry.url).get_backend_name() == "postgresql"
