"""``add-domain --train`` is all or nothing, whenever the process is killed.

One complete run gives the command's wall time W on this machine; then kill trials
stop the same command with SIGKILL and with SIGTERM early and late in W (start-up and
model loading; the end of training and the registration).  After every trial the domain is
either absent or registered with its trained v1, a SIGTERM ends with one error line
(or the finished run), and the retry of the same name never finds a half-registered
domain.  Bounded: 2 trials per signal, about 4 W in all.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import run_subprocess, xreg_command
from xcross_registry.garbage import collect_garbage
from xcross_registry.registry import Registry

NAME = "kitchen"
DATA = "kitchen?users=60&items=60&max_len=6"
QUICK = ["--epochs", "1", "--max-users", "16", "--batch-size", "4", "--negatives", "3",
         "--valid-users", "4"]
# When each trial's signal comes, as a share of a complete run's wall time: early (start-up,
# data, model loading) and late (training's end, storing, the registration's commit).
MOMENTS = (0.2, 0.9)


def _add_domain(tiny_base: str) -> list[str]:
    return xreg_command("add-domain", NAME, "--plugin", "synthetic", "--data", DATA, "--train",
                        "--base-model", tiny_base, *QUICK)


def _state() -> str:
    """'absent', or 'complete' when the domain has exactly its ready v1; anything else fails."""
    registry = Registry()
    if NAME not in [d.name for d in registry.domains()]:
        return "absent"
    assert [(a.version, a.status) for a in registry.adapters(NAME)] == [(1, "ready")]
    return "complete"


def _remove() -> None:
    if _state() == "complete":
        Registry().remove_domain(NAME, force=True)


@pytest.mark.slow
def test_add_domain_train_survives_kill_trials(xreg_home, tiny_base):
    env = {"XREG_HOME": str(xreg_home), "OMP_NUM_THREADS": "1"}
    started = time.monotonic()
    first = run_subprocess(_add_domain(tiny_base), env=env)
    wall = time.monotonic() - started
    assert first.returncode == 0, first.stderr
    assert _state() == "complete"

    outcomes = []
    for signal_number in (signal.SIGKILL, signal.SIGTERM):
        for moment in MOMENTS:
            _remove()
            delay = wall * moment
            process = subprocess.Popen(_add_domain(tiny_base),
                                       env={**os.environ, "HF_HUB_OFFLINE": "1", **env},
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            time.sleep(delay)
            process.send_signal(signal_number)
            _, err = process.communicate(timeout=300)
            state = _state()
            outcomes.append((signal_number.name, round(delay, 1), process.returncode, state))
            if process.returncode == 0:
                assert state == "complete"
            elif signal_number == signal.SIGTERM and process.returncode == 1:
                # one line, and it is true: nothing of the run stayed
                assert err.strip().splitlines()[-1].endswith("stopped by signal 15; nothing was "
                                                             "registered"), err
                assert len(err.strip().splitlines()) == 1, err
                assert state == "absent"
            else:  # SIGKILL, or SIGTERM before the interpreter reached xreg's handler
                assert process.returncode == -signal_number, (process.returncode, err)
                assert state in ("absent", "complete")
    print(outcomes, file=sys.stderr)
    # The retry of the name works whatever the last trial left; gc then removes what the
    # killed runs had stored, and nothing else is left to collect.
    _remove()
    retried = run_subprocess(_add_domain(tiny_base), env=env)
    assert retried.returncode == 0, retried.stderr
    assert _state() == "complete"
    collect_garbage(Registry(), grace_seconds=0)
    again = collect_garbage(Registry(), dry_run=True, grace_seconds=0)
    assert again.removed == [] and again.removed_staging == [], again
