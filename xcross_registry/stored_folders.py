"""Folders stored in the artifact store: each file by its digest, plus a JSON manifest
(``{"kind": ..., "files": {name: digest}}``) whose digest names the folder.

Adapter versions and compositions are such folders.  Reading one back is where a forged
or damaged registry would strike, so every name and every byte is checked before
anything is written (see :func:`write_folder`).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import ArtifactError, ModelError

if TYPE_CHECKING:  # pragma: no cover
    from .registry import Registry

# The manifest kind of an adapter version's folder (the default: most stored folders are).
ADAPTER_MANIFEST = "xreg.adapter.v1"


def store_folder(registry: "Registry", folder: Path, kind: str = ADAPTER_MANIFEST) -> str:
    """Store every file of ``folder`` and return the digest of the manifest naming them."""
    files = {path.name: registry.store.put_file(path)
             for path in sorted(folder.iterdir()) if path.is_file()}
    manifest = json.dumps({"kind": kind, "files": files}, sort_keys=True).encode()
    return registry.store.put_bytes(manifest)


def manifest_files(registry: "Registry", digest: str, kind: str = ADAPTER_MANIFEST) -> dict[str, str]:
    """The ``{file name: digest}`` map of a stored folder manifest.

    A manifest is data, and data can be forged or damaged: every name must be a plain
    file name (a folder is stored flat), so that writing it can never land outside the
    folder it is written to."""
    try:
        manifest = json.loads(registry.store.get_bytes(digest))
        if manifest.get("kind") != kind:
            raise ValueError(f"kind {manifest.get('kind')!r}, expected {kind!r}")
        files = dict(manifest["files"])
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ModelError(f"artifact {digest} is not a stored folder manifest ({exc})") from None
    for name, file_digest in files.items():
        if not _plain_file_name(name) or not isinstance(file_digest, str):
            raise ArtifactError(f"artifact {digest}: the manifest names the unsafe file {name!r} "
                                "(only plain file names are allowed); refused")
    return files


def _plain_file_name(name: object) -> bool:
    """A single path component that names a file in the current folder, on any OS."""
    return (isinstance(name, str) and name not in ("", ".", "..")
            and not any(c in name for c in "/\\\0:") and name == name.strip())


def write_folder(registry: "Registry", digest: str, folder: Path, kind: str = ADAPTER_MANIFEST,
                 extra: dict[str, bytes] | None = None) -> Path:
    """Write the files of a stored folder (plus ``extra`` ones, e.g. a model card) into
    ``folder``, each checked against its digest.

    Every name is checked and every file read and verified before the first byte is
    written, so a bad manifest or a corrupt artifact leaves ``folder`` as it was.  Files
    are created exclusively and without following links: an entry already in
    ``folder`` (a planted symlink, say) is refused rather than written through."""
    files = manifest_files(registry, digest, kind)
    root = folder.resolve()
    for name in [*files, *(extra or {})]:
        if (folder / name).is_symlink() or (folder / name).resolve().parent != root:
            raise ArtifactError(f"artifact {digest}: {folder / name} would resolve outside "
                                f"{folder}; nothing was written")
    contents = {name: registry.store.get_bytes(file_digest) for name, file_digest in files.items()}
    contents.update(extra or {})
    created = not folder.exists()
    written: list[Path] = []
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in contents.items():
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
            with os.fdopen(os.open(folder / name, flags, 0o644), "wb") as handle:
                written.append(folder / name)
                handle.write(data)
    except OSError as exc:
        for path in written:
            path.unlink(missing_ok=True)
        if created:
            shutil.rmtree(folder, ignore_errors=True)
        raise ArtifactError(f"cannot write {exc.filename or folder}: {exc.strerror}; "
                            "nothing was written") from None
    return folder
