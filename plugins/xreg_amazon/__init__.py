"""The built-in ``amazon`` domain plugin: Amazon Review Data (2018) product domains.

Written only against the public plugin API, exactly as a third-party plugin would be.

The ``--data`` location is a folder, optionally followed by ``?key=value&...``
options.  The layout is detected from the folder's contents:

* **Recformer layout** (``meta_data.json``, ``smap.json``, ``umap.json``,
  ``train.json``, ``test.json``; the files of ``../shared/data/amazon18/<Domain>``).
  Options: ``seed`` (default 0) and ``valid`` (default 0.1), the fraction of
  ``train.json`` users moved to validation.  Example: ``data/Toys?valid=0.05``.
* **Raw 2018 download** (``<Category>_5.json.gz`` with ``meta_<Category>.json.gz``).
  Options: ``category`` (needed only when the folder holds several review files),
  ``min_len`` / ``max_len`` (default 5 / 15: users with other review counts are
  dropped), ``seed`` (0), ``test`` (0.2, the fraction of all users held out for
  testing) and ``valid`` (0.1, the fraction of the remaining users moved to
  validation, as in the Recformer layout).
  Example: ``downloads?category=Toys_and_Games&max_len=20``.

Users are assigned to splits by a hash of ``seed`` and their reviewer ID, so splits
are reproducible on any machine and library version.  Split strategies
(``add-domain --split``): both layouts give whole sequences, so ``user`` (the default)
and ``leave-one-out`` work on either; only the raw download has review times, so
``temporal`` needs it (the Recformer files are refused with one line).  Any problem with the files
raises :class:`~xcross_registry.errors.DataError` naming the file.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from xcross_registry import DataError, DomainData, DomainType, PromptTemplate, hookimpl
from xcross_registry.plugin_helpers import fraction, parse_location

from .raw import REVIEWS_SUFFIX, RawOptions, load_raw, review_files
from .recformer import FILES as RECFORMER_FILES
from .recformer import is_recformer_folder, load_recformer

TEMPLATE = PromptTemplate(
    name="amazon",
    version=1,
    item="{title}",
    separator="; ",
    cross="Previously bought: {history}. Candidate product: {candidate}",
    query="Previously bought: {history}",
    document="{candidate}",
    description="Product titles, oldest purchase first, candidate last.",
)

# Every option of either layout, with its type; each layout accepts a subset.
OPTIONS = {"seed": int, "min_len": int, "max_len": int, "valid": fraction, "test": fraction,
           "category": str}


def load(location: str) -> DomainData:
    """Load a domain from ``FOLDER[?key=value&...]`` (see the module docstring)."""
    parsed = parse_location(location, OPTIONS)
    folder, options = parsed.folder, parsed.options
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder")
    if is_recformer_folder(folder):
        allowed = {"seed", "valid"}
        _check_options(folder, options, allowed)
        return load_recformer(folder, seed=options.get("seed", 0),
                              valid_fraction=options.get("valid", 0.1))
    if review_files(folder) or "category" in options:
        _check_options(folder, options, {field.name for field in fields(RawOptions)})
        raw = RawOptions(**options)
        if raw.min_len < 1 or raw.max_len < raw.min_len:
            raise DataError(f"{location}: need 1 <= min_len <= max_len, got {raw.min_len} and {raw.max_len}")
        return load_raw(folder, raw)
    raise DataError(f"{folder}: no Amazon data found; expected {', '.join(RECFORMER_FILES)} "
                    f"or <Category>{REVIEWS_SUFFIX} with meta_<Category>.json.gz")


def _check_options(folder: Path, options: dict, allowed: set[str]) -> None:
    extra = sorted(set(options) - allowed)
    if extra:
        raise DataError(f"{folder}: option(s) {', '.join(extra)} do not apply to this folder's "
                        f"layout (allowed: {', '.join(sorted(allowed))})")


@hookimpl
def register_domains(register) -> None:
    register(DomainType(
        name="amazon",
        load=load,
        templates=[TEMPLATE],
        description="Amazon Review Data (2018): a Recformer-layout domain folder or a raw "
                    "<Category>_5.json.gz + meta_<Category>.json.gz download.",
    ))
