"""Training under ``accelerate launch`` with two CPU processes (gloo): every process
trains on its share of each batch, the main process alone registers, and the run sees
exactly the examples and takes exactly the optimiser steps of a one-process run."""

from __future__ import annotations

import json
import socket
import sys

import pytest

from conftest import run_subprocess

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")]

# 14 users x 2 prefixes = 28 examples an epoch in batches of 3: the last batch holds
# one example, fewer than there are processes, so one process trains on a stand-in
# with weight zero at that step.
TRAIN = ("--max-users", "14", "--prefixes-per-user", "2", "--batch-size", "3", "--negatives", "3",
         "--valid-users", "4", "--epochs", "2", "--mode", "dual")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch_two(*args: str):
    """``accelerate launch`` of ``xreg ARGS`` on two CPU processes joined over gloo.

    The rendezvous port is probed free and then bound by the launched processes: another
    test running at the same moment (a pytest-xdist worker) may take it in between, and
    the launch then fails before any training with "address already in use"; it is
    retried on a new port."""
    for _ in range(3):
        command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                   "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                   "--num_cpu_threads_per_process", "1", "--main_process_ip", "127.0.0.1",
                   "--main_process_port", str(free_port()), "-m", "xcross_registry", *args]
        # No GPU, even on a machine that has one: this is the CPU (gloo) path.
        result = run_subprocess(command, env={"CUDA_VISIBLE_DEVICES": ""}, timeout=600)
        if "address already in use" not in (result.stdout + result.stderr).lower():
            return result
    return result


def one_document(stdout: str):
    """The single JSON document on stdout (a second process printing would add another)."""
    document, end = json.JSONDecoder().raw_decode(stdout.lstrip())
    assert not stdout.lstrip()[end:].strip(), "more than one JSON document on stdout"
    return document


def test_two_processes_register_once_and_see_what_one_process_sees(xreg, synthetic_domains, tiny_base):
    single = xreg("train-adapter", "toys", "--base-model", tiny_base, *TRAIN, "--json")
    assert single.exit_code == 0, single.stderr
    one = single.json()["training_config"]["run"]
    assert one["processes"] == 1 and one["examples_seen"] == 56 and one["optimizer_steps"] == 20

    done = launch_two("train-adapter", "toys", "--base-model", tiny_base, *TRAIN, "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    document = one_document(done.stdout)
    two = document["training_config"]["run"]
    assert document["version"] == 2 and two["processes"] == 2
    assert [a["version"] for a in xreg("adapters", "toys", "--json").json()] == [1, 2]
    for key in ("examples_seen", "optimizer_steps", "epochs_completed", "planned_examples", "stop_reason"):
        assert two[key] == one[key], key

    assert xreg("train-adapter", "tools", "--base-model", tiny_base, *TRAIN, "--json").exit_code == 0
    single = xreg("compose", "--sources", "toys@v1,tools", "--target", "tools", "--name", "one",
                  *TRAIN, "--no-evaluate", "--json")
    assert single.exit_code == 0, single.stderr
    one = single.json()["training_config"]["run"]

    done = launch_two("compose", "--sources", "toys@v1,tools", "--target", "tools", "--name", "two",
                      *TRAIN, "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    document = one_document(done.stdout)
    two = document["training_config"]["run"]
    assert document["name"] == "two" and two["processes"] == 2 and "evaluation" in document
    assert [c["name"] for c in xreg("compositions", "--json").json()] == ["one", "two"]
    board = xreg("leaderboard", "tools", "--json").json()
    assert [row["subject"] for board_ in board for row in board_["rows"]] == ["two"]  # evaluated once
    for key in ("examples_seen", "optimizer_steps", "epochs_completed", "planned_examples", "stop_reason"):
        assert two[key] == one[key], key
