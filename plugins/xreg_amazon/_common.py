"""File reading and user splitting shared by the two Amazon layouts.

Every failure becomes a :class:`DataError` whose one line starts with the offending
file, because the user's next step is always to open that file.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import zlib
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from xcross_registry.errors import DataError


def read_json_object(path: Path) -> dict[str, Any]:
    """A whole-file JSON object (the Recformer layout's files)."""
    if not path.is_file():
        raise DataError(f"{path}: missing file")
    text = path.read_bytes()
    if not text.strip():
        raise DataError(f"{path}: file is empty")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: not valid JSON (line {error.lineno}, column {error.colno}: "
                        f"{error.msg})") from None
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    if not isinstance(value, dict):
        raise DataError(f"{path}: expected a JSON object, found {type(value).__name__}")
    return value


def iter_json_lines(path: Path, prefilter: Callable[[str], bool] | None = None
                    ) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, record)`` for each non-blank line of a gzipped JSON-lines file.

    ``prefilter(line) -> bool`` may skip a line before it is parsed: metadata files
    describe millions of items of which a domain uses a few thousand, and parsing
    only those is what makes loading them take seconds rather than minutes.
    """
    if not path.is_file():
        raise DataError(f"{path}: missing file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty")
    lineno = 0
    try:
        with gzip.open(path, "rt", encoding="utf-8") as stream:
            for lineno, line in enumerate(stream, start=1):
                if not line.strip() or (prefilter is not None and not prefilter(line)):
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise DataError(f"{path}: line {lineno} is not valid JSON ({error.msg})") from None
                if not isinstance(record, dict):
                    raise DataError(f"{path}: line {lineno} is not a JSON object")
                yield lineno, record
    except (OSError, EOFError, zlib.error) as error:
        # gzip.BadGzipFile is an OSError; EOFError is a file cut short mid-stream.
        raise DataError(f"{path}: unreadable gzip after line {lineno} ({error or 'truncated'})") from None
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: line {lineno + 1} is not UTF-8 text ({error.reason})") from None
    if lineno == 0:
        raise DataError(f"{path}: file is empty")


def hash_order(users: Sequence[str], seed: int) -> list[str]:
    """Users in a pseudo-random order fixed by ``seed`` and the user ids alone.

    A hash rather than a random generator: the order never depends on library
    versions, and a user keeps their place when other users are added or removed."""
    return sorted(users, key=lambda user: hashlib.sha256(f"{seed}:{user}".encode()).digest())


def take_fraction(count: int, fraction: float) -> int:
    """How many of ``count`` users a split fraction means (rounded, at least one when
    the fraction is positive and there are users to spare)."""
    if fraction <= 0 or count < 2:
        return 0
    return min(count - 1, max(1, round(count * fraction)))
