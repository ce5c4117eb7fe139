"""The built-in ``user-item`` domain plugin: ID-only interaction logs, one ``user item``
pair a line (the format of SASRec's preprocessed files, e.g.
``../shared/data/sasrec-video/Video.txt``).

Written only against the public plugin API, exactly as a third-party plugin would be.

Each line holds a user id and an item id separated by white space; a user's lines are
in time order (the file's order is the order of their sequence) but users may be
interleaved.  Blank lines are skipped.  There are no titles: an item's text is
``item ID``, so language-model scorers run (and learn only from co-occurrence of those
tokens), while ID models (SASRec, item-kNN, Markov) are what such data is for.

Location: ``FILE[?key=value&...]``.  Options:

==========  =======  ===================================================
``min_len`` 2        users with fewer interactions are dropped (a
                     sequence needs a history and a target; SASRec's
                     code also leaves such users out of evaluation)
``seed``    0        seed of the user-disjoint split (the ``user``
                     strategy; ``leave-one-out`` ignores it)
``valid``   0.1      share of the users held out for validation
``test``    0.2      share of the users held out for testing
==========  =======  ===================================================

The catalogue is every item id of the file, in numeric order when all ids are
integers (as in SASRec's files) and in text order otherwise.  Users are split by a
seeded hash of their id (``plugin_helpers.split_users``).  With ``add-domain --split
leave-one-out`` every user's last item is the test target and the one before it the
validation target, the protocol of SASRec's paper.  No timestamps: ``temporal`` is
refused.
"""

from __future__ import annotations

from pathlib import Path

from xcross_registry import DataError, DomainData, DomainType, Item, PromptTemplate, UserSequence, hookimpl
from xcross_registry.plugin_helpers import fraction, non_negative_int, parse_location, split_users

TEMPLATE = PromptTemplate(
    name="user-item",
    version=1,
    item="item {title}",
    separator=", ",
    cross="Interacted with: {history}. Candidate: {candidate}",
    query="Interacted with: {history}",
    document="{candidate}",
    description="Item ids in order (the data has no titles).",
)

OPTIONS = {"min_len": non_negative_int, "seed": int, "valid": fraction, "test": fraction}


def read_interactions(path: Path) -> dict[str, list[str]]:
    """user → item ids in file order; one :class:`DataError` line naming the file and
    line for anything that is not ``user item``."""
    if not path.is_file():
        raise DataError(f"{path}: missing file")
    sequences: dict[str, list[str]] = {}
    try:
        with open(path, encoding="utf-8") as stream:
            for lineno, line in enumerate(stream, start=1):
                fields = line.split()
                if not fields:
                    continue
                if len(fields) != 2:
                    raise DataError(f"{path}: line {lineno} has {len(fields)} field(s); expected "
                                    f"'user item', got {line.strip()[:60]!r}")
                sequences.setdefault(fields[0], []).append(fields[1])
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 text ({error.reason})") from None
    if not sequences:
        raise DataError(f"{path}: file holds no interactions")
    return sequences


def _catalogue_order(ids: set[str]) -> list[str]:
    if all(item.isascii() and item.isdigit() for item in ids):
        return sorted(ids, key=int)
    return sorted(ids)


def load(location: str) -> DomainData:
    """Load ``FILE[?options]`` (see the module docstring)."""
    parsed = parse_location(location, OPTIONS)
    options = parsed.options
    min_len = max(2, options.get("min_len", 2))
    interactions = read_interactions(parsed.folder)
    catalogue = _catalogue_order({item for items in interactions.values() for item in items})
    index = {item: position for position, item in enumerate(catalogue)}
    kept = {user: items for user, items in interactions.items() if len(items) >= min_len}
    if not kept:
        raise DataError(f"{parsed.folder}: no user has {min_len} or more interactions")
    split = split_users(sorted(kept), options.get("seed", 0), valid=options.get("valid", 0.1),
                        test=options.get("test", 0.2))

    def sequences(users: list[str]) -> list[UserSequence]:
        return [UserSequence(user, tuple(index[item] for item in kept[user])) for user in sorted(users)]

    return DomainData(items=[Item(id=item, title=item) for item in catalogue],
                      train=sequences(split.train), valid=sequences(split.valid),
                      test=sequences(split.test))


@hookimpl
def register_domains(register) -> None:
    register(DomainType(name="user-item", load=load, templates=[TEMPLATE],
                        description="ID-only interaction logs, one 'user item' pair a line "
                                    "(SASRec's preprocessed files)."))
