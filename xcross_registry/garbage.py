"""Collecting artifacts that nothing references any more (``xreg gc``).

Artifacts are shared by content, so removing a row never removes files; a run killed
between storing its files and committing its row leaves files no row names.  This
module finds what the registry still references and removes the rest:

* referenced: every digest column (``*_digest``) and every 64-hex string inside a
  JSON column of any table (evaluation ranks live in ``metrics``, and columns later
  releases add are covered without touching this code), then, transitively, every
  digest named inside a referenced JSON artifact (adapter and composition manifests
  list their files; a composition's settings name its sources).
* in flight: an unreferenced artifact younger than the grace period may belong to a
  registration that has stored its files and not yet committed; it is kept.  The
  whole collection runs under the store's exclusive lock, and every write takes the
  shared one and refreshes the mtime of an artifact it reuses, so an artifact cannot
  be judged old and removed while a registration is storing it.
* staging leftovers of dead runs (see :meth:`ArtifactStore.stale_staging`).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from .artifacts import is_digest
from .errors import ArtifactError
from .registry import Registry

GRACE_SECONDS = 3600.0
# Manifests and settings are a few KiB; weights (safetensors) are never JSON.
_JSON_ARTIFACT_MAX_BYTES = 1 << 20


@dataclass
class GcReport:
    """What a collection removed (or, in a dry run, would remove)."""

    dry_run: bool
    referenced: int  # stored artifacts kept because a row (or a manifest) names them
    removed: list[str] = field(default_factory=list)
    removed_staging: list[str] = field(default_factory=list)
    bytes_freed: int = 0
    kept_recent: list[str] = field(default_factory=list)
    grace_seconds: float = GRACE_SECONDS

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def collect_garbage(registry: Registry, *, dry_run: bool = False,
                    grace_seconds: float = GRACE_SECONDS) -> GcReport:
    """Remove artifacts no row references and staging leftovers of dead runs.

    ``grace_seconds`` protects registrations in flight: 0 removes every unreferenced
    artifact, which is safe only while no other process registers anything."""
    if grace_seconds < 0:
        raise ArtifactError("the grace period cannot be negative")
    store = registry.store
    with store.lock():
        referenced = referenced_digests(registry)
        report = GcReport(dry_run=dry_run, referenced=0, grace_seconds=grace_seconds)
        now = time.time()
        for artifact in store.listing():
            if artifact.digest in referenced:
                report.referenced += 1
                continue
            if now - artifact.modified < grace_seconds:
                report.kept_recent.append(artifact.digest)
                continue
            report.removed.append(artifact.digest)
            report.bytes_freed += artifact.size
            if not dry_run:
                store.remove(artifact.digest)
        stale = store.stale_staging()
        sizes = {entry: _size(entry) for entry in stale}
        if not dry_run:
            store.remove_staging(stale)
        for entry in stale:  # report what went (or would go), never what stayed
            if dry_run or not os.path.lexists(entry):
                report.removed_staging.append(entry.name)
                report.bytes_freed += sizes[entry]
    return report


def referenced_digests(registry: Registry) -> set[str]:
    """Every artifact digest the registry references, directly or through manifests."""
    found = _digests_in(registry.artifact_references())
    pending = list(found)
    while pending:
        digest = pending.pop()
        for named in _digests_in_artifact(registry, digest) - found:
            found.add(named)
            pending.append(named)
    return found


def _digests_in_artifact(registry: Registry, digest: str) -> set[str]:
    """The digests a stored JSON document (a manifest, a settings file) names."""
    size = registry.store.size(digest)
    if size is None or size > _JSON_ARTIFACT_MAX_BYTES or registry.store.head(digest, 1) not in (b"{", b"["):
        return set()
    try:
        document = json.loads(registry.store.get_bytes(digest))
    except (ValueError, ArtifactError) as exc:
        # Its files cannot be listed, so nothing can be judged unreferenced.
        raise ArtifactError(f"cannot collect garbage: referenced artifact {digest} cannot be "
                            f"read ({exc}); nothing was removed") from None
    return _digests_in(document)


def _digests_in(value: Any) -> set[str]:
    if isinstance(value, str):
        return {value} if is_digest(value) else set()
    if isinstance(value, dict):
        return _union(_digests_in(v) for v in (*value.keys(), *value.values()))
    if isinstance(value, (list, tuple)):
        return _union(_digests_in(v) for v in value)
    return set()


def _union(sets: Iterable[set[str]]) -> set[str]:
    result: set[str] = set()
    for part in sets:
        result |= part
    return result


def _size(entry: Path) -> int:
    if entry.is_symlink():  # the link goes, what it points to stays
        return 0
    if entry.is_dir():
        return sum(p.stat().st_size for p in entry.rglob("*") if p.is_file())
    return entry.stat().st_size if entry.exists() else 0


def format_bytes(count: int) -> str:
    """``1.3 MB``-style sizes (powers of 1000) for the CLI."""
    if count < 1000:
        return f"{count} bytes"
    size = float(count)
    for unit in ("KB", "MB", "GB"):
        size /= 1000
        if size < 1000:
            break
    return f"{size:.1f} {unit}"
