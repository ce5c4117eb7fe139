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
from typing import Callable, Sequence

from .templates import PromptTemplate

SPLITS = ("train", "valid", "test")
MISSING_TITLE = "(untitled item)"


@dataclass(frozen=True)
class Item:
    """One catalogue entry: the source's id and the text a prompt shows for it."""

    id: str
    title: str
    fields: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Real catalogues have missing or NaN titles; a prompt must still render.
        title = self.title
        if not isinstance(title, str) or not title.strip() or title.strip().lower() == "nan":
            object.__setattr__(self, "title", MISSING_TITLE)


@dataclass(frozen=True)
class UserSequence:
    """A user's items, oldest first, as indices into the catalogue.

    The last item is the one to predict; the rest is the history."""

    user: str
    items: tuple[int, ...]

    @property
    def history(self) -> tuple[int, ...]:
        return self.items[:-1]

    @property
    def target(self) -> int:
        return self.items[-1]


@dataclass
class DomainData:
    """Catalogue plus train / valid / test users of one domain."""

    items: list[Item]
    train: list[UserSequence]
    valid: list[UserSequence]
    test: list[UserSequence]

    def split(self, name: str) -> list[UserSequence]:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; expected one of {', '.join(SPLITS)}")
        return getattr(self, name)

    def fingerprint(self) -> str:
        """sha256 over a canonical JSON form of catalogue and splits."""
        digest = hashlib.sha256()
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
        """What ``xreg add-domain`` and ``xreg show`` print about the data."""
        lengths = [len(seq.items) for split in SPLITS for seq in self.split(split)]
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
    """

    name: str
    load: Callable[[str], DomainData]
    templates: Sequence[PromptTemplate]
    description: str = ""

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

    def template_for(self, key: str | None) -> PromptTemplate:
        """The template a model was trained with (``name@version``) when this domain type
        offers it, else its default: a model scores another domain in that domain's words."""
        for template in self.templates:
            if template.key == key:
                return template
        return self.default_template
