"""Amazon Review Data (2018) as downloaded: ``<Category>_5.json.gz`` + ``meta_<Category>.json.gz``.

Reviews are JSON lines with ``reviewerID``, ``asin`` and ``unixReviewTime``; metadata
lines carry ``asin`` and ``title``.  A user's sequence is their reviews ordered by
time, ties kept in file order (a stable sort), so the same files always give the same
sequences; each item carries its ``unixReviewTime`` (``UserSequence.times``), which the
``temporal`` split strategy cuts on.  Users with fewer than ``min_len`` or more than ``max_len`` reviews are
dropped rather than cut, so every kept sequence is a whole history.  The catalogue is
the items those users reviewed, sorted by ASIN.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from xcross_registry import DataError, DomainData, Item, UserSequence
from xcross_registry.plugin_helpers import iter_json_lines, split_users

from .titles import product_title

REVIEWS_SUFFIX = "_5.json.gz"
_ASIN = re.compile(r'"asin":\s*"([^"\\]*)"')


@dataclass(frozen=True)
class RawOptions:
    category: str | None = None
    min_len: int = 5
    max_len: int = 15
    seed: int = 0
    valid: float = 0.1
    test: float = 0.2


def review_files(folder: Path) -> list[Path]:
    return sorted(folder.glob(f"*{REVIEWS_SUFFIX}"))


def load_raw(folder: Path, options: RawOptions) -> DomainData:
    reviews = _reviews_file(folder, options.category)
    category = reviews.name[: -len(REVIEWS_SUFFIX)]
    sequences = _sequences(reviews, options.min_len, options.max_len)
    if not sequences:
        raise DataError(f"{reviews}: no reviewer has {options.min_len}–{options.max_len} reviews")
    asins = sorted({asin for events in sequences.values() for _, asin in events})
    titles = _titles(folder / f"meta_{category}.json.gz", set(asins))
    index = {asin: position for position, asin in enumerate(asins)}
    users = split_users(sorted(sequences), options.seed, valid=options.valid, test=options.test)

    def split(chosen: list[str]) -> list[UserSequence]:
        return [UserSequence(user=user, items=tuple(index[asin] for _, asin in sequences[user]),
                             times=tuple(time for time, _ in sequences[user]))
                for user in sorted(chosen)]

    # Some metadata records lack a title or hold NaN: those items get the placeholder.
    return DomainData(items=[Item(id=asin, title=product_title(titles.get(asin))) for asin in asins],
                      test=split(users.test), valid=split(users.valid), train=split(users.train))


def _reviews_file(folder: Path, category: str | None) -> Path:
    if category is not None:
        return folder / f"{category}{REVIEWS_SUFFIX}"
    found = review_files(folder)
    if len(found) > 1:
        names = ", ".join(path.name for path in found)
        raise DataError(f"{folder}: several review files ({names}); choose one with ?category=NAME")
    return found[0]


def _sequences(path: Path, min_len: int, max_len: int) -> dict[str, list[tuple[int, str]]]:
    """reviewerID → (review time, ASIN) by time, for users with an allowed number of reviews."""
    reviews: dict[str, list[tuple[int, str]]] = {}
    for lineno, record in iter_json_lines(path):
        user, asin, time = record.get("reviewerID"), record.get("asin"), record.get("unixReviewTime")
        if not isinstance(user, str) or not isinstance(asin, str) or type(time) is not int:
            raise DataError(f"{path}: line {lineno} needs string reviewerID and asin and an "
                            "integer unixReviewTime")
        reviews.setdefault(user, []).append((time, asin))
    return {user: sorted(events, key=lambda event: event[0])
            for user, events in reviews.items() if min_len <= len(events) <= max_len}


def _titles(path: Path, wanted: set[str]) -> dict[str, object]:
    """Titles of the wanted ASINs; the first record of an ASIN wins (the files repeat some)."""

    def needed(line: str) -> bool:
        match = _ASIN.search(line)
        return match is None or match.group(1) in wanted  # unparseable lines still get checked

    titles: dict[str, object] = {}
    for _, record in iter_json_lines(path, prefilter=needed):
        asin = record.get("asin")
        if asin in wanted and asin not in titles:
            titles[asin] = record.get("title")
    return titles
