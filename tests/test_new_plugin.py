"""`xreg new-plugin`: the package it writes installs beside a non-editable install of
the project, works end to end through the CLI, and passes its own tests unchanged."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from conftest import REPO, run_subprocess

SKIP = shutil.ignore_patterns(".git", ".venv", "venv", "build", "*.egg-info", "__pycache__",
                              ".pytest_cache", "docs")


def test_new_plugin_refuses_bad_names_and_used_folders(xreg, tmp_path):
    bad = xreg("new-plugin", "Books-2")
    assert bad.exit_code == 1 and bad.stderr.startswith("error: invalid plugin name 'Books-2'")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    taken = xreg("new-plugin", "books", "--dir", str(tmp_path / "taken"))
    assert taken.exit_code == 1
    assert taken.stderr.strip() == f"error: {tmp_path / 'taken'} exists and is not an empty folder; choose another --dir"
    assert sorted(p.name for p in (tmp_path / "taken").iterdir()) == ["file"]

    written = xreg("new-plugin", "books", "--dir", str(tmp_path / "pkg"))
    assert written.exit_code == 0, written.stderr
    files = sorted(str(p.relative_to(tmp_path / "pkg")) for p in (tmp_path / "pkg").rglob("*") if p.is_file())
    assert files == ["README.md", "pyproject.toml", "sample_data/events.jsonl", "sample_data/items.jsonl",
                     "tests/test_xreg_books.py", "xreg_books/__init__.py"]
    assert '[project.entry-points.xcross_registry]\nbooks = "xreg_books"' in \
        (tmp_path / "pkg" / "pyproject.toml").read_text()


@pytest.mark.slow
def test_scaffold_installs_and_runs_add_domain_train_evaluate(tmp_path, tiny_base):
    # A fresh venv with this project installed from a wheel (non-editable); the
    # dependencies (torch, transformers, pytest ...) are borrowed from the running venv
    # through a plain path entry, whose own .pth files (the editable install) are not read.
    source = tmp_path / "src"
    shutil.copytree(REPO, source, ignore=SKIP)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python, xreg = venv / "bin" / "python", str(venv / "bin" / "xreg")
    purelib = run_subprocess([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
    (Path(purelib.stdout.strip()) / "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    def wheel_into_venv(project: Path) -> None:
        built = run_subprocess([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                                "-q", "-w", str(tmp_path / "dist" / project.name), str(project)])
        assert built.returncode == 0, built.stderr[-2000:]
        installed = run_subprocess([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "-q",
                                    *map(str, (tmp_path / "dist" / project.name).glob("*.whl"))])
        assert installed.returncode == 0, installed.stderr[-2000:]

    wheel_into_venv(source)
    env = {"XREG_HOME": str(tmp_path / "home")}
    package = tmp_path / "xreg-books"
    written = run_subprocess([xreg, "new-plugin", "books", "--dir", str(package)], env=env)
    assert written.returncode == 0, written.stderr
    wheel_into_venv(package)

    where = run_subprocess([str(python), "-c", "import xcross_registry, xreg_books; "
                            "print(xcross_registry.__file__); print(xreg_books.__file__)"], cwd=tmp_path)
    assert where.returncode == 0, where.stderr
    assert str(REPO) not in where.stdout and str(package) not in where.stdout, where.stdout

    def run(*args: str) -> subprocess.CompletedProcess:
        result = run_subprocess([xreg, *args], env=env, cwd=package)
        assert result.returncode == 0, (args, result.stderr[-3000:])
        return result

    listed = {p["name"]: p for p in json.loads(run("plugins", "--json").stdout)}
    assert listed["books"]["version"] == "0.1.0" and listed["books"]["domain_types"] == ["books"]
    added = json.loads(run("add-domain", "shelf", "--plugin", "books", "--data", "sample_data?seed=1",
                           "--json").stdout)
    assert added["data_location"] == f"{package / 'sample_data'}?seed=1"
    assert added["plugin_version"] == "0.1.0" and added["summary"]["items"] == 60
    trained = json.loads(run("train-adapter", "shelf", "--base-model", tiny_base, "--epochs", "1",
                             "--batch-size", "8", "--negatives", "3", "--max-length", "48",
                             "--valid-users", "2", "--json").stdout)
    assert trained["version"] == 1 and trained["training_config"]["template"] == "books@1"
    evaluated = json.loads(run("evaluate", "shelf", "--json").stdout)
    assert evaluated["subject"] == "shelf@v1" and evaluated["users"] == added["summary"]["users"]["test"]
    assert 0.0 <= evaluated["metrics"]["hit@10"]["mean"] <= 1.0

    # The scaffold's own tests, unchanged, with the fresh venv's interpreter.
    tests = run_subprocess([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=package,
                           timeout=600)
    assert tests.returncode == 0, tests.stdout[-3000:] + tests.stderr[-2000:]
    assert "6 passed" in tests.stdout
