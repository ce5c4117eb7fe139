"""Registry writes that race: 8 processes run the same writes at the same moment.

Each round every process is released through one barrier into the same operation:
register one domain name, add an adapter version to one domain (the last step of
``train-adapter``), add a version with a base model nobody has used yet, register one
composition name, draw one candidate set, add a trained baseline version.  What must
hold, on PostgreSQL (``XREG_TEST_POSTGRES_URL``, started by ``.ci/run``) and SQLite:
no raw database error anywhere, exactly one winner per name (the others get the
project's ``ConflictError``), and version numbers unique and gap-free.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import Counter

import pytest

from test_postgres import backend  # noqa: F401  (the sqlite/postgres fixture)
from xcross_registry.registry import Registry
from xcross_registry.schema import AdapterVersion, BaselineModel, BaseModel, CandidateSet, Composition

PROCESSES = 8
# 8 × 10 = 80 of each operation on PostgreSQL, as in issue 24's probe; SQLite runs one
# writer at a time by design (BEGIN IMMEDIATE), so a few rounds check the same code there.
ROUNDS = {"postgres": 10, "sqlite": 3}
RECIPE = "toys?users=10&items=60&max_len=6"
OPERATIONS = ("add_domain", "adapter_version", "new_base_model", "composition", "candidate_set",
              "baseline_version")


def _base(name: str):
    from xcross_registry.base_model import BaseModelInfo

    return BaseModelInfo(name=name, family="encoder", hidden_size=8, num_layers=1, model_type="bert")


def _adapter_version(registry: Registry, base: str):
    return registry.add_adapter_version("shared", _base(base), artifact_digest="0" * 64,
                                        lora_config={}, trainable_parameters=1, training_config={},
                                        metrics={})


def _run(registry: Registry, operation: str, round_: int) -> None:
    if operation == "add_domain":
        registry.add_domain(f"race-{round_}", "synthetic", RECIPE)
    elif operation == "adapter_version":
        _adapter_version(registry, "base-shared")
    elif operation == "new_base_model":
        _adapter_version(registry, f"base-{round_}")
    elif operation == "composition":
        registry.add_composition(f"shared-x{round_}", "shared", [registry.adapter("shared@v1")],
                                 artifact_digest="1" * 64, integrator_config={}, training_config={},
                                 metrics={}, trainable_parameters=1)
    elif operation == "candidate_set":
        registry.candidate_set("shared", "test", "sampled", seed=round_)
    elif operation == "baseline_version":
        registry.add_baseline_model("shared", "sasrec", artifact_digest="2" * 64,
                                    trainable_parameters=1, training_config={}, metrics={})


def _worker(url: str, home: str, rounds: int, barrier, results) -> None:
    """One team member: every operation of every round, released with the others."""
    os.environ.update({"XREG_HOME": home, "XREG_DATABASE_URL": url, "HF_HUB_OFFLINE": "1"})
    from xcross_registry.errors import XregError

    outcomes: Counter = Counter()
    raw: list[str] = []
    registry = Registry()
    for round_ in range(rounds):
        for operation in OPERATIONS:
            barrier.wait(timeout=120)
            try:
                _run(registry, operation, round_)
                outcomes[operation, "ok"] += 1
            except XregError as exc:
                outcomes[operation, type(exc).__name__] += 1
            except Exception as exc:  # what the test counts: any raw error is a failure
                raw.append(f"{operation}: {type(exc).__name__}: {str(exc)[:300]}")
    results.put((dict(outcomes), raw))


@pytest.mark.slow
def test_eight_processes_race_every_registry_write(backend, xreg_home):  # noqa: F811
    registry = Registry()
    registry.add_domain("shared", "synthetic", RECIPE)
    _adapter_version(registry, "base-shared")  # shared@v1, the compositions' source
    rounds = ROUNDS["postgres" if backend.startswith("postgresql") else "sqlite"]
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(PROCESSES), context.Queue()
    workers = [context.Process(target=_worker, args=(backend, str(xreg_home), rounds, barrier, results))
               for _ in range(PROCESSES)]
    for worker in workers:
        worker.start()
    try:
        reports = [results.get(timeout=600) for _ in workers]
    finally:
        for worker in workers:
            worker.join(timeout=60)
            if worker.is_alive():
                worker.kill()
    assert [worker.exitcode for worker in workers] == [0] * PROCESSES

    raw = [line for _, lines in reports for line in lines]
    assert raw == [], raw
    outcomes: Counter = Counter()
    for counts, _ in reports:
        outcomes.update(counts)
    runs = PROCESSES * rounds
    for operation in ("add_domain", "composition"):  # one name per round: one winner
        assert outcomes[operation, "ok"] == rounds, outcomes
        assert outcomes[operation, "ConflictError"] == runs - rounds, outcomes
    for operation in ("adapter_version", "new_base_model", "candidate_set", "baseline_version"):
        assert outcomes[operation, "ok"] == runs, outcomes

    with registry.session() as session:
        versions = sorted(session.scalars(
            AdapterVersion.__table__.select().with_only_columns(AdapterVersion.version)))
        baselines = sorted(session.scalars(
            BaselineModel.__table__.select().with_only_columns(BaselineModel.version)))
        bases = Counter(session.scalars(BaseModel.__table__.select().with_only_columns(BaseModel.name)))
        seeds = Counter(session.scalars(CandidateSet.__table__.select().with_only_columns(CandidateSet.seed)))
    assert versions == list(range(1, 2 * runs + 2))  # v1 + two operations × 80: unique, no gap
    assert baselines == list(range(1, runs + 1))
    assert bases == Counter(["base-shared", *(f"base-{r}" for r in range(rounds))])
    assert seeds == Counter(range(rounds))
    assert sorted(d.name for d in registry.domains()) == sorted(
        ["shared", *(f"race-{r}" for r in range(rounds))])
    assert registry.count(Composition) == rounds
