"""Static merges: the sources' LoRA adapters merged into one frozen adapter by PEFT's
``add_weighted_adapter``; only the scorer head (and the popularity prior) trains.

These are what a team holding several adapters would try first instead of X-Cross, so
leaderboards list them as baselines.  Each method is one small class naming PEFT's
``combination_type`` and the settings that apply to it:

* ``linear-merge``: the weighted sum of the sources' updates ΔW_m = s_m·B_m·A_m, exactly
  (PEFT's ``cat``: the factors are stacked, so the rank is the sum of the ranks);
* ``ties``: TIES-merging (trim each update to its ``density`` largest entries, elect a
  sign per entry by ``majority_sign_method``, average the entries that agree);
* ``dare-linear`` / ``dare-ties``: DARE (drop entries at random with probability
  1 − ``density``, rescale the rest by 1/``density``), then a weighted sum or TIES;
* ``svd``: the weighted sum of the full updates, truncated by SVD to ``svd_rank``.

As PEFT implements them for LoRA, ``ties`` and the ``dare-*`` methods act on the A and B
factors separately (each weighted by √(weight·scaling)), ``svd`` on the full updates.
Weights default to an average (1/n each) for the summing merges, and to 1 for the
TIES-based ones, whose sign-agreeing mean already averages.  DARE draws its drop mask
from ``seed`` in a forked RNG, so rebuilding a stored composition draws the same mask.

Torch and peft are imported when an encoder is built.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

from ..errors import ModelError, ValidationError, refuse_unknown_fields
from .interface import CompositionMethod

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from .interface import SourceAdapter

SIGN_METHODS = ("total", "frequency")


@dataclass
class MergeSettings:
    """Settings of a static merge; a method refuses the ones that do not apply to it.

    Attributes:
        weights: one weight per source, in source order (None: the method's default).
        density: share of each update's entries kept (TIES trims, DARE drops at random).
        majority_sign_method: how TIES elects a sign: ``total`` (sum of values) or
            ``frequency`` (count of signs).
        svd_rank: rank of the merged adapter (``svd``; None: the largest source rank).
        seed: seed of DARE's random drop mask.
    """

    weights: list[float] | None = None
    density: float | None = None
    majority_sign_method: str | None = None
    svd_rank: int | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.weights is not None:
            if not isinstance(self.weights, (list, tuple)) or not self.weights or not all(
                    isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w)
                    for w in self.weights):
                raise ValidationError(f"merge weights must be a non-empty list of finite numbers, "
                                      f"got {self.weights!r}")
            self.weights = [float(w) for w in self.weights]
        if self.density is not None and (isinstance(self.density, bool) or not isinstance(
                self.density, (int, float)) or not 0.0 < self.density <= 1.0):
            raise ValidationError(f"merge density must be in (0, 1], got {self.density!r}")
        if self.majority_sign_method is not None and self.majority_sign_method not in SIGN_METHODS:
            raise ValidationError(f"majority_sign_method must be one of {', '.join(SIGN_METHODS)}, "
                                  f"got {self.majority_sign_method!r}")
        for name in ("svd_rank", "seed"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0
                                      or (name == "svd_rank" and value < 1)):
                raise ValidationError(f"merge setting {name!r} must be a "
                                      f"{'positive' if name == 'svd_rank' else 'non-negative'} integer, "
                                      f"got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if value is not None}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "MergeSettings":
        return cls(**refuse_unknown_fields(cls, dict(values), "merge setting"))


class PeftMergeMethod(CompositionMethod):
    """A static merge through ``PeftModel.add_weighted_adapter``, whose settings are a
    :class:`MergeSettings`.  Subclasses name the PEFT ``combination_type``, the settings
    that apply (``applies``) with their defaults, and how sources are weighted."""

    name: ClassVar[str]
    combination_type: ClassVar[str]
    applies: ClassVar[dict[str, Any]] = {}  # setting -> default (weights and seed aside)
    averages: ClassVar[bool] = True  # default weights 1/n (True) or 1 (False)
    default_suffix: ClassVar[str]  # default composition name: TARGET-SUFFIX
    subject_kind = "baseline"
    has_integrators = False

    def settings(self, given: Any | None) -> MergeSettings:
        """The settings with this method's defaults filled in; settings that do not apply
        to it are refused by name."""
        if given is None:
            given = MergeSettings()
        elif isinstance(given, dict):
            given = MergeSettings.from_dict(given)
        elif not isinstance(given, MergeSettings):
            raise ValidationError(f"{self.name} settings must be MergeSettings or a dict, "
                                  f"not {type(given).__name__}")
        allowed = {"weights", *self.applies, *(("seed",) if self.name.startswith("dare") else ())}
        extra = [f.name for f in fields(given) if getattr(given, f.name) is not None and f.name not in allowed]
        if extra:
            raise ValidationError(f"{self.name} does not take {', '.join(extra)} "
                                  f"(its settings: {', '.join(sorted(allowed))})")
        filled = {key: default for key, default in self.applies.items() if getattr(given, key) is None}
        if "seed" in allowed and given.seed is None:
            filled["seed"] = 0
        return MergeSettings(**{**given.to_dict(), **filled})

    def settings_to_json(self, settings: MergeSettings) -> dict[str, Any] | None:
        return settings.to_dict() or None  # a default linear merge stores nothing, as it always did

    def settings_from_json(self, stored: dict[str, Any] | None) -> MergeSettings:
        return self.settings(MergeSettings.from_dict(stored or {}))

    def weights(self, settings: MergeSettings, count: int) -> list[float]:
        """One weight per source: the stored ones, or the method's equal weights."""
        if settings.weights is None:
            return [1.0 / count if self.averages else 1.0] * count
        if len(settings.weights) != count:
            raise ValidationError(f"{self.name} has {len(settings.weights)} weights for {count} sources")
        return list(settings.weights)

    def build_encoder(self, model: "nn.Module", sources: Sequence["SourceAdapter"],
                      settings: MergeSettings) -> "nn.Module":
        """A PEFT model whose only adapter is the sources' merge, frozen."""
        import torch

        from ..scorer import LoraEncoder

        peft_model, names = load_sources(model, sources)
        options = {key: getattr(settings, key) for key in self.applies}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(settings.seed or 0)
            try:
                peft_model.add_weighted_adapter(names, self.weights(settings, len(sources)), "merged",
                                                combination_type=self.combination_type, **options)
            except ValueError as exc:  # e.g. ties and dare need sources of one rank
                raise ModelError(f"{self.name} cannot merge these sources: "
                                 f"{str(exc).strip().splitlines()[0]}") from None
        peft_model.set_adapter("merged")
        for name in names:
            peft_model.delete_adapter(name)
        peft_model.requires_grad_(False)
        return LoraEncoder(peft_model)


def load_sources(model: "nn.Module", sources: Sequence["SourceAdapter"]):
    """``model`` as a PEFT model holding every source adapter (``source0`` …), and their names."""
    from peft import PeftModel

    peft_model = PeftModel.from_pretrained(model, str(sources[0].folder), adapter_name="source0")
    for i, source in enumerate(sources[1:], 1):
        peft_model.load_adapter(str(source.folder), adapter_name=f"source{i}")
    return peft_model, [f"source{i}" for i in range(len(sources))]


class LinearMergeMethod(PeftMergeMethod):
    """``--method linear-merge``: the weighted sum of the updates, exact at any ranks
    (PEFT's ``cat``; its ``linear`` averages A and B separately, which is not the average
    of the updates)."""

    name = "linear-merge"
    combination_type = "cat"
    default_suffix = "merge"


class TiesMethod(PeftMergeMethod):
    """``--method ties``: TIES-merging of the factors."""

    name = "ties"
    default_suffix = "ties"
    combination_type = "ties"
    applies = {"density": 0.5, "majority_sign_method": "total"}
    averages = False


class DareLinearMethod(PeftMergeMethod):
    """``--method dare-linear``: DARE drop-and-rescale, then the weighted sum."""

    name = "dare-linear"
    default_suffix = "dare-linear"
    combination_type = "dare_linear"
    applies = {"density": 0.5}


class DareTiesMethod(PeftMergeMethod):
    """``--method dare-ties``: DARE drop-and-rescale, then TIES."""

    name = "dare-ties"
    default_suffix = "dare-ties"
    combination_type = "dare_ties"
    applies = {"density": 0.5, "majority_sign_method": "total"}
    averages = False


class SvdMethod(PeftMergeMethod):
    """``--method svd``: the weighted sum of the full updates, truncated by SVD."""

    name = "svd"
    default_suffix = "svd"
    combination_type = "svd"
    applies = {"svd_rank": None}


STATIC_MERGES = (LinearMergeMethod, TiesMethod, DareLinearMethod, DareTiesMethod, SvdMethod)
