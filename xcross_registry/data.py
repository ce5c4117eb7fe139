"""A domain's data: its item catalogue and its users' time-ordered sequences.

Plugins produce :class:`DomainData` from whatever files they read; everything after
that (training, candidates, evaluation) only sees this shape.  The content
fingerprint identifies the data exactly, so every adapter, composition and
evaluation row can say which data it was made from.
"""

from __future__ import annotations

import hashlib
import json
import statistics
from dataclasses import dataclass, field
from typing import Callable, NoReturn, Sequence

from .templates import PromptTemplate, template_problem

SPLITS = ("train", "valid", "test")
MISSING_TITLE = "(untitled item)"
DEFAULT_SPLIT_STRATEGY = "user"  # the loader's own user-disjoint splits (see splits.py)


@dataclass(frozen=True)
class Item:
    """One catalogue entry: the source's id and the text a prompt shows for it.

    A blank title (or the text ``nan`` that spreadsheets write for one) becomes
    :data:`MISSING_TITLE`, so a prompt still renders.  A title that is not a string at
    all is kept as given and refused by :func:`validate_domain_data`: silently turning
    ``None`` or a float NaN into text would hide a loader bug; a plugin whose source
    really lacks titles says so with :func:`xcross_registry.plugin_helpers.title_text`.
    """

    id: str
    title: str
    fields: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        title = self.title
        if isinstance(title, str) and (not title.strip() or title.strip().lower() == "nan"):
            object.__setattr__(self, "title", MISSING_TITLE)


@dataclass(frozen=True)
class UserSequence:
    """A user's items, oldest first, as indices into the catalogue.

    The last item is the one to predict; the rest is the history.  ``times``, when the
    source has them, holds each item's timestamp (any number, non-decreasing): the
    ``temporal`` split strategy cuts on them.  They are not part of the fingerprint:
    what they decide (which split an interaction lands in) is."""

    user: str
    items: tuple[int, ...]
    times: tuple[float, ...] | None = None

    @property
    def history(self) -> tuple[int, ...]:
        return self.items[:-1]

    @property
    def target(self) -> int:
        return self.items[-1]


@dataclass
class DomainData:
    """Catalogue plus train / valid / test users of one domain.

    ``split_strategy`` names how the splits were made (:mod:`xcross_registry.splits`):
    ``user`` for a loader's own user-disjoint splits, else the strategy (with its
    options) that re-split the loader's sequences."""

    items: list[Item]
    train: list[UserSequence]
    valid: list[UserSequence]
    test: list[UserSequence]
    split_strategy: str = DEFAULT_SPLIT_STRATEGY

    def split(self, name: str) -> list[UserSequence]:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; expected one of {', '.join(SPLITS)}")
        return getattr(self, name)

    def fingerprint(self) -> str:
        """sha256 over a canonical JSON form of catalogue and splits; a split strategy
        other than the default is hashed first, so data registered with the default
        keeps the fingerprint it had before strategies existed."""
        digest = hashlib.sha256()
        if self.split_strategy != DEFAULT_SPLIT_STRATEGY:
            digest.update(f"#split-strategy {self.split_strategy}\n".encode())
        for item in self.items:
            digest.update(json.dumps([item.id, item.title, sorted(item.fields.items())],
                                     ensure_ascii=False, separators=(",", ":")).encode())
            digest.update(b"\n")
        for split in SPLITS:
            digest.update(f"#{split}\n".encode())
            for seq in self.split(split):
                digest.update(json.dumps([seq.user, list(seq.items)], separators=(",", ":")).encode())
                digest.update(b"\n")
        return digest.hexdigest()

    def popularity(self) -> list[int]:
        """How often each item occurs in the training sequences (the popularity baseline)."""
        counts = [0] * len(self.items)
        for seq in self.train:
            for index in seq.items:
                counts[index] += 1
        return counts

    def summary(self) -> dict:
        """What ``xreg add-domain`` and ``xreg show`` print about the data.  Interactions
        and lengths count each user once, by their longest sequence: a split strategy such
        as leave-one-out puts one user's prefixes into several splits."""
        longest: dict[str, int] = {}
        for split in SPLITS:
            for seq in self.split(split):
                longest[seq.user] = max(longest.get(seq.user, 0), len(seq.items))
        lengths = list(longest.values())
        return {
            "items": len(self.items),
            "users": {split: len(self.split(split)) for split in SPLITS},
            "interactions": sum(lengths),
            "sequence_length": {
                "min": min(lengths, default=0),
                "max": max(lengths, default=0),
                "mean": round(statistics.fmean(lengths), 2) if lengths else 0.0,
                "median": statistics.median(lengths) if lengths else 0,
            },
        }


@dataclass(frozen=True)
class DomainType:
    """What a plugin registers: how to load a kind of domain, and how to prompt for it.

    ``load`` receives the ``--data`` location string given by the user and returns a
    :class:`DomainData`; it raises :class:`xcross_registry.errors.DataError` naming the
    file when the data is missing or malformed.  The first template is the default.

    ``locate`` turns the location the user typed into the one the registry stores and
    later passes to ``load`` again, from any working directory.  By default
    (``None``) the path part of ``PATH[?options]`` is made absolute when it exists
    (:func:`xcross_registry.plugin_helpers.absolute_location`); a plugin whose
    locations are not paths (the ``synthetic`` recipes) gives a function that keeps them.
    """

    name: str
    load: Callable[[str], DomainData]
    templates: Sequence[PromptTemplate]
    description: str = ""
    locate: Callable[[str], str] | None = None

    @property
    def default_template(self) -> PromptTemplate:
        return self.templates[0]

    def template(self, name: str | None = None) -> PromptTemplate:
        if name is None:
            return self.default_template
        for template in self.templates:
            if template.key == name or template.name == name:
                return template
        from .errors import NotFoundError

        known = ", ".join(t.key for t in self.templates)
        raise NotFoundError(f"domain type {self.name!r} has no prompt template {name!r} (known: {known})")

    def template_for(self, key: str | None, requested: str | None = None) -> PromptTemplate:
        """The template a model was trained with (``name@version``) when this domain type
        offers it, else its default: a model scores another domain in that domain's words.

        ``requested`` (``--template NAME``) overrides both; an unknown one is refused."""
        if requested is not None:
            return self.template(requested)
        for template in self.templates:
            if template.key == key:
                return template
        return self.default_template


def catalogue_digest(data: DomainData) -> str:
    """sha256 of the catalogue's item ids in order: what an ID model's rows mean.

    Scoring another catalogue with the same model would silently mix items up; splits
    may differ (a scored domain's test users are not the training users)."""
    digest = hashlib.sha256()
    for item in data.items:
        digest.update(item.id.encode())
        digest.update(b"\n")
    return digest.hexdigest()


def catalogue_keys(data: DomainData) -> dict[str, Item]:
    """Each item under its lower-cased title and id (the first item wins a shared title)."""
    by_key: dict[str, Item] = {}
    for item in data.items:
        by_key.setdefault(item.title.strip().lower(), item)
        by_key.setdefault(item.id.strip().lower(), item)
    return by_key


# Catalogues often cut titles (the Amazon files keep a title's first 8 words), so a
# full title that matches no item exactly matches the item whose whole title is its
# longest word prefix, if that prefix has at least this many words.
TITLE_PREFIX_MIN_WORDS = 4


def match_items(data: DomainData, texts: Sequence[str],
                keys: dict[str, Item] | None = None) -> list[Item]:
    """Catalogue items for titles or ids (any case; a title also by its cut form, see
    :data:`TITLE_PREFIX_MIN_WORDS`); text that matches nothing becomes a free item
    (``id`` empty).  ``keys``: :func:`catalogue_keys` of ``data``, when already built."""
    by_key = catalogue_keys(data) if keys is None else keys
    return [_match_item(by_key, text) for text in texts]


def _match_item(by_key: dict[str, Item], text: str) -> Item:
    key = text.strip().lower()
    if key in by_key:
        return by_key[key]
    words = key.split()
    for count in range(len(words) - 1, TITLE_PREFIX_MIN_WORDS - 1, -1):
        prefix = " ".join(words[:count])
        item = by_key.get(prefix)
        if item is not None and item.title.strip().lower() == prefix:
            return item
    return Item(id="", title=text.strip())


# ---- the data contract, checked on every loader's output ------------------------------

MIN_SEQUENCE_LENGTH = 2  # a history of at least one item, then the target
REQUIRED_SPLITS = ("train", "test")  # "valid" may be empty: training then keeps the last epoch


def validate_domain_type(domain_type: DomainType) -> None:
    """Refuse a domain type that cannot serve prompts: no templates, something else than
    templates, or a template that breaks a rule of :func:`~xcross_registry.templates.template_problem`
    (the message names the template, the part and the rule).

    Raises :class:`~xcross_registry.errors.PluginError` naming the domain type."""
    from .errors import PluginError

    where = f"plugin {domain_type.name!r}"
    if not callable(domain_type.load):
        raise PluginError(f"{where}: load is {type(domain_type.load).__name__}, not a function")
    templates = domain_type.templates
    if isinstance(templates, (str, PromptTemplate)) or not isinstance(templates, Sequence):
        raise PluginError(f"{where}: templates must be a list of PromptTemplate, "
                          f"got {type(templates).__name__}")
    if not templates:
        raise PluginError(f"{where}: registers no prompt template; give at least one PromptTemplate")
    seen: set[str] = set()
    for position, template in enumerate(templates):
        if not isinstance(template, PromptTemplate):
            raise PluginError(f"{where}: template {position} is a {type(template).__name__}, "
                              "not a PromptTemplate")
        problem = template_problem(template)
        if problem is not None:
            raise PluginError(f"{where}: template {template.key}, {problem}")
        if template.key in seen:
            raise PluginError(f"{where}: two templates are called {template.key}")
        seen.add(template.key)


def validate_domain_data(data: DomainData, domain_type: DomainType, location: str, *,
                         disjoint_users: bool = True) -> None:
    """Check a loader's output against the data contract (docs/plugins.md), so that a
    broken loader fails at ``add-domain`` with one line instead of deep inside training.

    Checks: items are :class:`Item` with string ids, titles and fields, ids unique as
    ``--history`` matches them (ignoring case and surrounding spaces); every split is a
    list of :class:`UserSequence`; ``train`` and ``test`` have users; each sequence has
    at least :data:`MIN_SEQUENCE_LENGTH` integer indices into ``items`` and, when it has
    ``times``, one non-decreasing number per item; no user is in two splits (unless
    ``disjoint_users`` is False: a split strategy such as leave-one-out puts every user in
    several) or twice in one; and every template renders.  Raises
    :class:`~xcross_registry.errors.DataError` naming the plugin, the split and the
    offending user or item (:class:`~xcross_registry.errors.PluginError` for a
    template that does not render).
    """
    from .errors import DataError

    where = f"plugin {domain_type.name!r} loaded {location} but"

    def fail(problem: str) -> NoReturn:
        raise DataError(f"{where} {problem}")

    if not isinstance(data.items, list) or not data.items:
        fail("the catalogue (items) is empty" if isinstance(data.items, list)
             else f"items is a {type(data.items).__name__}, not a list")
    ids: dict[str, int] = {}
    for index, item in enumerate(data.items):
        if not isinstance(item, Item):
            fail(f"item {index} is a {type(item).__name__}, not an Item")
        if not isinstance(item.id, str):
            fail(f"item {index} has an id of type {type(item.id).__name__}, not a string")
        if not item.id.strip():
            fail(f"item {index} has an empty id")
        key = item.id.strip().lower()
        if key in ids:
            fail(f"items {ids[key]} and {index} both have the id {item.id!r}"
                 + ("" if data.items[ids[key]].id == item.id else
                    f" (as {data.items[ids[key]].id!r}: ids are matched ignoring case and spaces)")
                 + "; item ids must be unique, or --history and --candidates cannot name each item")
        ids[key] = index
        if not isinstance(item.title, str):
            fail(f"item {index} ({item.id!r}) has a title of type {type(item.title).__name__} "
                 f"({item.title!r}), not a string")
        if not isinstance(item.fields, dict):
            fail(f"item {index} ({item.id!r}) has fields of type {type(item.fields).__name__}, "
                 "not a dict")
        for name, value in item.fields.items():
            if not isinstance(name, str) or not isinstance(value, str):
                fail(f"item {index} ({item.id!r}) has field {name!r} = {value!r} "
                     f"({type(name).__name__} -> {type(value).__name__}); fields map strings "
                     "to strings")
    n_items = len(data.items)
    seen: dict[str, str] = {}
    for split in SPLITS:
        sequences = getattr(data, split)
        if not isinstance(sequences, list):
            fail(f"split {split!r} is a {type(sequences).__name__}, not a list")
        if not sequences and split in REQUIRED_SPLITS:
            fail(f"split {split!r} has no users")
        in_split: set[str] = set()
        for position, seq in enumerate(sequences):
            if not isinstance(seq, UserSequence):
                fail(f"split {split!r} entry {position} is a {type(seq).__name__}, "
                     "not a UserSequence")
            if not isinstance(seq.user, str) or not seq.user:
                fail(f"split {split!r} entry {position} has user {seq.user!r}; "
                     "users must be non-empty strings")
            user = f"split {split!r}, user {seq.user!r}"
            if seq.user in in_split:
                fail(f"{user} appears twice")
            in_split.add(seq.user)
            if disjoint_users and seq.user in seen:
                fail(f"{user} is also in split {seen[seq.user]!r}; splits must be disjoint by user")
            seen[seq.user] = split
            if not isinstance(seq.items, (tuple, list)):
                fail(f"{user}: items is a {type(seq.items).__name__}, not a tuple of indices")
            if len(seq.items) < MIN_SEQUENCE_LENGTH:
                fail(f"{user} has {len(seq.items)} item(s); a sequence needs at least "
                     f"{MIN_SEQUENCE_LENGTH} (a history and the target)")
            for index in seq.items:
                if type(index) is not int:
                    fail(f"{user}: item index {index!r} is a {type(index).__name__}, not an int")
                if not 0 <= index < n_items:
                    fail(f"{user}: item index {index} is outside the catalogue of {n_items} "
                         f"items (0..{n_items - 1})")
            if seq.times is not None:
                _check_times(seq, fail, user)
    for template in domain_type.templates:
        render_prompts(domain_type, template, data, "test", data.test[0])


def _check_times(seq: UserSequence, fail: Callable[[str], NoReturn], user: str) -> None:
    """A sequence's timestamps: a tuple of one finite number per item, oldest first."""
    times = seq.times
    if not isinstance(times, (tuple, list)) or len(times) != len(seq.items):
        fail(f"{user}: times must be a tuple with one timestamp per item "
             f"({len(seq.items)}), got {type(times).__name__}"
             + (f" of {len(times)}" if isinstance(times, (tuple, list)) else ""))
    for position, value in enumerate(times):
        if type(value) not in (int, float) or value != value or value in (float("inf"), float("-inf")):
            fail(f"{user}: timestamp {value!r} is not a finite number")
        if position and value < times[position - 1]:
            fail(f"{user}: timestamps go back in time ({times[position - 1]!r} then {value!r}); "
                 "a sequence is oldest first")


def render_prompts(domain_type: DomainType, template: PromptTemplate, data: DomainData,
                   split: str, seq: UserSequence) -> tuple[str, str, str]:
    """The cross, query and document prompts ``template`` makes for ``seq`` (its
    history and target), or a :class:`~xcross_registry.errors.PluginError` naming the
    template, split and user when the layout cannot render."""
    from .errors import PluginError

    history, target = [data.items[i] for i in seq.history], data.items[seq.target]
    try:
        return (template.render(history, target), template.render_query(history),
                template.render_document(target))
    except Exception as exc:  # a layout with an unknown field or without {candidate}
        raise PluginError(f"plugin {domain_type.name!r}: template {template.key} cannot render "
                          f"split {split!r}, user {seq.user!r} ({type(exc).__name__}: {exc})") from None
