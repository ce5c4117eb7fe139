"""A non-editable install works on its own: migrations and plugins come with the wheel."""

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


@pytest.mark.slow
def test_non_editable_install_in_fresh_venv(tmp_path):
    source = tmp_path / "src"
    shutil.copytree(REPO, source, ignore=SKIP)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    # The fresh venv borrows the dependencies (torch, sqlalchemy, …) of the running one
    # through a plain path entry: the running venv's own .pth files (an editable
    # install of this project among them) are not processed, so only the wheel
    # installed below provides xcross_registry.
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    (Path(purelib) / "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # Build the wheel with the running interpreter's setuptools (no index needed), then
    # install it into the fresh venv as a user would.
    wheel = run_subprocess([sys.executable, "-m", "pip", "wheel", "--no-deps",
                            "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"), str(source)])
    assert wheel.returncode == 0, wheel.stderr[-2000:]
    install = run_subprocess([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "-q",
                              *map(str, (tmp_path / "dist").glob("*.whl"))])
    assert install.returncode == 0, install.stderr[-2000:]

    home = tmp_path / "home"
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    xreg = str(venv / "bin" / "xreg")
    env = {"XREG_HOME": str(home)}
    for args in (["init"], ["plugins", "--json"], ["domains", "--json"]):
        result = run_subprocess([xreg, *args], env=env, cwd=workdir)
        assert result.returncode == 0, (args, result.stderr)
    plugins = json.loads(run_subprocess([xreg, "plugins", "--json"], env=env, cwd=workdir).stdout)
    assert {p["name"]: p["domain_types"] for p in plugins} == {
        "amazon": ["amazon"], "synthetic": ["synthetic"], "user-item": ["user-item"]}
    where = run_subprocess([str(python), "-c", "import xcross_registry, xcross_registry.migrations as m; "
                            "print(xcross_registry.__file__); print(m.__file__)"], cwd=workdir)
    assert str(source) not in where.stdout and str(REPO) not in where.stdout, where.stdout
    revision = run_subprocess([str(python), "-c", (
        "from xcross_registry import database, schema; "
        "print(database.current_revision(database.make_engine()) == schema.SCHEMA_HEAD)")],
        env=env, cwd=workdir)
    assert revision.stdout.strip() == "True", revision.stderr
