"""A plugin over time: its version stored with each domain, a changed loader refused
with a way forward (`--refresh`), the 0001 -> 0002 upgrade, and `--template`."""

from __future__ import annotations

import importlib
import json
import sys

import pytest
from sqlalchemy import text

from conftest import TINY_PLUGIN, make_plugin_distribution
from xcross_registry import database, plugins, schema
from xcross_registry.registry import Registry
from xcross_registry.schema import AdapterVersion, BaseModel

# Version 1.1 of the tinyjson plugin: a "loader fix" that changes its output.
FIXED_PLUGIN = TINY_PLUGIN.replace('Item(f"i{i}", t)', 'Item(f"i{i}", t.upper())')


def _install(site, source: str, version: str) -> None:
    make_plugin_distribution(site, "xreg-tinyjson", "xreg_tinyjson", source, entry_point="tinyjson")
    info = site / "xreg_tinyjson-1.0.dist-info"
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: xreg-tinyjson\nVersion: {version}\n")
    sys.modules.pop("xreg_tinyjson", None)
    importlib.invalidate_caches()
    plugins.reset()


def test_changed_plugin_output_names_both_versions_and_refresh_keeps_lineage(
        xreg, xreg_home, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # the module is rewritten below
    site = tmp_path / "site"
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delitem(sys.modules, "xreg_tinyjson", raising=False)
    _install(site, TINY_PLUGIN, "1.0")
    data = tmp_path / "tiny.json"
    data.write_text(json.dumps({"items": [f"thing {i}" for i in range(40)],
                                "train": [[0, 1, 2], [1, 2, 3, 4]], "valid": [[2, 3, 0]],
                                "test": [[4, 5, 1]]}))
    added = xreg("add-domain", "d", "--plugin", "tinyjson", "--data", str(data), "--json")
    assert added.exit_code == 0, added.stderr
    first = added.json()
    assert first["plugin_version"] == "1.0" and first["data_version"] == 1

    registry = Registry()
    domain_id = registry.domain("d").id
    with registry.session() as session:  # an adapter trained on the first data version
        base = BaseModel(name="tiny", family="encoder", model_type="bert", hidden_size=8, num_layers=1)
        session.add(base)
        session.flush()
        session.add(AdapterVersion(domain_id=domain_id, base_model_id=base.id,
                                   version=1, artifact_digest="0" * 64, trainable_parameters=10,
                                   data_fingerprint=first["data_fingerprint"]))

    _install(site, FIXED_PLUGIN, "1.1")
    refused = xreg("evaluate", "d", "--baseline", "popularity")
    assert refused.exit_code == 1
    line = refused.stderr.strip()
    assert "\n" not in line and line.startswith("error: the data of domain 'd' at ")
    assert "plugin 'tinyjson' version 1.0 then, 1.1 now" in line
    assert f"xreg add-domain d --plugin tinyjson --data {data} --refresh" in line
    assert "xreg add-domain NEW --plugin tinyjson" in line

    wrong = xreg("add-domain", "d", "--plugin", "synthetic", "--data", "toys", "--refresh")
    assert wrong.exit_code == 1 and "is read by plugin 'tinyjson', not 'synthetic'" in wrong.stderr

    refreshed = xreg("add-domain", "d", "--plugin", "tinyjson", "--data", str(data), "--refresh",
                     "--json")
    assert refreshed.exit_code == 0, refreshed.stderr
    now = refreshed.json()
    assert now["plugin_version"] == "1.1" and now["data_version"] == 2
    assert now["data_fingerprint"] != first["data_fingerprint"]
    (previous,) = now["data_history"]
    assert previous["fingerprint"] == first["data_fingerprint"]
    assert previous["plugin_version"] == "1.0" and previous["data_location"] == str(data)
    # the adapter keeps its row, its domain and the fingerprint it was trained on
    (adapter,) = xreg("adapters", "d", "--json").json()
    assert adapter["version"] == 1 and adapter["data_fingerprint"] == first["data_fingerprint"]
    assert Registry().domain_data("d").items[0].title == "THING 0"  # the new output is in use

    again = xreg("add-domain", "d", "--plugin", "tinyjson", "--data", str(data), "--refresh", "--json")
    assert again.exit_code == 0 and again.json()["data_version"] == 2  # unchanged: no new version


def test_refresh_of_unknown_domain_and_with_train_is_refused(xreg, tiny_plugin):
    missing = xreg("add-domain", "nope", "--plugin", "tinyjson", "--data", str(tiny_plugin), "--refresh")
    assert missing.exit_code == 1 and missing.stderr.strip() == "error: unknown domain 'nope'"
    both = xreg("add-domain", "d", "--plugin", "tinyjson", "--data", str(tiny_plugin), "--refresh",
                "--train")
    assert both.exit_code == 1 and "--refresh re-registers data only" in both.stderr


def test_registry_made_at_0001_upgrades_to_head(tmp_path, monkeypatch, xreg):
    from alembic import command

    engine = database.make_engine(f"sqlite:///{tmp_path / 'xreg-home' / 'registry.db'}")
    command.upgrade(database.alembic_config(engine), "0001")
    assert database.current_revision(engine) == "0001"
    with engine.begin() as connection:
        connection.execute(text(
            "INSERT INTO domains (name, plugin, data_location, data_fingerprint, summary, "
            "description, created) VALUES ('old', 'synthetic', 'toys?users=50', 'f', '{}', '', "
            "'2026-01-01 00:00:00')"))
        # Rows that point at the domain: the upgrade must keep their foreign keys whole.
        connection.execute(text(
            "INSERT INTO base_models (name, family, model_type, hidden_size, num_layers, created) "
            "VALUES ('tiny', 'encoder', 'bert', 8, 2, '2026-01-01 00:00:00')"))
        connection.execute(text(
            "INSERT INTO adapter_versions (domain_id, base_model_id, version, lora_config, "
            "artifact_digest, trainable_parameters, data_fingerprint, training_config, metrics, "
            "status, created) VALUES (1, 1, 1, '{}', 'd', 1, 'f', '{}', '{}', 'ready', "
            "'2026-01-01 00:00:00')"))
    engine.dispose()

    listed = xreg("domains", "--json")
    assert listed.exit_code == 0, listed.stderr
    (old,) = listed.json()
    assert old["name"] == "old" and old["plugin_version"] is None
    assert old["data_history"] == [] and old["data_version"] == 1 and old["split"] == "user"
    assert database.current_revision(database.make_engine()) == schema.SCHEMA_HEAD
    adapters_listed = xreg("adapters", "--json")
    assert adapters_listed.exit_code == 0, adapters_listed.stderr
    assert [(a["domain"], a["version"]) for a in adapters_listed.json()] == [("old", 1)]


@pytest.mark.slow
def test_template_option_chooses_among_a_domain_types_templates(xreg, tmp_path, monkeypatch, tiny_base):
    from test_plugin_kit import RAW_PLUGIN, _good

    site = make_plugin_distribution(tmp_path / "site", "xreg-rawjson", "xreg_rawjson", RAW_PLUGIN,
                                    entry_point="rawjson")
    monkeypatch.syspath_prepend(str(site))
    plugins.reset()
    data = tmp_path / "data.json"
    data.write_text(json.dumps(_good()))
    assert xreg("add-domain", "d", "--plugin", "rawjson", "--data", str(data)).exit_code == 0
    unknown = xreg("train-adapter", "d", "--template", "nope", "--base-model", tiny_base)
    assert unknown.exit_code == 1
    assert unknown.stderr.strip() == ("error: domain type 'rawjson' has no prompt template 'nope' "
                                      "(known: rawjson@1, terse@1)")
    assert xreg("adapters", "--json").json() == []

    trained = xreg("train-adapter", "d", "--template", "terse", "--base-model", tiny_base,
                   "--epochs", "1", "--batch-size", "4", "--negatives", "3", "--max-length", "32",
                   "--valid-users", "1", "--json")
    assert trained.exit_code == 0, trained.stderr
    assert trained.json()["training_config"]["template"] == "terse@1"

    as_trained = xreg("evaluate", "d", "--json")
    assert as_trained.exit_code == 0, as_trained.stderr
    assert as_trained.json()["subject"] == "d@v1" and as_trained.json()["template"] == "terse@1"
    other = xreg("evaluate", "d", "--template", "rawjson@1", "--json")
    assert other.exit_code == 0, other.stderr
    assert other.json()["subject"] == "d@v1:prompt=rawjson@1"
    assert other.json()["template"] == "rawjson@1"
    refused = xreg("recommend", "d", "--history", "item number 1", "--candidates", str(data),
                   "--template", "nope")
    assert refused.exit_code == 1 and "has no prompt template 'nope'" in refused.stderr
    popularity = xreg("evaluate", "d", "--baseline", "popularity", "--template", "terse")
    assert popularity.exit_code == 1 and "does not apply to the popularity baseline" in popularity.stderr

    second = xreg("train-adapter", "d", "--base-model", tiny_base, "--epochs", "1", "--batch-size", "4",
                  "--negatives", "3", "--max-length", "32", "--valid-users", "1", "--json")
    assert second.exit_code == 0 and second.json()["training_config"]["template"] == "rawjson@1"
    sources = ["compose", "--sources", "d@v1,d@v2", "--target", "d", "--epochs", "1",
               "--batch-size", "4", "--negatives", "3", "--valid-users", "1", "--json"]
    bad_compose = xreg(*sources, "--template", "nope")
    assert bad_compose.exit_code == 1 and "has no prompt template 'nope'" in bad_compose.stderr
    assert xreg("compositions", "--json").json() == []
    composed = xreg(*sources, "--template", "terse")
    assert composed.exit_code == 0, composed.stderr
    assert composed.json()["training_config"]["template"] == "terse@1"
