"""Composition methods: how a composition turns its frozen source adapters into one
encoder, as a table of classes (``xreg compose --method NAME``).

A method is one class (:class:`CompositionMethod`); the composer asks it for an encoder
over the base model and the sources, for its settings as JSON and back, and after
training for a record of what the trained parts do.  Everything else (checking the
sources, the scoring mode, the head, training, storing, the lineage) is the composer's
and the same for every method.  The built-ins live beside what they compose with: X-Cross
next to the ``xcross`` package (:mod:`xcross_registry.xcross.method`), the linear merge
here (:mod:`.linear_merge`).  A new method is a class registered with
:func:`register_composition_method`; no other module changes.

Torch-free at import (listing commands name methods and read their flags), which is why
the interface is a :class:`~typing.Protocol`: the built-ins implement it without
importing this module, so the table imports them and nothing imports back.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, Sequence

from ..errors import ValidationError
from ..xcross.method import XCrossMethod
from .linear_merge import LinearMergeMethod

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from ..data import DomainData
    from ..scorer import Scorer
    from ..templates import PromptTemplate


@dataclass(frozen=True)
class SourceAdapter:
    """A source adapter as a method sees it: its label and its stored PEFT folder,
    written out and digest-checked (``adapter_config.json``, ``adapter_model.safetensors``,
    and the scorer head files when it has them)."""

    label: str
    folder: Path


class CompositionMethod(Protocol):
    """What the composer needs from a composition method.

    Subclass it for the defaults (no settings, nothing recorded after training) or
    implement it structurally, as the built-ins do."""

    name: ClassVar[str]  # the --method value, stored with the composition
    subject_kind: ClassVar[str]  # what leaderboards call it: "composition" or "baseline"
    default_suffix: ClassVar[str]  # default composition name: TARGET-SUFFIX
    has_integrators: ClassVar[bool]  # it trains integrators whose weights can be shown

    def settings(self, given: Any | None) -> Any | None:
        """The method's settings from what the caller gave (None: the defaults)."""
        return None

    def settings_to_json(self, settings: Any | None) -> dict[str, Any] | None:
        """Settings as stored with the composition (None: nothing to store)."""
        return None

    def settings_from_json(self, stored: dict[str, Any] | None) -> Any | None:
        return None

    def build_encoder(self, model: "nn.Module", sources: Sequence[SourceAdapter],
                      settings: Any | None) -> "nn.Module":
        """The scorer's encoder over ``model`` (a freshly loaded base) and ``sources``:
        a module mapping ``(input_ids, attention_mask)`` to last hidden states
        ``[B, T, H]``.  Source weights stay frozen; whatever requires grad trains."""
        ...

    def after_training(self, scorer: "Scorer", data: "DomainData", template: "PromptTemplate",
                       name: str, sources: Sequence[str]) -> dict[str, Any] | None:
        """A JSON record of what the trained parts do, stored with the composition (as
        ``integration``) so showing it needs no model; None when there is nothing to say."""
        return None


COMPOSITION_METHODS: dict[str, type[CompositionMethod]] = {}


def register_composition_method(cls: type[CompositionMethod]) -> type[CompositionMethod]:
    """Add ``cls`` to the table under ``cls.name`` (usable as a class decorator)."""
    for attribute in ("name", "subject_kind", "default_suffix", "has_integrators", "build_encoder"):
        if not hasattr(cls, attribute):
            raise ValidationError(f"composition method {cls.__name__} has no {attribute!r}")
    if cls.name in COMPOSITION_METHODS:
        raise ValidationError(f"composition method {cls.name!r} is already registered")
    COMPOSITION_METHODS[cls.name] = cls
    return cls


def composition_method(name: str) -> CompositionMethod:
    """An instance of the method called ``name``."""
    try:
        return COMPOSITION_METHODS[name]()
    except KeyError:
        raise ValidationError(f"unknown composition method {name!r}; known: "
                              f"{', '.join(COMPOSITION_METHODS)}") from None


for _built_in in (XCrossMethod, LinearMergeMethod):
    register_composition_method(_built_in)
