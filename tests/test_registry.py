"""Registry behaviour through the CLI: init, domains, bad input, removal, concurrency."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from sqlalchemy import inspect

from xcross_registry import database, schema
from xcross_registry.registry import Registry
from xcross_registry.schema import Domain



def test_init_creates_schema_at_head_with_own_version_table(xreg, xreg_home):
    result = xreg("init")
    assert result.exit_code == 0, result.stderr
    engine = database.make_engine()
    assert database.current_revision(engine) == schema.SCHEMA_HEAD
    tables = set(inspect(engine).get_table_names())
    assert schema.VERSION_TABLE in tables and "alembic_version" not in tables
    assert {"domains", "adapter_versions", "compositions", "composition_sources",
            "evaluation_results", "tags", "base_models", "candidate_sets"} <= tables
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


def test_schema_head_constant_matches_alembic_head():
    from alembic.script import ScriptDirectory

    config = database.alembic_config(database.make_engine("sqlite://"))
    assert ScriptDirectory.from_config(config).get_current_head() == schema.SCHEMA_HEAD


def test_first_use_of_any_command_upgrades(xreg, xreg_home):
    assert not (xreg_home / "registry.db").exists()
    result = xreg("domains", "--json")
    assert result.exit_code == 0 and result.json() == []
    assert database.current_revision(database.make_engine()) == schema.SCHEMA_HEAD


def test_add_show_list_remove_domain(xreg, tiny_plugin):
    added = xreg("add-domain", "toys", "--plugin", "tinyjson", "--data", str(tiny_plugin),
                 "--description", "little toys", "--json")
    assert added.exit_code == 0, added.stderr
    document = added.json()
    assert document["summary"]["items"] == 40
    assert document["summary"]["users"] == {"train": 2, "valid": 1, "test": 1}
    assert document["summary"]["interactions"] == 13
    assert len(document["data_fingerprint"]) == 64
    listed = xreg("domains", "--json").json()
    assert [d["name"] for d in listed] == ["toys"]
    shown = xreg("show", "toys", "--json").json()
    assert shown["description"] == "little toys" and shown["adapters"] == []
    assert xreg("remove", "toys").exit_code == 0
    assert xreg("domains", "--json").json() == []


@pytest.mark.parametrize("name", ["", "../x", "a/b", "has space", "x" * 65, ".hidden"])
def test_invalid_names_are_refused_and_change_nothing(xreg, tiny_plugin, name):
    result = xreg("add-domain", name, "--plugin", "tinyjson", "--data", str(tiny_plugin))
    assert result.exit_code != 0
    assert result.stderr.startswith("error: invalid domain name")
    assert len(result.stderr.strip().splitlines()) == 1
    assert Registry().count(Domain) == 0


def test_unknown_plugin_missing_data_and_duplicate(xreg, tiny_plugin, tmp_path):
    assert xreg("add-domain", "toys", "--plugin", "tinyjson", "--data",
                str(tiny_plugin)).exit_code == 0
    cases = {
        ("add-domain", "tools", "--plugin", "nope", "--data", str(tiny_plugin)):
            "error: unknown plugin 'nope'",
        ("add-domain", "tools", "--plugin", "tinyjson", "--data", str(tmp_path / "absent.json")):
            "absent.json: no such file",
        ("add-domain", "toys", "--plugin", "tinyjson", "--data", str(tiny_plugin)):
            "error: domain 'toys' already exists",
        ("show", "nothing"): "error: unknown domain 'nothing'",
        ("remove", "nothing"): "error: unknown domain 'nothing'",
    }
    for args, message in cases.items():
        result = xreg(*args)
        assert result.exit_code == 1, args
        assert message in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1
    assert [d["name"] for d in xreg("domains", "--json").json()] == ["toys"]


def test_remove_refuses_while_an_adapter_depends_unless_forced(xreg, tiny_plugin):
    from xcross_registry.schema import AdapterVersion, BaseModel

    xreg("add-domain", "toys", "--plugin", "tinyjson", "--data", str(tiny_plugin))
    registry = Registry()
    domain_id = registry.domain("toys").id
    with registry.session() as session:
        base = BaseModel(name="tiny", family="encoder", model_type="bert", hidden_size=8,
                         num_layers=1)
        session.add(base)
        session.flush()
        session.add(AdapterVersion(domain_id=domain_id, base_model_id=base.id,
                                   version=1, artifact_digest="0" * 64, trainable_parameters=10,
                                   data_fingerprint="f" * 64))
    refused = xreg("remove", "toys")
    assert refused.exit_code == 1 and "used by toys@v1" in refused.stderr
    assert registry.count(AdapterVersion) == 1
    forced = xreg("remove", "toys", "--force")
    assert forced.exit_code == 0, forced.stderr
    assert registry.count(AdapterVersion) == 0 and registry.count(Domain) == 0


def test_tags_round_trip(xreg, tiny_plugin):
    xreg("add-domain", "toys", "--plugin", "tinyjson", "--data", str(tiny_plugin))
    registry = Registry()
    domain_id = registry.domain("toys").id
    registry.set_tag("domain", domain_id, "owner", "team-a")
    registry.set_tag("domain", domain_id, "owner", "team-b")
    assert registry.tags("domain", domain_id) == {"owner": "team-b"}


WRITER = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[1])
    from xcross_registry.registry import Registry
    registry = Registry()
    for i in range(50):
        registry.add_domain(f"{sys.argv[2]}-{i}", "tinyjson", sys.argv[3])
""")


@pytest.mark.slow
def test_two_processes_register_50_domains_each(tiny_plugin, xreg_home, tmp_path):
    Registry()  # create the schema first, as `xreg init` would
    site = str(tmp_path / "site")
    env = dict(os.environ)
    processes = [subprocess.Popen([sys.executable, "-c", WRITER, site, prefix, str(tiny_plugin)],
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for prefix in ("a", "b")]
    outputs = [p.communicate(timeout=300) for p in processes]
    for process, (_, err) in zip(processes, outputs):
        assert process.returncode == 0, err
        assert "locked" not in err
    assert Registry().count(Domain) == 100


@pytest.mark.slow
def test_concurrent_first_use_migrates_once(tmp_path):
    """Two processes opening a brand-new registry at once both succeed."""
    env = {"XREG_HOME": str(tmp_path / "home")}
    script = "from xcross_registry.registry import Registry; Registry(); print('ok')"
    processes = [subprocess.Popen([sys.executable, "-c", script], env={**os.environ, **env},
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(3)]
    for process in processes:
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0 and out.strip() == "ok", err


def test_candidate_sets_are_drawn_once_and_shared(xreg, tiny_plugin):
    from xcross_registry.schema import CandidateSet as CandidateSetRow

    xreg("add-domain", "toys", "--plugin", "tinyjson", "--data", str(tiny_plugin))
    first, digest = Registry().candidate_set("toys", "test", "sampled", seed=0)
    # A second evaluation, in a fresh Registry, reads the very same stored artifact.
    second, same_digest = Registry().candidate_set("toys", "test", "sampled", seed=0)
    assert digest == same_digest and first.to_bytes() == second.to_bytes()
    registry = Registry()
    assert registry.count(CandidateSetRow) == 1
    assert registry.store.get_bytes(digest) == first.to_bytes()
    assert first.candidates[0, 0] == 1  # the test user's last item is the positive
