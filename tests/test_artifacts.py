"""The content-addressed artifact store."""

from __future__ import annotations

import hashlib

import pytest

from xcross_registry.artifacts import ArtifactStore
from xcross_registry.errors import ArtifactError


def test_put_get_round_trip_and_layout(tmp_path):
    store = ArtifactStore(tmp_path)
    data = b"weights" * 1000
    digest = store.put_bytes(data)
    assert digest == hashlib.sha256(data).hexdigest()
    assert store.path(digest) == tmp_path / digest[:2] / digest
    assert store.get_bytes(digest) == data
    assert store.put_bytes(data) == digest  # idempotent
    assert list(store.staging.iterdir()) == []  # nothing left behind


def test_flipped_byte_is_detected_and_names_the_artifact(tmp_path):
    store = ArtifactStore(tmp_path)
    digest = store.put_bytes(bytes(range(256)) * 10)
    path = store.path(digest)
    corrupted = bytearray(path.read_bytes())
    corrupted[100] ^= 0x01
    path.write_bytes(bytes(corrupted))
    with pytest.raises(ArtifactError, match=f"artifact {digest} is corrupt"):
        store.get_bytes(digest)


def test_missing_and_malformed_digests(tmp_path):
    store = ArtifactStore(tmp_path)
    with pytest.raises(ArtifactError, match="is missing"):
        store.get_bytes("a" * 64)
    with pytest.raises(ArtifactError, match="not a sha256"):
        store.get_bytes("../../etc/passwd")


def test_clean_staging_removes_leftovers_of_dead_processes_only(tmp_path):
    import os
    import subprocess
    import sys

    store = ArtifactStore(tmp_path)
    store.staging.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    (store.staging / f"put-{dead}-abc").write_bytes(b"x")
    (store.staging / f"run-{dead}-abc").mkdir()
    (store.staging / "stray").write_bytes(b"x")
    alive = store.staging / f"run-{os.getpid()}-mine"
    alive.mkdir()
    assert store.clean_staging() == 3
    assert list(store.staging.iterdir()) == [alive]


def test_staging_folder_is_removed_even_when_the_block_raises(tmp_path):
    store = ArtifactStore(tmp_path)
    with pytest.raises(RuntimeError):
        with store.staging_folder() as folder:
            (folder / "weights.safetensors").write_bytes(b"x")
            raise RuntimeError("killed")
    assert not folder.exists()
