"""``xreg gc`` and staging ownership: what is unreferenced goes, what is used or in flight stays."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from xcross_registry.adapters import load_scorer
from xcross_registry.artifacts import ArtifactStore
from xcross_registry.evaluation import load_ranks
from xcross_registry.registry import Registry
from xcross_registry.schema import EvaluationResult
from xcross_registry.stored_folders import manifest_files, store_folder

QUICK = ["--epochs", "1", "--max-users", "16", "--batch-size", "8", "--negatives", "3"]
TWO_HOURS = 2 * 3600


def age_everything(store: ArtifactStore, seconds: float = TWO_HOURS) -> None:
    """As if every stored artifact had been written ``seconds`` ago."""
    then = time.time() - seconds
    for _, path in store.stored():
        os.utime(path, (then, then))


def stored(store: ArtifactStore) -> set[str]:
    return {digest for digest, _ in store.stored()}


@pytest.mark.slow
def test_orphans_go_referenced_and_in_flight_stay(xreg, synthetic_domains, tiny_base_model):
    for domain in ("toys", "tools"):
        trained = xreg("train-adapter", domain, *QUICK, "--base-model", str(tiny_base_model), "--json")
        assert trained.exit_code == 0, trained.stderr
    assert xreg("evaluate", "toys", "--max-users", "8").exit_code == 0
    registry = Registry()
    toys, tools = (registry.adapters(d)[0].artifact_digest for d in ("toys", "tools"))
    toys_files = set(manifest_files(registry, toys).values())
    evaluation = registry.count(EvaluationResult)
    assert evaluation == 1
    result = xreg("remove", "tools", "--force")  # its adapter's artifacts are now orphans
    assert result.exit_code == 0, result.stderr
    # Files both adapters share by content (identical settings) stay with toys.
    orphans = ({tools} | set(manifest_files(registry, tools).values())) - toys_files
    assert orphans and orphans <= stored(registry.store)
    age_everything(registry.store)
    # A registration in flight: stored a moment ago, row not committed yet, one of its
    # files brand new and one identical to an old orphan (stored again, so fresh again).
    in_flight = registry.store.put_bytes(b"weights of a run that is about to commit")
    reused = sorted(orphans)[0]
    assert registry.store.put_bytes(registry.store.get_bytes(reused)) == reused
    expected = orphans - {reused}
    sizes = sum(registry.store.path(d).stat().st_size for d in expected)
    before = stored(registry.store)

    dry = xreg("gc", "--dry-run", "--json")
    assert dry.exit_code == 0, dry.stderr
    assert set(dry.json()["removed"]) == expected and dry.json()["bytes_freed"] == sizes
    assert stored(registry.store) == before  # a dry run removes nothing

    done = xreg("gc", "--json")
    assert done.exit_code == 0, done.stderr
    report = done.json()
    assert set(report["removed"]) == expected and report["bytes_freed"] == sizes
    assert set(report["kept_recent"]) == {in_flight, reused}
    assert stored(registry.store) == before - expected
    # What the registry still uses loads and checks out: the adapter, its evaluation.
    load_scorer(registry, "toys")
    with registry.session() as session:
        metrics = session.scalar(select(EvaluationResult.metrics))
    load_ranks(registry, metrics["ranks_digest"])
    assert registry.candidate_set("toys", "test", "sampled", seed=0)[1] in stored(registry.store)
    again = xreg("gc")
    assert again.stdout.startswith("removed 0 unreferenced artifacts and 0 staging leftovers, "
                                   "freed 0 bytes")


def test_artifacts_of_a_run_that_never_committed_are_collected(xreg, xreg_home, tmp_path):
    registry = Registry()
    run = tmp_path / "run"
    run.mkdir()
    (run / "adapter_model.safetensors").write_bytes(os.urandom(5000))
    (run / "adapter_config.json").write_text(json.dumps({"r": 4}))
    manifest = store_folder(registry, run)  # stored, then the process died before its commit
    written = {manifest} | set(manifest_files(registry, manifest).values())
    assert stored(registry.store) == written
    sizes = sum(registry.store.path(d).stat().st_size for d in written)
    kept = xreg("gc")  # too recent: could be a registration about to commit
    assert kept.stdout.startswith("removed 0 unreferenced artifacts")
    assert stored(registry.store) == written
    age_everything(registry.store)
    collected = xreg("gc", "--json").json()
    assert set(collected["removed"]) == written and collected["bytes_freed"] == sizes
    assert stored(registry.store) == set()
    assert [p for p in registry.store.root.rglob("*") if p.is_file()] == []


# A run that owns a staging folder (training writes its checkpoint there before it
# stores and registers it).  With "foreign" it names its folder with a process id that
# does not exist here, as a run in another PID namespace would.
STAGING_OWNER = textwrap.dedent("""
    import os, sys
    if sys.argv[1] == "foreign":
        os.getpid = lambda: 4194304 + 4242  # above Linux's pid_max: no such process
    from xcross_registry.stored_folders import store_folder
    from xcross_registry.registry import Registry

    registry = Registry()
    with registry.store.staging_folder("train") as folder:
        (folder / "adapter_model.safetensors").write_bytes(b"partial")
        print(folder, flush=True)
        sys.stdin.readline()  # hold the folder until the test says go on
        print(store_folder(registry, folder), flush=True)
""")


@pytest.mark.slow
@pytest.mark.parametrize("pid", ["own", "foreign"])
def test_init_and_gc_never_remove_a_live_runs_staging(xreg, xreg_home, pid):
    process = subprocess.Popen([sys.executable, "-c", STAGING_OWNER, pid],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline().strip()
        assert line, process.communicate()[1]
        folder = Path(line)
        assert folder.is_dir()
        assert folder.name.split("-")[1] == str(4194304 + 4242 if pid == "foreign" else process.pid)
        # init and gc in parallel processes while the run is alive.
        commands = (["init"], ["init"], ["gc", "--grace-minutes", "0"])
        cleaners = [subprocess.Popen([sys.executable, "-c",
                                      "from xcross_registry.cli import main; main()", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                    for args in commands]
        for args, cleaner in zip(commands, cleaners):
            out, err = cleaner.communicate(timeout=300)
            assert cleaner.returncode == 0, err
            assert ("leftovers" not in out if args[0] == "init"
                    else " and 0 staging leftovers" in out), out
        assert (folder / "adapter_model.safetensors").read_bytes() == b"partial"
        if pid == "own":  # let it finish: it stores its files and removes its own folder
            out, err = process.communicate("\n", timeout=300)
            assert process.returncode == 0, err
            assert Registry().store.exists(out.strip())
            assert not folder.exists() and list(folder.parent.iterdir()) == []
        else:  # killed: the kernel drops its lock, and the next init removes the folder
            process.send_signal(signal.SIGKILL)
            process.communicate(timeout=60)
            result = xreg("init")
            assert result.exit_code == 0 and "cleaned 1 leftovers" in result.stdout
            assert not folder.exists() and list(folder.parent.iterdir()) == []
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def test_gc_removes_the_staging_of_a_killed_run_and_counts_its_bytes(xreg, xreg_home):
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent("""
            import sys, time
            from xcross_registry.registry import Registry
            with Registry().store.staging_folder("train") as folder:
                (folder / "weights.safetensors").write_bytes(b"w" * 1234)
                print(folder, flush=True)
                time.sleep(600)
        """)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = holder.stdout.readline().strip()
    assert line, holder.communicate()[1]
    folder = Path(line)
    try:
        live = xreg("gc", "--json", "--grace-minutes", "0").json()
        assert live["removed_staging"] == [] and folder.is_dir()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.communicate(timeout=60)
    dry = xreg("gc", "--dry-run", "--json").json()
    assert dry["removed_staging"] == [folder.name] and dry["bytes_freed"] == 1234
    assert folder.is_dir()
    done = xreg("gc", "--json").json()
    assert done["removed_staging"] == [folder.name] and done["bytes_freed"] == 1234
    assert not folder.exists() and list(folder.parent.iterdir()) == []
