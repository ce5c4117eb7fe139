"""Artifacts on object storage: a real S3-compatible server (moto in server mode, a
separate process on 127.0.0.1, started and stopped here), the same digests, checks and
``gc`` as a local folder, and two ``xreg serve`` replicas on different homes serving a
model that a third process trained, beside one PostgreSQL registry."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from conftest import run_subprocess, xreg_command
from test_postgres import ADMIN_URL, NO_SERVER, fresh_database

from xcross_registry.artifacts import RemoteArtifactStore, open_store
from xcross_registry.errors import ArtifactError

pytest.importorskip("s3fs", reason="the s3 extra is not installed (pip install -e '.[s3]')")
pytest.importorskip("moto.server", reason="moto's server is not installed (pip install 'moto[server]')")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory):
    """moto's S3 server on a free 127.0.0.1 port, stopped at the end of the module."""
    port = _free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "w") as output:
        process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                   stdout=output, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log.read_text()
            try:
                urllib.request.urlopen(url, timeout=2).read()
                break
            except OSError:
                assert time.monotonic() < deadline, "moto server not ready:\n" + log.read_text()
                time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture
def bucket(s3_endpoint, monkeypatch) -> str:
    """A fresh bucket; the S3 settings in the environment (subprocesses inherit them)."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "xreg-test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "xreg-test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    import fsspec

    name = f"xreg-{uuid.uuid4().hex[:12]}"
    fsspec.filesystem("s3").mkdir(name)
    return name


def test_remote_store_checks_digests_and_gc_keeps_recent_and_referenced(bucket, xreg_home, monkeypatch):
    from xcross_registry.garbage import collect_garbage
    from xcross_registry.registry import Registry

    url = f"s3://{bucket}/team/artifacts"
    store = open_store(url)
    assert isinstance(store, RemoteArtifactStore) and store.location == url
    digest = store.put_bytes(b'{"kind": "note"}')
    assert store.get_bytes(digest) == b'{"kind": "note"}' and store.exists(digest)
    assert store.put_bytes(b'{"kind": "note"}') == digest  # same content, same address
    assert [a.digest for a in store.listing()] == [digest]

    store.fs.pipe_file(store.key(digest), b"flipped")
    with pytest.raises(ArtifactError, match=f"artifact {digest} is corrupt"):
        store.get_bytes(digest)
    with pytest.raises(ArtifactError, match=f"artifact {'0' * 64} is missing from {url}"):
        store.get_bytes("0" * 64)

    monkeypatch.setenv("XREG_ARTIFACTS", url)
    registry = Registry()
    assert registry.store.location == url
    registry.add_domain("toys", "synthetic", "toys?users=20&items=60&max_len=6")
    referenced = registry.candidate_set("toys")[1]
    orphan = registry.store.put_bytes(b"left behind by a killed run")
    kept = collect_garbage(registry)
    assert orphan in kept.kept_recent and not kept.removed
    removed = collect_garbage(registry, grace_seconds=0)
    assert orphan in removed.removed and referenced not in removed.removed
    assert not registry.store.exists(orphan) and registry.store.exists(referenced)
    assert not (xreg_home / "artifacts").exists()  # nothing went to the local disk


@pytest.mark.slow
@pytest.mark.skipif(not ADMIN_URL, reason=NO_SERVER)
def test_two_replicas_serve_what_a_third_process_trained(bucket, tmp_path, tiny_base):
    """PostgreSQL holds the rows, S3 the weights; every process has its own XREG_HOME."""
    with fresh_database() as database:
        env = {"XREG_DATABASE_URL": database.render_as_string(hide_password=False),
               "XREG_ARTIFACTS": f"s3://{bucket}/prod", "OMP_NUM_THREADS": "1"}
        trainer = {**env, "XREG_HOME": str(tmp_path / "trainer")}
        trained = run_subprocess(xreg_command(
            "add-domain", "toys", "--plugin", "synthetic", "--data", "toys?users=40&items=60&max_len=6",
            "--train", "--mode", "dual", "--base-model", tiny_base, "--epochs", "1", "--max-users", "16",
            "--batch-size", "8", "--negatives", "3", "--max-length", "64"), env=trainer)
        assert trained.returncode == 0, trained.stderr
        rows = json.loads(run_subprocess(xreg_command("adapters", "--json"), env=trainer).stdout)
        digest = rows[0]["artifact_digest"]

        replicas = []
        try:
            for number in (1, 2):
                port = _free_port()
                home = tmp_path / f"replica{number}"
                log = open(tmp_path / f"replica{number}.log", "w")
                process = subprocess.Popen(
                    xreg_command("serve", "--port", str(port), "--preload", "toys"),
                    env={**os.environ, **env, "XREG_HOME": str(home), "HF_HUB_OFFLINE": "1"},
                    stdout=log, stderr=subprocess.STDOUT)
                replicas.append((process, port, home, log))
            answers = []
            for process, port, home, log in replicas:
                _wait_ready(process, port, Path(log.name))
                request = urllib.request.Request(
                    f"http://127.0.0.1:{port}/v1/recommend", method="POST",
                    headers={"Content-Type": "application/json"},
                    data=json.dumps({"subject": "toys", "history": ["toys-00000", "toys-00001"], "top_k": 5}).encode())
                answers.append(json.loads(urllib.request.urlopen(request, timeout=60).read()))
                assert not (home / "artifacts").exists()  # weights came from S3
        finally:
            for process, _, _, log in replicas:
                process.terminate()
                process.wait(timeout=30)
                log.close()
    assert answers[0]["digest"] == answers[1]["digest"] == digest
    assert answers[0]["items"] == answers[1]["items"] and len(answers[0]["items"]) == 5


def _wait_ready(process: subprocess.Popen, port: int, log: Path) -> None:
    deadline = time.monotonic() + 240
    while True:
        assert process.poll() is None, log.read_text()
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5).status == 200:
                return
        except OSError:
            pass
        assert time.monotonic() < deadline, "replica not ready in time:\n" + log.read_text()
        time.sleep(0.5)
