"""Content-addressed artifact store.

Every file the registry points to (adapter weights, heads, integrators, evaluation
candidates) lives under ``$XREG_HOME/artifacts`` named by the sha256 of its bytes.
Writes go to a temporary file in the same folder and are renamed into place, so a
crash never leaves a half-written artifact under a real digest; reads recompute the
digest, so a flipped byte is caught before the bytes are used.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

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
        fd, tmp = tempfile.mkstemp(dir=self.staging, prefix=f"put-{os.getpid()}-")
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

    @contextlib.contextmanager
    def staging_folder(self, purpose: str = "run") -> Iterator[Path]:
        """A private folder under :attr:`staging`, removed when the block ends.

        Its name carries this process's id, so a later :meth:`clean_staging` can tell
        the leftovers of a killed run from the folder of a run still going."""
        self.clean_staging()
        self.staging.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(dir=self.staging, prefix=f"{purpose}-{os.getpid()}-"))
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def clean_staging(self) -> int:
        """Remove what killed runs left in :attr:`staging`; return how many entries went.

        Entries of processes that are still alive are kept."""
        if not self.staging.is_dir():
            return 0
        removed = 0
        for entry in self.staging.iterdir():
            if _owner_alive(entry.name):
                continue
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed += 1
        return removed


def _owner_alive(name: str) -> bool:
    """Whether the process named in a staging entry (``purpose-PID-random``) still runs."""
    parts = name.split("-")
    if len(parts) < 3 or not parts[1].isdigit():
        return False
    pid = int(parts[1])
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _check_digest(digest: str) -> None:
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ArtifactError(f"not a sha256 artifact digest: {digest!r}")
