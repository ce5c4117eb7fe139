"""Content-addressed artifact store.

Every file the registry points to (adapter weights, heads, integrators, evaluation
candidates) lives under ``$XREG_HOME/artifacts`` named by the sha256 of its bytes.
Writes go to a temporary file in the same folder and are renamed into place, so a
crash never leaves a half-written artifact under a real digest; reads recompute the
digest, so a flipped byte is caught before the bytes are used.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import ArtifactError

_CHUNK = 1 << 20
LOCK_SUFFIX = ".lock"


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
        """Store ``data``; return its digest.

        Runs under the store's shared lock, so ``xreg gc`` (exclusive) never removes an
        artifact between this check and the rename.  An artifact already there gets a
        fresh mtime: a registration is about to reference it again, and gc's grace
        period protects it until that commits."""
        digest = hashlib.sha256(data).hexdigest()
        target = self.path(digest)
        try:
            with self.lock(shared=True):
                if target.is_file():
                    with contextlib.suppress(OSError):  # a store we may read but not write
                        os.utime(target)
                    return digest
                self._write(data, target)
        except OSError as exc:
            raise ArtifactError(f"cannot write to the artifact store {self.root}: "
                                f"{exc.strerror or exc}") from None
        return digest

    def _write(self, data: bytes, target: Path) -> None:
        self.staging.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.staging, prefix=f"put-{os.getpid()}-")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # owned while written: clean_staging leaves it
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @contextlib.contextmanager
    def lock(self, shared: bool = False) -> Iterator[None]:
        """The store-wide lock: shared by writers, exclusive for the garbage collector.

        A ``flock`` on the root folder itself (no lock file to trip over); the kernel
        drops it when its process dies."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def stored(self) -> Iterator[tuple[str, Path]]:
        """Every stored artifact as ``(digest, path)``; staging and stray files are skipped."""
        if not self.root.is_dir():
            return
        for shard in sorted(self.root.iterdir()):
            if len(shard.name) != 2 or not shard.is_dir():
                continue
            for path in sorted(shard.iterdir()):
                if path.is_file() and is_digest(path.name) and path.name[:2] == shard.name:
                    yield path.name, path

    def put_file(self, source: str | os.PathLike) -> str:
        return self.put_bytes(Path(source).read_bytes())

    def get_bytes(self, digest: str) -> bytes:
        path = self.path(digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ArtifactError(f"artifact {digest} is missing from {self.root}") from None
        except OSError as exc:  # a folder or an unreadable file where the artifact should be
            raise ArtifactError(f"artifact {digest} cannot be read ({path}: {exc.strerror})") from None
        actual = hashlib.sha256(data).hexdigest()
        if actual != digest:
            raise ArtifactError(
                f"artifact {digest} is corrupt: its bytes hash to {actual} ({path})")
        return data

    @contextlib.contextmanager
    def staging_folder(self, purpose: str = "run") -> Iterator[Path]:
        """A private folder under :attr:`staging`, removed when the block ends.

        The folder belongs to this process through ``NAME.lock`` beside it, locked
        (``flock``) for as long as the block runs: :meth:`clean_staging` in any other
        process, even one in another PID namespace or on another host sharing the
        folder, sees the held lock and leaves the folder alone; the kernel releases it
        the moment the owner dies, however it dies."""
        self.clean_staging()
        self.staging.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(dir=self.staging, prefix=f"{purpose}-{os.getpid()}-"))
        lock_path = folder.with_name(folder.name + LOCK_SUFFIX)
        with open(lock_path, "w") as owner:
            fcntl.flock(owner, fcntl.LOCK_EX)
            owner.write(f"{os.getpid()} {socket.gethostname()}\n")
            owner.flush()
            try:
                yield folder
            finally:
                shutil.rmtree(folder, ignore_errors=True)
                lock_path.unlink(missing_ok=True)

    def stale_staging(self) -> list[Path]:
        """The entries of :attr:`staging` whose owner is gone (see :meth:`staging_folder`)."""
        if not self.staging.is_dir():
            return []
        entries = sorted(self.staging.iterdir())
        stale_folders = [e for e in entries if e.is_dir() and not _in_use(e)]
        stale_files = [e for e in entries if not e.is_dir() and not _in_use(e)
                       and not (e.name.endswith(LOCK_SUFFIX)
                                and e.with_name(e.name[:-len(LOCK_SUFFIX)]).is_dir())]
        return stale_folders + stale_files

    def clean_staging(self) -> int:
        """Remove what killed runs left in :attr:`staging`; return how many entries went.

        Entries whose owner still runs are kept."""
        return self.remove_staging(self.stale_staging())

    @staticmethod
    def remove_staging(entries: list[Path]) -> int:
        """Remove staging entries found stale (with a folder's lock file); return how many."""
        for entry in entries:
            if entry.is_dir() and not entry.is_symlink():  # a link goes, not what it points to
                shutil.rmtree(entry, ignore_errors=True)
                entry.with_name(entry.name + LOCK_SUFFIX).unlink(missing_ok=True)
            else:
                entry.unlink(missing_ok=True)
        return len(entries)


def _in_use(entry: Path) -> bool:
    """Whether a staging entry's owner may still be using it.

    A file (a ``put`` in progress, a lock file) is its own lock; a folder is held
    through ``NAME.lock``.  The process id in the name covers the instant between
    creating an entry and locking it: an entry is stale only when its lock is free
    AND no process of that id runs here."""
    return _owner_alive(entry.name) or _lock_held(entry)


def _lock_held(entry: Path) -> bool:
    lock_path = entry if not entry.is_dir() else entry.with_name(entry.name + LOCK_SUFFIX)
    try:
        fd = os.open(lock_path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    except OSError:
        return True  # cannot tell: keep it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also releases the probe's own lock
    return False


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


def is_digest(text: str) -> bool:
    """Whether ``text`` has the form of an artifact's name (64 lowercase hex digits)."""
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)


def _check_digest(digest: str) -> None:
    if not is_digest(digest):
        raise ArtifactError(f"not a sha256 artifact digest: {digest!r}")
