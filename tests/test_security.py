"""Security and integrity: stored data never writes outside its folder, user and data
text prints literally, file errors are one line, and bad arguments fail before a load."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy import update

from conftest import make_plugin_distribution, run_subprocess, TINY_PLUGIN
from xcross_registry.adapters import register_version
from xcross_registry.errors import ArtifactError
from xcross_registry.registry import Registry
from xcross_registry.schema import AdapterVersion, Domain, EvaluationResult
from xcross_registry.stored_folders import write_folder

TINY_INFO = SimpleNamespace(name="tiny-base", family="encoder", model_type="bert",
                            hidden_size=32, num_layers=2)


def _files_under(root: Path) -> set[Path]:
    """Every file below ``root`` but the database's own (its journal comes and goes)."""
    return {path for path in root.rglob("*") if (path.is_file() or path.is_symlink())
            and not path.name.startswith("registry.db")}


def _adapter_with_manifest(registry: Registry, domain: str, files: dict, mode: str = "cross",
                           kind: str = "xreg.adapter.v1") -> str:
    """Register an adapter row of ``domain`` whose stored manifest is ``files``, as a
    forged or damaged registry would hold it.  Returns the manifest digest."""
    folder = registry.store.root.parent / "seed-folder"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text("{}")
    version = register_version(registry, domain, folder, TINY_INFO, trainable_parameters=1,
                               training_config={"scorer": {"mode": mode}}, metrics={})
    digest = registry.store.put_bytes(json.dumps({"kind": kind, "files": files}).encode())
    with registry.session() as session:
        session.execute(update(AdapterVersion).where(AdapterVersion.id == version.id)
                        .values(artifact_digest=digest))
    return digest


@pytest.fixture
def toys(xreg):
    result = xreg("add-domain", "toys", "--plugin", "synthetic", "--data",
                  "toys?users=60&items=60&max_len=8")
    assert result.exit_code == 0, result.stderr
    return Registry()


def _one_error_line(result, *fragments: str) -> None:
    assert result.exit_code != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# ---- 1. names in stored manifests --------------------------------------------------------

@pytest.mark.parametrize("bad_name", ["../escaped.txt", "ABSOLUTE", "sub/escaped.txt",
                                      "..", "", "a\\escaped.txt", "C:escaped.txt"])
@pytest.mark.slow
def test_export_and_load_refuse_a_manifest_naming_a_path(xreg, toys, tmp_path, bad_name):
    registry = toys
    outside = tmp_path / "outside" / "escaped.txt"
    name = str(outside) if bad_name == "ABSOLUTE" else bad_name
    good = registry.store.put_bytes(b"fine")
    payload = registry.store.put_bytes(b"escaped!")
    # The good file comes first: refusing must happen before ANY file is written.
    _adapter_with_manifest(registry, "toys", {"adapter_config.json": good, name: payload})
    before = _files_under(tmp_path)

    export = xreg("export", "toys", str(tmp_path / "out"))
    _one_error_line(export, f"the manifest names the unsafe file {name!r}", "refused")
    load = xreg("evaluate", "toys")
    _one_error_line(load, "unsafe file")
    assert not (tmp_path / "out").exists()
    assert not outside.exists()
    assert _files_under(tmp_path) == before  # nothing anywhere: not in staging, not beside it


def test_a_symlink_in_the_target_folder_is_not_written_through(toys, tmp_path):
    registry = toys
    victim = tmp_path / "victim.txt"
    victim.write_text("original")
    digest = _adapter_with_manifest(registry, "toys", {
        "a_first.json": registry.store.put_bytes(b"first"),
        "adapter_config.json": registry.store.put_bytes(b"overwritten?")})
    folder = tmp_path / "staged"
    folder.mkdir()
    (folder / "adapter_config.json").symlink_to(victim)
    with pytest.raises(ArtifactError, match="would resolve outside"):
        write_folder(registry, digest, folder)
    assert victim.read_text() == "original"
    assert sorted(p.name for p in folder.iterdir()) == ["adapter_config.json"]  # no a_first.json


def test_composition_manifests_are_checked_the_same_way(toys, tmp_path):
    registry = toys
    digest = registry.store.put_bytes(json.dumps({
        "kind": "xreg.composition.v1",
        "files": {"composition.json": registry.store.put_bytes(b"{}"),
                  "../trained.safetensors": registry.store.put_bytes(b"x")}}).encode())
    with pytest.raises(ArtifactError, match="unsafe file"):
        write_folder(registry, digest, tmp_path / "load" / "c", kind="xreg.composition.v1")
    assert not (tmp_path / "load").exists()


def test_a_missing_artifact_leaves_the_export_folder_unwritten(xreg, toys, tmp_path):
    registry = toys
    present = registry.store.put_bytes(b"present")
    _adapter_with_manifest(registry, "toys", {"adapter_config.json": present,
                                              "adapter_model.safetensors": "ab" * 32})
    result = xreg("export", "toys", str(tmp_path / "out"))
    _one_error_line(result, "is missing")
    assert not (tmp_path / "out").exists()


# ---- 3. file errors: one line, nothing changed ------------------------------------------------

def test_an_artifact_path_that_is_a_directory_is_one_error_line(xreg, toys, tmp_path):
    registry = toys
    weights = registry.store.put_bytes(b"weights")
    _adapter_with_manifest(registry, "toys", {"adapter_config.json": registry.store.put_bytes(b"{}"),
                                              "adapter_model.safetensors": weights})
    path = registry.store.path(weights)
    path.unlink()
    path.mkdir()
    result = xreg("export", "toys", str(tmp_path / "out"))
    _one_error_line(result, f"artifact {weights} cannot be read", "Is a directory")
    assert not (tmp_path / "out").exists()
    assert _one_error_line(xreg("evaluate", "toys"), "cannot be read") is None


def test_export_to_an_existing_file_is_refused(xreg, toys, tmp_path):
    registry = toys
    _adapter_with_manifest(registry, "toys", {"adapter_config.json": registry.store.put_bytes(b"{}")})
    target = tmp_path / "taken"
    target.write_text("keep me")
    _one_error_line(xreg("export", "toys", str(target)), "exists and is not a folder")
    assert target.read_text() == "keep me"
    below = xreg("export", "toys", str(target / "sub"))
    _one_error_line(below, "Not a directory")
    assert target.read_text() == "keep me"
    exported = xreg("export", "toys", str(tmp_path / "fine"))
    assert exported.exit_code == 0, exported.stderr
    assert sorted(p.name for p in (tmp_path / "fine").iterdir()) == ["README.md",
                                                                     "adapter_config.json"]


# ---- 3 + 4. recommend and evaluate check everything before torch loads ----------------------

PROBE = """
import contextlib, io, json, sys
from xcross_registry.cli import main
outcomes = []
for args in json.loads(sys.argv[1]):
    sys.argv = ["xreg", *args]
    err = io.StringIO()
    code = 0
    with contextlib.redirect_stderr(err):
        try:
            main()
        except SystemExit as exit_:
            code = exit_.code
    outcomes.append({"code": code, "stderr": err.getvalue()})
heavy = sorted(m for m in ("torch", "transformers", "peft") if m in sys.modules)
print(json.dumps({"outcomes": outcomes, "heavy": heavy}))
"""


@pytest.mark.slow
def test_bad_arguments_fail_before_any_model_load(xreg, toys, tmp_path, xreg_home):
    registry = toys
    # Rows whose weights do not exist: any command that got as far as loading would
    # import torch first and then fail on the missing files.
    _adapter_with_manifest(registry, "toys", {"adapter_model.safetensors": "cd" * 32})
    _adapter_with_manifest(registry, "toys", {"adapter_model.safetensors": "ef" * 32}, mode="dual")
    binary = tmp_path / "binary.dat"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")
    good = tmp_path / "good.txt"
    good.write_text("some item\n")
    cases = [
        (["recommend", "toys@v1", "--history", " ; "], "--history needs at least one item"),
        (["recommend", "toys@v1", "--history", "x", "--candidates", str(binary)],
         f"candidates file {binary} is not UTF-8 text (byte 0x89 at offset 0)"),
        (["recommend", "toys@v1", "--history", "x", "--candidates", str(tmp_path)],
         f"cannot read candidates file {tmp_path}: Is a directory"),
        (["recommend", "toys@v1", "--history", "x", "--candidates", str(tmp_path / "nope")],
         "No such file or directory"),
        (["recommend", "toys@v1", "--history", "x", "--candidates", str(empty)], "is empty"),
        (["recommend", "toys@v1", "--history", "x"], "whole-catalogue ranking needs a dual model"),
        (["recommend", "toys@v2", "--history", "x", "--rerank", "nosuch"], "unknown domain 'nosuch'"),
        (["recommend", "toys@v9", "--history", "x", "--candidates", str(good)], "unknown adapter"),
        (["evaluate", "toys@v1", "--protocol", "bogus"], "unknown evaluation protocol 'bogus'"),
        (["evaluate", "toys@v1", "--split", "train2"], "unknown split 'train2'"),
        (["evaluate", "toys@v1", "--protocol", "full"], "the full-catalogue protocol needs a dual"),
        (["evaluate", "toys@v1", "--domain", "nosuch"], "unknown domain 'nosuch'"),
        (["evaluate", "nosuch"], "unknown domain 'nosuch'"),
        (["evaluate", "toys", "--baseline", "bogus"], "unknown baseline 'bogus'"),
    ]
    result = run_subprocess([sys.executable, "-c", PROBE, json.dumps([a for a, _ in cases])],
                            env={"XREG_HOME": str(xreg_home)})
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    for (args, expected), outcome in zip(cases, report["outcomes"]):
        lines = outcome["stderr"].strip().splitlines()
        assert outcome["code"] == 1 and len(lines) == 1, (args, outcome)
        assert lines[0].startswith("error: ") and expected in lines[0], (args, lines)
    assert report["heavy"] == []  # no model was loaded, not even torch imported
    assert registry.count(EvaluationResult) == 0


# ---- 2. user and data text prints literally ------------------------------------------------

MARKUP = "[/x] [link=http://x]click[/link] [bold]loud :smile:"
TITLES = ["[/x] red ball", "[link=http://x]kite[/link]", "[bold]doll", "plain drum"]


@pytest.fixture
def markup_plugin(tmp_path, monkeypatch, xreg_home) -> Path:
    """The tests' ``tinyjson`` plugin, with item titles that look like rich markup."""
    from xcross_registry import plugins

    site = make_plugin_distribution(tmp_path / "site", "xreg-tinyjson", "xreg_tinyjson",
                                    TINY_PLUGIN, entry_point="tinyjson")
    monkeypatch.syspath_prepend(str(site))
    plugins.reset()
    data = tmp_path / "markup.json"
    data.write_text(json.dumps({
        "items": TITLES + [f"gadget {i}" for i in range(36)],
        "train": [[0, 1, 2, 3], [1, 2, 0], [2, 0, 1, 3]], "valid": [[3, 0, 1]],
        "test": [[0, 1, 2]]}))
    return data


def test_markup_in_descriptions_and_titles_prints_literally(xreg, markup_plugin, tiny_base,
                                                            tmp_path):
    added = xreg("add-domain", "shop", "--plugin", "tinyjson", "--data", str(markup_plugin),
                 "--description", MARKUP)
    assert added.exit_code == 0, added.stderr
    assert MARKUP in added.stdout
    assert MARKUP in xreg("show", "shop").stdout
    assert MARKUP in xreg("domains").stdout

    trained = xreg("train-adapter", "shop", "--epochs", "1", "--batch-size", "4", "--negatives",
                   "3", "--valid-users", "1", "--base-model", tiny_base, "--json")
    assert trained.exit_code == 0, trained.stderr
    assert xreg("evaluate", "shop").exit_code == 0
    board = xreg("leaderboard", "shop")
    assert board.exit_code == 0 and "shop@v1" in board.stdout, board.stderr
    candidates = tmp_path / "candidates.txt"
    candidates.write_text("\n".join(TITLES) + "\n")
    ranked = xreg("recommend", "shop", "--history", "plain drum", "--candidates", str(candidates))
    assert ranked.exit_code == 0, ranked.stderr
    for title in TITLES:
        assert title in ranked.stdout


@pytest.mark.slow
def test_output_cannot_fail_after_the_commit(xreg_home):
    """An ASCII terminal cannot show 'é': the line is escaped, the command succeeds, and
    the registry holds exactly what it reported (it used to commit and then crash)."""
    env = {"XREG_HOME": str(xreg_home), "PYTHONIOENCODING": "ascii"}
    description = f"café {MARKUP}"
    added = run_subprocess([sys.executable, "-c", "from xcross_registry.cli import main; main()",
                            "add-domain", "toys", "--plugin", "synthetic", "--data",
                            "toys?users=60&items=60", "--description", description], env=env)
    assert added.returncode == 0, added.stderr
    assert f"caf\\xe9 {MARKUP}" in added.stdout
    registry = Registry()
    assert [(d.name, d.description) for d in registry.domains()] == [("toys", description)]
    shown = run_subprocess([sys.executable, "-c", "from xcross_registry.cli import main; main()",
                            "show", "toys"], env=env)
    assert shown.returncode == 0 and f"caf\\xe9 {MARKUP}" in shown.stdout
    assert registry.count(Domain) == 1
