"""The per-domain layout of the Recformer replication (``../shared/data/amazon18``).

``meta_data.json`` (ASIN → title), ``smap.json`` (ASIN → item index), ``umap.json``
(reviewerID → user index), ``train.json`` and ``test.json`` (user index → item
indices, oldest first).  The source has no usable validation split, so validation
users are carved out of ``train.json`` by a seeded hash of their reviewer ID.
"""

from __future__ import annotations

from pathlib import Path

from xcross_registry import DataError, DomainData, Item, UserSequence
from xcross_registry.plugin_helpers import read_json_object, split_users

from .titles import product_title

FILES = ("meta_data.json", "smap.json", "umap.json", "train.json", "test.json")


def is_recformer_folder(folder: Path) -> bool:
    return any((folder / name).exists() for name in FILES)


def load_recformer(folder: Path, seed: int, valid_fraction: float) -> DomainData:
    """Catalogue in smap index order (item ids are ASINs), users named by reviewerID."""
    titles = read_json_object(folder / "meta_data.json")
    items = _catalogue(folder / "smap.json", titles)
    reviewers = _reviewers(folder / "umap.json")
    train = _sequences(folder / "train.json", len(items), reviewers)
    test = _sequences(folder / "test.json", len(items), reviewers)
    chosen = set(split_users([seq.user for seq in train], seed, valid=valid_fraction, test=0).valid)
    return DomainData(items=items,
                      train=[seq for seq in train if seq.user not in chosen],
                      valid=[seq for seq in train if seq.user in chosen],
                      test=test)


def _catalogue(path: Path, titles: dict) -> list[Item]:
    smap = read_json_object(path)
    order: list[str | None] = [None] * len(smap)
    for asin, index in smap.items():
        if type(index) is not int or not 0 <= index < len(smap) or order[index] is not None:
            raise DataError(f"{path}: item {asin!r} has index {index!r}; indices must be "
                            f"0..{len(smap) - 1}, each used once")
        order[index] = asin
    # The real Sports meta_data.json holds NaN for three titles: they get the placeholder.
    return [Item(id=asin, title=product_title(titles.get(asin))) for asin in order]


def _reviewers(path: Path) -> dict[int, str]:
    umap = read_json_object(path)
    reviewers: dict[int, str] = {}
    for reviewer, index in umap.items():
        if type(index) is not int or index in reviewers:
            raise DataError(f"{path}: reviewer {reviewer!r} has index {index!r}; "
                            "indices must be distinct integers")
        reviewers[index] = reviewer
    return reviewers


def _sequences(path: Path, n_items: int, reviewers: dict[int, str]) -> list[UserSequence]:
    raw = read_json_object(path)
    if not raw:
        raise DataError(f"{path}: holds no users")
    sequences = []
    for key, items in raw.items():
        try:
            user = reviewers[int(key)]
        except (ValueError, KeyError):
            raise DataError(f"{path}: user index {key!r} is not in umap.json") from None
        if not isinstance(items, list) or not items or not all(type(i) is int for i in items):
            raise DataError(f"{path}: user {key} must map to a non-empty list of item indices")
        bad = next((i for i in items if not 0 <= i < n_items), None)
        if bad is not None:
            raise DataError(f"{path}: user {key} has item index {bad}, which smap.json does not define")
        sequences.append((int(key), UserSequence(user=user, items=tuple(items))))
    sequences.sort(key=lambda pair: pair[0])
    return [seq for _, seq in sequences]
