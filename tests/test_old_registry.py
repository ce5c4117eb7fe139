"""A registry written before compositions were stored in the shape of adapters (schema
revision 0002) still opens, reads and loads: migration 0003 moves a composition's
measured values (validation, best epoch, train users, seconds) from its
``training_config`` into ``metrics``, where adapter versions keep them."""

from __future__ import annotations

import json

import torch
from alembic import command
from sqlalchemy import text

from xcross_registry import database, schema
from xcross_registry.adapters import load_scorer
from xcross_registry.artifacts import ArtifactStore
from xcross_registry.plugins import get_plugins
from xcross_registry.records import TrainingRecord
from xcross_registry.registry import Registry, normalise_location
from xcross_registry.scorer import Scorer, ScorerConfig

LOCATION = "toys?users=120&items=60&max_len=8"
TRAINING = {"epochs": 1, "fraction": 0.5, "seed": 3, "lr": 0.001}
RUN = {"stop_reason": "completed", "examples_seen": 48, "planned_examples": 48, "optimizer_steps": 6,
       "planned_steps": 6, "epochs_completed": 1, "examples_per_second": 9.5, "train_seconds": 5.0,
       "wall_seconds": 7.0, "processes": 1, "precision": "float32", "best_epoch": 1,
       "validation_users": 8, "validation_users_planned": 8}
VALIDATION = {"hit@1": 0.25, "ndcg@10": 0.5}


def _stored_folder(store: ArtifactStore, folder, kind: str) -> str:
    """A folder stored as the previous release stored it: its files by digest plus a manifest."""
    files = {path.name: store.put_file(path) for path in sorted(folder.iterdir()) if path.is_file()}
    return store.put_bytes(json.dumps({"kind": kind, "files": files}, sort_keys=True).encode())


def _insert(connection, table: str, **values) -> None:
    values = {k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in values.items()}
    connection.execute(text(f"INSERT INTO {table} ({', '.join(values)}) "
                            f"VALUES ({', '.join(':' + k for k in values)})"), values)


def test_registry_at_0002_with_old_rows_opens_reads_and_loads(xreg, xreg_home, tiny_base, tmp_path):
    engine = database.make_engine(f"sqlite:///{xreg_home / 'registry.db'}")
    command.upgrade(database.alembic_config(engine), "0002")
    assert database.current_revision(engine) == "0002"

    # A trained adapter's files, stored as the old release stored them.
    torch.manual_seed(0)
    scorer = Scorer.create(tiny_base, ScorerConfig(mode="cross", head_hidden_size=8, max_length=40, lora_r=2))
    scorer.save_pretrained(tmp_path / "adapter")
    store = ArtifactStore(xreg_home / "artifacts")
    adapter_digest = _stored_folder(store, tmp_path / "adapter", "xreg.adapter.v1")
    location = normalise_location(get_plugins().domain_type("synthetic"), LOCATION)
    fingerprint = get_plugins().domain_type("synthetic").load(location).fingerprint()
    created = "2026-01-01 00:00:00"
    with engine.begin() as connection:
        _insert(connection, "domains", name="toys", plugin="synthetic", data_location=location,
                data_fingerprint=fingerprint, summary={}, description="", created=created,
                plugin_version=None, data_history=[])
        _insert(connection, "base_models", name=tiny_base, family="encoder", model_type="bert",
                hidden_size=32, num_layers=2, created=created)
        # The old shapes: an adapter keeps its measurements in metrics ...
        _insert(connection, "adapter_versions", domain_id=1, base_model_id=1, version=1, lora_config={},
                artifact_digest=adapter_digest, trainable_parameters=1000, data_fingerprint=fingerprint,
                training_config={"scorer": scorer.config.to_dict(), "training": TRAINING,
                                 "template": "toys@1", "head_only": False, "run": RUN,
                                 "lora_parameters": 900},
                metrics={"validation": VALIDATION, "best_epoch": 1, "train_users": 96, "seconds": 5.0,
                         "sequences_per_second": 9.5},
                status="ready", created=created)
        # ... a composition kept them in its training_config.
        _insert(connection, "compositions", name="toys-merge", target_domain_id=1,
                integrator_config={"method": "linear-merge", "mode": "cross",
                                   "parameters": {"integrator_parameters": 0, "head_parameters": 50}},
                training_config={"training": TRAINING, "template": "toys@1", "validation": VALIDATION,
                                 "best_epoch": 1, "train_users": 96, "seconds": 5.0, "run": RUN},
                artifact_digest=adapter_digest, trainable_parameters=50, data_fingerprint=fingerprint,
                created=created)
        _insert(connection, "composition_sources", composition_id=1, position=0, adapter_version_id=1)
    engine.dispose()

    registry = Registry()  # opening upgrades the schema
    assert database.current_revision(database.make_engine()) == schema.SCHEMA_HEAD
    composition = registry.composition("toys-merge")
    assert composition.metrics == {"validation": VALIDATION, "best_epoch": 1, "train_users": 96,
                                   "seconds": 5.0}
    assert composition.training_config == {"training": TRAINING, "template": "toys@1", "run": RUN}
    adapter = registry.adapter("toys")
    records = {"toys-merge": TrainingRecord.of(composition), "toys@v1": TrainingRecord.of(adapter)}
    for name, record in records.items():
        assert (record.fraction, record.seed, record.mode, record.template) == (0.5, 3, "cross", "toys@1"), name
        assert (record.validation, record.best_epoch, record.train_users, record.seconds) == \
            (VALIDATION, 1, 96, 5.0), name
        assert record.run == RUN and record.stop_reason == "completed", name
    assert (records["toys-merge"].method, records["toys@v1"].method) == ("linear-merge", "lora")

    shown = xreg("show", "toys-merge", "--json")
    assert shown.exit_code == 0, shown.stderr
    assert shown.json()["metrics"]["validation"] == VALIDATION
    assert shown.json()["training_config"]["training"]["fraction"] == 0.5
    text_shown = xreg("show", "toys-merge")
    assert text_shown.exit_code == 0 and "(96 users) in 5.0 s" in text_shown.stdout, text_shown.stdout
    assert xreg("show", "toys@v1", "--json").json()["metrics"]["validation"] == VALIDATION

    loaded, version = load_scorer(registry, "toys@v1")
    assert version.id == adapter.id and loaded.config.mode == "cross"
    stored = loaded.state_dict()  # loaded frozen: compare what the old run had trained
    for key, value in scorer.trainable_state().items():
        assert torch.equal(stored[key], value), key


def test_migration_0003_downgrades_back_to_the_old_shape(xreg_home):
    engine = database.make_engine(f"sqlite:///{xreg_home / 'registry.db'}")
    config = database.alembic_config(engine)
    command.upgrade(config, "0002")
    with engine.begin() as connection:
        _insert(connection, "domains", name="d", plugin="synthetic", data_location="x",
                data_fingerprint="f", summary={}, description="", created="2026-01-01 00:00:00",
                data_history=[])
        _insert(connection, "compositions", name="c", target_domain_id=1,
                integrator_config={"method": "xcross"},
                training_config={"training": TRAINING, "validation": VALIDATION, "seconds": 1.5},
                artifact_digest="0" * 64, trainable_parameters=1, data_fingerprint="f",
                created="2026-01-01 00:00:00")
    command.upgrade(config, "0003")
    command.downgrade(config, "0002")
    with engine.connect() as connection:
        stored = connection.execute(text("SELECT training_config FROM compositions")).scalar()
    assert json.loads(stored) == {"training": TRAINING, "validation": VALIDATION, "seconds": 1.5}
