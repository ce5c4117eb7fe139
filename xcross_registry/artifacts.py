"""Content-addressed artifact store: a local folder, or object storage through fsspec.

Every file the registry points to (adapter weights, heads, integrators, evaluation
candidates) lives under ``$XREG_ARTIFACTS`` (default ``$XREG_HOME/artifacts``) named by
the sha256 of its bytes (``ab/abcdef…``).  Reads recompute the digest, so a flipped
byte is caught before the bytes are used.

* A local folder (:class:`ArtifactStore`): writes go to a temporary file in the
  store's staging folder and are renamed into place, so a crash never leaves a
  half-written artifact under a real digest; ``flock`` orders writers against ``gc``.
* An fsspec URL (:class:`RemoteArtifactStore`, e.g. ``s3://bucket/prefix``), so that
  replicas on several machines beside one PostgreSQL registry share every artifact.
  An object store's PUT is atomic (a reader sees the whole object or none), which
  gives the same guarantee as the rename.  Staging folders (training runs, loads)
  stay on the local disk under ``$XREG_HOME/staging``; see the class for ``gc``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

from .errors import ArtifactError

_CHUNK = 1 << 20
LOCK_SUFFIX = ".lock"


@dataclass(frozen=True)
class StoredArtifact:
    """One stored artifact as ``gc`` sees it: its digest, size and last write (epoch s)."""

    digest: str
    size: int
    modified: float


class ArtifactStore:
    """Files addressed by sha256 under ``root`` (``ab/abcdef…``)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    @property
    def location(self) -> str:
        """Where the artifacts live, as a user would write it."""
        return str(self.root)

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

    def listing(self) -> Iterator[StoredArtifact]:
        """Every stored artifact with its size and last write (what ``gc`` decides on)."""
        for digest, path in self.stored():
            stat = path.stat()
            yield StoredArtifact(digest, stat.st_size, stat.st_mtime)

    def size(self, digest: str) -> int | None:
        """An artifact's size in bytes, None when it is absent."""
        try:
            return self.path(digest).stat().st_size
        except FileNotFoundError:
            return None

    def head(self, digest: str, count: int) -> bytes | None:
        """The first ``count`` bytes of an artifact (unchecked), None when it is absent."""
        try:
            with open(self.path(digest), "rb") as handle:
                return handle.read(count)
        except FileNotFoundError:
            return None

    def remove(self, digest: str) -> None:
        path = self.path(digest)
        path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # not empty, or already gone
            path.parent.rmdir()

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


class RemoteArtifactStore(ArtifactStore):
    """Artifacts on any fsspec file system (``s3://bucket/prefix``, ``gs://…``,
    ``memory://…``), with the local folder ``staging_root`` for staging.

    The same digests, layout, digest checks and staging as a local store.  ``gc`` on an
    object store: every write of an artifact, a new one or one that is already there,
    PUTs its bytes, so the object's modification time is the time of its last
    registration, and ``gc`` keeps unreferenced artifacts younger than its grace
    period exactly as it does locally.  The store-wide lock is a ``flock`` on the local
    staging folder: it orders ``gc`` against writers of the same machine; writers on
    other machines are protected by the grace period alone (keep it longer than any
    registration takes: the default hour is)."""

    def __init__(self, url: str, staging_root: str | os.PathLike) -> None:
        import fsspec

        try:
            self.fs, self.prefix = fsspec.core.url_to_fs(url)
        except (ImportError, ValueError) as exc:
            raise ArtifactError(f"cannot open the artifact store {url}: {exc}") from None
        self.url = url.rstrip("/")
        self.prefix = self.prefix.rstrip("/")
        self.root = Path(staging_root)

    @property
    def location(self) -> str:
        return self.url

    @property
    def staging(self) -> Path:
        return self.root / "tmp"

    def key(self, digest: str) -> str:
        _check_digest(digest)
        return f"{self.prefix}/{digest[:2]}/{digest}"

    def path(self, digest: str) -> Path:
        raise ArtifactError(f"artifact {digest} lives in {self.url}, not in a local folder")

    def exists(self, digest: str) -> bool:
        key = self.key(digest)
        self.fs.invalidate_cache(key)
        return self.fs.exists(key)

    def put_bytes(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        try:
            with self.lock(shared=True):
                self.fs.pipe_file(self.key(digest), data)
        except OSError as exc:
            raise ArtifactError(f"cannot write to the artifact store {self.url}: {exc}") from None
        return digest

    def get_bytes(self, digest: str) -> bytes:
        key = self.key(digest)
        try:
            data = self.fs.cat_file(key)
        except FileNotFoundError:
            raise ArtifactError(f"artifact {digest} is missing from {self.url}") from None
        except OSError as exc:
            raise ArtifactError(f"artifact {digest} cannot be read from {self.url}: {exc}") from None
        actual = hashlib.sha256(data).hexdigest()
        if actual != digest:
            raise ArtifactError(f"artifact {digest} is corrupt: its bytes hash to {actual} "
                                f"({self.url}/{digest[:2]}/{digest})")
        return data

    def size(self, digest: str) -> int | None:
        try:
            return int(self.fs.size(self.key(digest)))
        except FileNotFoundError:
            return None

    def head(self, digest: str, count: int) -> bytes | None:
        try:
            return self.fs.cat_file(self.key(digest), start=0, end=count)
        except FileNotFoundError:
            return None

    def stored(self) -> Iterator[tuple[str, Path]]:
        raise ArtifactError(f"the artifacts in {self.url} are not local files; use listing()")

    def listing(self) -> Iterator[StoredArtifact]:
        self.fs.invalidate_cache(self.prefix)
        try:
            found = self.fs.find(self.prefix, detail=True)
        except FileNotFoundError:
            return
        for key, info in sorted(found.items()):
            shard, _, name = key[len(self.prefix):].strip("/").rpartition("/")
            if is_digest(name) and shard == name[:2]:
                yield StoredArtifact(name, int(info.get("size") or 0), _modified(info))

    def remove(self, digest: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self.key(digest))


def _modified(info: dict[str, Any]) -> float:
    """An fsspec entry's last write as epoch seconds (S3: ``LastModified``)."""
    for name in ("LastModified", "mtime", "last_modified", "created", "updated"):
        value = info.get(name)
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    return time.time()  # unknown: taken as just written, so gc keeps it for the grace period


def open_store(location: str | os.PathLike) -> ArtifactStore:
    """The store at ``location``: a folder, or a URL with an fsspec protocol (staging
    then goes to ``$XREG_HOME/staging``)."""
    text = str(location)
    if "://" in text and not text.startswith("file://"):
        from . import settings

        return RemoteArtifactStore(text, settings.home() / "staging")
    return ArtifactStore(text[len("file://"):] if text.startswith("file://") else text)


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
