"""Composition methods: how a composition turns its frozen source adapters into one
encoder, as a table of classes (``xreg compose --method NAME``).

A method is one class (:class:`CompositionMethod`, see :mod:`.interface`); the composer
asks it for an encoder over the base model and the sources, for its settings as JSON and
back, optionally to fit its settings on the target's validation users before training,
and after training for a record of what the trained parts do.  Everything else
(checking the sources, the scoring mode, the head, training, storing, the lineage) is
the composer's and the same for every method.  Built in:

* ``xcross`` (:mod:`.xcross`): the integrated multi-stream encoder, the product;
* the static merges of PEFT's ``add_weighted_adapter`` (:mod:`.peft_merges`):
  ``linear-merge``, ``ties``, ``dare-linear``, ``dare-ties``, ``svd``;
* ``learned-merge`` (:mod:`.learned_merge`): merge weights trained by gradient;
* ``lorahub`` (:mod:`.lorahub`): merge weights found by a gradient-free search;
* ``arrow`` (:mod:`.arrow`): PEFT's training-free per-token routing among the sources.

A new method is a class registered with :func:`register_composition_method`; no other
module changes.  Torch-free at import: listing commands name methods and read their
flags.
"""

from __future__ import annotations

from ..errors import ValidationError
from ..named_tables import add_named_class
from .arrow import ArrowMethod
from .interface import CompositionMethod, FitContext, SourceAdapter
from .learned_merge import LearnedMergeMethod
from .lorahub import LoraHubMethod
from .peft_merges import STATIC_MERGES, MergeSettings
from .xcross import XCrossMethod

__all__ = ["COMPOSITION_METHODS", "CompositionMethod", "FitContext", "MergeSettings", "SourceAdapter",
           "composition_method", "register_composition_method"]

COMPOSITION_METHODS: dict[str, type[CompositionMethod]] = {}


def register_composition_method(cls: type[CompositionMethod]) -> type[CompositionMethod]:
    """Add ``cls`` to the table under ``cls.name`` (usable as a class decorator); a
    :class:`CompositionMethod` subclass has every method it needs."""
    for attribute in ("name", "subject_kind", "default_suffix", "has_integrators", "build_encoder",
                      "settings", "settings_to_json", "settings_from_json", "validates_start", "fit",
                      "after_training"):
        if not hasattr(cls, attribute):
            raise ValidationError(f"composition method {cls.__name__} has no {attribute!r}")
    return add_named_class(COMPOSITION_METHODS, cls, "composition method")


def composition_method(name: str) -> CompositionMethod:
    """An instance of the method called ``name``."""
    try:
        return COMPOSITION_METHODS[name]()
    except KeyError:
        raise ValidationError(f"unknown composition method {name!r}; known: "
                              f"{', '.join(COMPOSITION_METHODS)}") from None


for _built_in in (XCrossMethod, *STATIC_MERGES, LearnedMergeMethod, LoraHubMethod, ArrowMethod):
    register_composition_method(_built_in)
