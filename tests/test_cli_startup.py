"""Registry commands must not pay for torch, transformers or peft."""

from __future__ import annotations

import sys

import pytest

from conftest import run_subprocess

PROBE = """
import sys
sys.argv = ["xreg", *sys.argv[1:]]
from xcross_registry.cli import main
try:
    main()
except SystemExit:
    pass
heavy = sorted(m for m in ("torch", "transformers", "peft") if m in sys.modules)
print("HEAVY=" + ",".join(heavy), file=sys.stderr)
"""


@pytest.mark.parametrize("args", [["--help"], ["domains"], ["plugins"], ["adapters", "--json"]])
def test_registry_commands_never_import_torch(args, tmp_path):
    result = run_subprocess([sys.executable, "-c", PROBE, *args],
                            env={"XREG_HOME": str(tmp_path)})
    assert "HEAVY=\n" in result.stderr, result.stderr
