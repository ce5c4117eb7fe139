"""Issue 24 point 6: what used to fail late or as "unexpected" is checked before any
work, with one clear line; names are unique across domains and compositions; gc
removes what it reports."""

from __future__ import annotations

import shutil

import pytest

from xcross_registry.registry import Registry
from xcross_registry.runs import check_room_to_store


def _one_line(result) -> str:
    assert result.exit_code == 1, result.stdout + result.stderr
    (line,) = result.stderr.strip().splitlines()
    return line


def _fake_composition(registry: Registry, name: str, target: str) -> None:
    """A composition row over stored-looking adapters of every domain (no model is needed
    to take a name)."""
    from xcross_registry.base_model import BaseModelInfo

    for domain in registry.domains():
        registry.add_adapter_version(domain.name, BaseModelInfo("tiny", "encoder", 8, 1, "bert"),
                                     artifact_digest="0" * 64, lora_config={}, trainable_parameters=1,
                                     training_config={}, metrics={})
    registry.add_composition(name, target, [registry.adapter(f"{target}@v1")], artifact_digest="1" * 64,
                             integrator_config={}, training_config={}, metrics={}, trainable_parameters=1)


@pytest.mark.parametrize("option", ["--plot", "--plot-fraction"])
def test_plot_paths_are_checked_before_any_work(xreg, synthetic_domains, tmp_path, option):
    cases = {
        str(tmp_path / "missing" / "board.png"): f"error: {option} {tmp_path / 'missing' / 'board.png'}: "
                                                 f"the folder {tmp_path / 'missing'} does not exist",
        str(tmp_path / "board.bmpx"): f"error: {option} {tmp_path / 'board.bmpx'}: unknown image format .bmpx",
        str(tmp_path / "board"): f"error: {option} {tmp_path / 'board'}: unknown image format (no suffix)",
        str(tmp_path): f"error: {option} {tmp_path} is a folder; give a file name such as "
                       f"{tmp_path / 'plot.png'}",
    }
    before = sorted(tmp_path.iterdir())
    for path, message in cases.items():
        assert _one_line(xreg("leaderboard", "toys", option, path)).startswith(message)
    assert sorted(tmp_path.iterdir()) == before  # nothing written, no DIR.png beside a folder


def test_show_plot_is_checked_before_the_model_runs(xreg, synthetic_domains, tmp_path):
    _fake_composition(Registry(), "tools-x", "tools")  # its artifact does not exist: a model
    line = _one_line(xreg("show", "tools-x", "--plot", str(tmp_path)))  # run would fail otherwise
    assert line == f"error: --plot {tmp_path} is a folder; give a file name such as {tmp_path / 'plot.png'}"


def test_leaderboard_refuses_an_unknown_protocol(xreg, synthetic_domains):
    assert _one_line(xreg("leaderboard", "toys", "--protocol", "bogus")).startswith(
        "error: unknown evaluation protocol 'bogus'; expected one of sampled")


def test_names_are_unique_across_domains_and_compositions(xreg, synthetic_domains):
    registry = Registry()
    _fake_composition(registry, "tools-x", "tools")
    line = _one_line(xreg("add-domain", "tools-x", "--plugin", "synthetic", "--data", "tools"))
    assert line == "error: 'tools-x' is the name of a composition; choose another domain name"
    assert [d.name for d in registry.domains()] == ["tools", "toys"]


def test_compose_checks_sources_before_the_name_and_refuses_an_empty_name(xreg, synthetic_domains):
    _fake_composition(Registry(), "tools-x", "tools")
    unknown = _one_line(xreg("compose", "--sources", "toys,books", "--target", "tools"))
    assert "'books'" in unknown and "tools-x" not in unknown
    empty = _one_line(xreg("compose", "--sources", "toys,tools", "--target", "tools", "--name", ""))
    assert empty.startswith("error: invalid composition name ''")


def test_gc_removes_a_symlinked_staging_entry_it_reports(xreg, xreg_home, tmp_path):
    registry = Registry()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("not ours")
    registry.store.staging.mkdir(parents=True, exist_ok=True)
    link = registry.store.staging / "train-999999999-dead"  # a run id no process has
    link.symlink_to(outside, target_is_directory=True)
    report = xreg("gc", "--json", "--grace-minutes", "0").json()
    assert report["removed_staging"] == [link.name] and report["bytes_freed"] == 0
    assert not link.exists() and not link.is_symlink()
    assert (outside / "keep.txt").read_text() == "not ours"  # the link went, not its target


def test_an_unwritable_artifact_store_fails_before_the_model_loads(xreg, synthetic_domains, xreg_home):
    artifacts = xreg_home / "artifacts"
    shutil.rmtree(artifacts, ignore_errors=True)
    artifacts.write_text("a file where the store's folder should be")
    line = _one_line(xreg("train-adapter", "toys", "--base-model", "/nonexistent/base"))
    assert line.startswith(f"error: cannot write to the artifact store {artifacts}: ")
    assert line.endswith("(check XREG_HOME); nothing was trained")


def test_a_store_without_room_for_the_model_is_refused(xreg_home):
    registry = Registry()
    free = shutil.disk_usage(xreg_home).free
    with pytest.raises(Exception, match="free; this run needs about .* to store its model; nothing was trained"):
        check_room_to_store(registry, 2 * free)
    check_room_to_store(registry, 1)  # a small model fits
