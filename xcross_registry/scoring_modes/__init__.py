"""Scoring modes: the table of the ways a scorer can score, by the name a scorer stores.

A mode is one class (:class:`ScoringMode`, see :mod:`.interface`); the table maps its
name, as stored in ``ScorerConfig.mode`` and in the registry, to the class.  The
built-ins, :class:`~.cross.CrossMode` and :class:`~.dual.DualMode`, are registered below
exactly as a third party registers its own::

    from xcross_registry.scoring_modes import ScoringMode, register_scoring_mode

    @register_scoring_mode
    class BilinearMode(ScoringMode):
        name = "bilinear"
        ...

Nothing outside this package compares a mode's name with a string: code asks the
mode object (``scorer.mode``) or its capabilities (``ranks_catalogue``,
``shares_negatives``).  Importing this package imports no torch, so registry commands
and argument checks can read the table and the capabilities at no start-up cost.
"""

from __future__ import annotations

from ..errors import ValidationError
from ..named_tables import add_named_class
from .cross import CrossMode
from .dual import DualMode
from .interface import ScoringMode

__all__ = ["SCORING_MODES", "ScoringMode", "catalogue_rankers", "register_scoring_mode",
           "require_catalogue_ranker", "scoring_mode"]

SCORING_MODES: dict[str, type[ScoringMode]] = {}


def register_scoring_mode(cls: type[ScoringMode]) -> type[ScoringMode]:
    """Add a mode class to the table under its ``name``; usable as a class decorator.

    A name is taken once: a second class under the same name would silently change what
    stored scorers of that name mean, so it is refused."""
    if not (isinstance(cls, type) and issubclass(cls, ScoringMode)):
        raise ValidationError(f"a scoring mode must be a ScoringMode subclass, not {cls!r}")
    return add_named_class(SCORING_MODES, cls, "scoring mode")


def scoring_mode(name: str) -> ScoringMode:
    """The mode registered as ``name`` (a fresh instance; modes hold no state)."""
    try:
        return SCORING_MODES[name]()
    except (KeyError, TypeError):  # TypeError: an unhashable name from a damaged config
        raise ValidationError(f"unknown scoring mode {name!r}; known: {', '.join(SCORING_MODES)}") from None


def catalogue_rankers() -> list[str]:
    """The names of the modes that can rank a whole catalogue."""
    return [name for name, cls in SCORING_MODES.items() if cls.ranks_catalogue]


def require_catalogue_ranker(subject_name: str, mode: str | None, need: str, hint: str = "") -> None:
    """Refuse ``need`` (e.g. "whole-catalogue ranking") for a model whose mode cannot rank
    a catalogue.

    Called on a registry record before loading, where a mode the record does not state
    (an imported adapter) or one not registered in this process passes, and again on
    the loaded model, whose mode is then known."""
    cls = SCORING_MODES.get(mode) if mode is not None else None
    if cls is not None and not cls.ranks_catalogue:
        raise ValidationError(f"{need} needs a {' or '.join(catalogue_rankers())} model; "
                              f"{subject_name} is a {mode} model{hint}")


register_scoring_mode(CrossMode)
register_scoring_mode(DualMode)
