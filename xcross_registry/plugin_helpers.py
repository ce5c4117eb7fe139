"""What nearly every domain loader needs, so plugins do not each write their own:

* :func:`parse_location` splits the ``--data`` string ``FOLDER?key=value&...`` into
  the folder and typed options, refusing unknown, repeated or malformed options;
  :func:`absolute_location` is the same string with the folder made absolute (what
  the registry stores, so the domain reloads from any working directory).
* :func:`split_users` assigns users to train / valid / test by a seeded hash of
  their id: reproducible on any machine and library version, and a user keeps their
  split when other users come or go.
* :func:`read_json_object` and :func:`iter_json_lines` read JSON files and turn every
  problem into one :class:`~xcross_registry.errors.DataError` that starts with the
  file (and line), because the user's next step is always to open that file.
* :func:`title_text` turns a source's missing or NaN title into the placeholder.

All of it is plain Python (no torch), like everything a plugin imports at load time.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence
from urllib.parse import parse_qsl

from .data import MISSING_TITLE
from .errors import DataError

Converter = Callable[[str], Any]


# ---- option converters ----------------------------------------------------------------
# A converter takes the option's text and returns its value; it raises ValueError whose
# message completes "option NAME ..." (e.g. "must be a fraction in [0, 1)").  The plain
# types int, float and str work too.

def fraction(text: str) -> float:
    """A share of users: a float in [0, 1)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value < 1:  # NaN fails too
        raise ValueError("must be a fraction in [0, 1)")
    return value


def non_negative_int(text: str) -> int:
    """Digits only: ``-1``, ``1e3`` and ``ten`` are refused rather than guessed at."""
    if not (text.isascii() and text.isdigit()):
        raise ValueError("must be a non-negative integer")
    return int(text)


def _convert(location: str, key: str, text: str, converter: Converter) -> Any:
    try:
        return converter(text)
    except ValueError as error:
        if converter in (int, float, str):
            raise DataError(f"{location}: option {key}={text!r} is not a valid "
                            f"{converter.__name__}") from None
        raise DataError(f"{location}: option {key} {error}, got {text!r}") from None


# ---- location strings -----------------------------------------------------------------

@dataclass(frozen=True)
class Location:
    """A parsed ``--data`` string: ``path`` (the part before ``?``) and the options given."""

    path: str
    options: dict[str, Any]

    @property
    def folder(self) -> Path:
        return Path(self.path).expanduser()


def parse_location(location: str, options: Mapping[str, Converter], *,
                   is_path: bool = True) -> Location:
    """Split ``PATH?key=value&key=value`` and convert each option with ``options[key]``.

    Only the options given are in the result; defaults are the plugin's business (a
    dataclass's defaults, say).  With ``is_path`` a file or folder whose real name
    contains ``?`` still works: the whole string is tried as a path first.  Raises
    :class:`DataError` for an unknown option (listing the known ones), an option given
    twice, or a value its converter refuses.
    """
    if "?" not in location or (is_path and Path(location).expanduser().exists()):
        return Location(location, {})
    path, _, query = location.rpartition("?")
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True) if query else []
    except ValueError:
        raise DataError(f"{location}: options must look like ?key=value&key=value") from None
    values: dict[str, Any] = {}
    for key, text in pairs:
        if key not in options:
            known = ", ".join(options) or "none"
            raise DataError(f"{location}: unknown option {key!r} (known: {known})")
        if key in values:
            raise DataError(f"{location}: option {key!r} given twice")
        values[key] = _convert(location, key, text, options[key])
    return Location(path, values)


def absolute_location(location: str) -> str:
    """``location`` with its path part made absolute, options kept as typed.

    The registry stores what this returns for a location whose path exists, so a
    domain registered as ``data/books?seed=1`` from one folder reloads from any other.
    A string whose path does not exist (a recipe such as ``toys?users=500``) is kept."""
    whole = Path(location).expanduser()
    if whole.exists():
        return str(whole.resolve())
    path, mark, query = location.rpartition("?")
    if not mark or not path or not Path(path).expanduser().exists():
        return location
    return f"{Path(path).expanduser().resolve()}?{query}"


# ---- seeded user splits ---------------------------------------------------------------

def hash_order(users: Sequence[str], seed: int) -> list[str]:
    """Users in a pseudo-random order fixed by ``seed`` and the user ids alone.

    A hash rather than a random generator: the order never depends on library
    versions, and a user keeps their place when other users are added or removed."""
    return sorted(users, key=lambda user: hashlib.sha256(f"{seed}:{user}".encode()).digest())


def take_fraction(count: int, fraction: float) -> int:
    """How many of ``count`` users a split fraction means (rounded, at least one when
    the fraction is positive and there are users to spare, never all of them)."""
    if fraction <= 0 or count < 2:
        return 0
    return min(count - 1, max(1, round(count * fraction)))


@dataclass(frozen=True)
class UserSplit:
    """User ids per split, each list in the seeded hash order."""

    train: list[str]
    valid: list[str]
    test: list[str]


def split_users(users: Sequence[str], seed: int = 0, valid: float = 0.1,
                test: float = 0.2) -> UserSplit:
    """Hold out ``test`` of all users, then ``valid`` of the rest, by :func:`hash_order`.

    ``test=0`` gives no test users (for a source whose test users come separately)."""
    ordered = hash_order(list(users), seed)
    n_test = take_fraction(len(ordered), test)
    n_valid = take_fraction(len(ordered) - n_test, valid)
    return UserSplit(train=ordered[n_test + n_valid:], valid=ordered[n_test:n_test + n_valid],
                     test=ordered[:n_test])


# ---- files ----------------------------------------------------------------------------

def read_json_object(path: Path) -> dict[str, Any]:
    """A whole-file JSON object, or one :class:`DataError` line starting with ``path``."""
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


def _is_gzip(path: Path) -> bool:
    """A ``.gz`` name, or gzip's magic bytes under any name."""
    if path.suffix == ".gz":
        return True
    with open(path, "rb") as probe:
        return probe.read(2) == b"\x1f\x8b"


def iter_json_lines(path: Path, prefilter: Callable[[str], bool] | None = None
                    ) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, record)`` for each non-blank line of a JSON-lines file, plain
    or gzipped; every record must be a JSON object.

    ``prefilter(line) -> bool`` may skip a line before it is parsed: metadata files
    describe millions of items of which a domain uses a few thousand, and parsing
    only those is what makes loading them take seconds rather than minutes.
    """
    if not path.is_file():
        raise DataError(f"{path}: missing file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty")
    compressed = _is_gzip(path)
    lineno = 0
    try:
        with (gzip.open(path, "rt", encoding="utf-8") if compressed
              else open(path, encoding="utf-8")) as stream:
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
        kind = "gzip" if compressed else "file"
        raise DataError(f"{path}: unreadable {kind} after line {lineno} ({error or 'truncated'})") from None
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: line {lineno + 1} is not UTF-8 text ({error.reason})") from None
    if lineno == 0:
        raise DataError(f"{path}: file is empty")


# ---- titles ---------------------------------------------------------------------------

def title_text(value: Any) -> str:
    """A source's title as text: missing (``None``), NaN, non-text or blank values become
    :data:`~xcross_registry.data.MISSING_TITLE`.

    For sources known to lack some titles (Amazon metadata has NaN titles); the data
    contract otherwise refuses non-string titles, so a loader must choose this."""
    if isinstance(value, str) and value.strip() and value.strip().lower() != "nan":
        return value
    return MISSING_TITLE
