"""Registry commands must not pay for torch, transformers or peft."""

from __future__ import annotations

import json
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


@pytest.mark.parametrize("args", [["--help"], ["domains"], ["plugins"], ["adapters", "--json"],
                                  ["compositions"], ["compositions", "--json"], ["--version"]])
@pytest.mark.slow
def test_registry_commands_never_import_torch(args, tmp_path):
    result = run_subprocess([sys.executable, "-c", PROBE, *args],
                            env={"XREG_HOME": str(tmp_path)})
    assert "HEAVY=\n" in result.stderr, result.stderr


QUICK = ["--epochs", "1", "--max-users", "8", "--batch-size", "8", "--negatives", "3",
         "--valid-users", "4"]

# Several commands in one process: none may leave torch, transformers or peft imported.
PROBE_MANY = """
import json, sys
from xcross_registry.cli import main
for args in json.loads(sys.argv[1]):
    sys.argv = ["xreg", *args]
    try:
        main()
    except SystemExit as exit_:
        if exit_.code:
            print(f"FAILED {args}", file=sys.stderr)
heavy = sorted(m for m in ("torch", "transformers", "peft") if m in sys.modules)
print("HEAVY=" + ",".join(heavy), file=sys.stderr)
"""


@pytest.mark.slow
def test_listing_and_show_commands_never_import_torch(xreg, synthetic_domains, tiny_base, tmp_path,
                                                      xreg_home):
    """On a registry that holds adapters, a composition and evaluations, listing and
    describing read rows, never a model (a composition's integration weights, which
    `show --plot` draws, are measured when it is trained)."""
    for domain in ("toys", "tools"):
        assert xreg("train-adapter", domain, *QUICK, "--base-model", tiny_base).exit_code == 0
    assert xreg("add-domain", "kitchen", "--plugin", "synthetic", "--data",
                "kitchen?users=120&items=60&max_len=8").exit_code == 0
    composed = xreg("compose", "--sources", "toys,tools", "--target", "kitchen", *QUICK,
                    "--no-evaluate")
    assert composed.exit_code == 0, composed.stderr
    assert xreg("evaluate", "kitchen", "--baseline", "popularity").exit_code == 0
    board, integration = tmp_path / "board.png", tmp_path / "integration.png"
    commands = [["compositions"], ["compositions", "--json"], ["show", "kitchen-x"],
                ["show", "kitchen-x", "--json"], ["show", "toys"], ["show", "kitchen", "--json"],
                ["show", "toys@v1"], ["show", "tools@v1", "--json"],
                ["items", "toys", "--search", "red"], ["items", "kitchen", "--json"],
                ["adapters"], ["leaderboard", "kitchen"], ["leaderboard", "kitchen", "--by-fraction"],
                ["leaderboard", "kitchen", "--plot", str(board)],
                ["show", "kitchen-x", "--plot", str(integration)]]
    result = run_subprocess([sys.executable, "-c", PROBE_MANY, json.dumps(commands)],
                            env={"XREG_HOME": str(xreg_home)})
    assert "FAILED" not in result.stderr and "error" not in result.stderr, result.stderr
    assert "HEAVY=\n" in result.stderr, result.stderr
    assert "kitchen-x" in result.stdout and "popularity:kitchen" in result.stdout
    assert board.read_bytes()[:4] == b"\x89PNG" and integration.read_bytes()[:4] == b"\x89PNG"

    # What was recorded at training time is what the stored weights measure after a reload.
    from xcross_registry import composer
    from xcross_registry.registry import Registry
    from xcross_registry.xcross.integration import measure_integration

    registry = Registry()
    recorded = registry.composition("kitchen-x").integrator_config["integration"]
    scorer, row = composer.load_composition(registry, "kitchen-x")
    template = registry.domain_type("kitchen").template_for(row.training_config["template"])
    again = measure_integration(scorer, registry.domain_data("kitchen"), template,
                                "kitchen-x", recorded["sources"])
    assert again["sources"] == recorded["sources"] == ["toys@v1", "tools@v1"]
    assert len(again["layers"]) == len(recorded["layers"]) > 0
    for measured, stored in zip(again["layers"], recorded["layers"]):
        flat = [(a, b) for ra, rb in zip(measured["mean"], stored["mean"]) for pa, pb in zip(ra, rb)
                for a, b in zip(pa, pb)]
        assert all((a is None) == (b is None) for a, b in flat)
        assert all(abs(a - b) <= 1e-5 * max(1.0, abs(b)) for a, b in flat if a is not None)
