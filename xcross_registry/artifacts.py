"""Content-addressed artifact store.

Every file the registry points to (adapter weights, heads, integrators, evaluation
candidates) lives under ``$XREG_HOME/artifacts`` named by the sha256 of its bytes.
Writes go to a temporary file in the same folder and are renamed into place, so a
crash never leaves a half-written artifact under a real digest; reads recompute the
digest, so a flipped byte is caught before the bytes are used.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from .errors import ArtifactError

_CHUNK = 1 << 20


class ArtifactStore:
    """Files addressed by sha256 under ``root`` (``ab/abcdef…``)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    @property
    def staging(self) -> Path:
        """Where unfinished writes and training runs keep their files.

        Anything here belongs to a run that has not finished; :meth:`clean_staging`
        removes what a killed run left behind."""
        return self.root / "tmp"

    def path(self, digest: str) -> Path:
        _check_digest(digest)
        return self.root / digest[:2] / digest

    def exists(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def put_bytes(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        target = self.path(digest)
        if target.is_file():
            return digest
        self.staging.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.staging, prefix="put-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return digest

    def put_file(self, source: str | os.PathLike) -> str:
        return self.put_bytes(Path(source).read_bytes())

    def get_bytes(self, digest: str) -> bytes:
        path = self.path(digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ArtifactError(f"artifact {digest} is missing from {self.root}") from None
        actual = hashlib.sha256(data).hexdigest()
        if actual != digest:
            raise ArtifactError(
                f"artifact {digest} is corrupt: its bytes hash to {actual} ({path})")
        return data

    def clean_staging(self) -> int:
        """Remove leftovers of interrupted writes and runs; return how many entries went."""
        if not self.staging.is_dir():
            return 0
        removed = 0
        for entry in self.staging.iterdir():
            if entry.is_dir():
                import shutil

                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed += 1
        return removed


def _check_digest(digest: str) -> None:
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ArtifactError(f"not a sha256 artifact digest: {digest!r}")
