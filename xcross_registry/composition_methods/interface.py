"""What a composition method is: the base class every method implements, and what the
composer hands it.  Torch-free: the methods' table is read by listing commands."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

from ..errors import ValidationError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
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


@dataclass(frozen=True)
class FitContext:
    """What a method may look at before training (see :meth:`CompositionMethod.fit`):
    the fresh composed ``scorer``, the target's data and prompt, and the validation
    users the run is allowed to see (``users``, with their candidate matrix, the
    positive in column 0)."""

    scorer: "Scorer"
    data: "DomainData"
    template: "PromptTemplate"
    users: list[int]
    candidates: "np.ndarray"
    seed: int


class CompositionMethod:
    """What the composer needs from a composition method (subclass it; the defaults say
    "no settings, nothing fitted, nothing recorded", or with ``settings_class`` "these
    settings, stored as JSON")."""

    name: ClassVar[str]  # the --method value, stored with the composition
    subject_kind: ClassVar[str]  # what leaderboards call it: "composition" or "baseline"
    default_suffix: ClassVar[str]  # default composition name: TARGET-SUFFIX
    has_integrators: ClassVar[bool]  # it trains integrators whose weights can be shown
    # A dataclass of the settings with a strict ``from_dict`` (None: no settings).
    settings_class: ClassVar[type | None] = None

    def settings(self, given: Any | None) -> Any | None:
        """The method's settings from what the caller gave (None: the defaults; a dict of
        the settings' fields, as ``xreg compose --set KEY=VALUE`` gives them)."""
        cls = self.settings_class
        if cls is None:
            return None
        if given is None:
            return cls()
        if isinstance(given, dict):
            return cls.from_dict(given)
        if not isinstance(given, cls):
            raise ValidationError(f"{self.name} settings must be {cls.__name__} or a dict, "
                                  f"not {type(given).__name__}")
        return given

    def settings_to_json(self, settings: Any | None) -> dict[str, Any] | None:
        """Settings as stored with the composition (None: nothing to store)."""
        return None if settings is None else asdict(settings)

    def settings_from_json(self, stored: dict[str, Any] | None) -> Any | None:
        return self.settings(stored or {}) if self.settings_class is not None else None

    def build_encoder(self, model: "nn.Module", sources: Sequence[SourceAdapter],
                      settings: Any | None) -> "nn.Module":
        """The scorer's encoder over ``model`` (a freshly loaded base) and ``sources``:
        a module mapping ``(input_ids, attention_mask)`` to last hidden states
        ``[B, T, H]``.  Source weights stay frozen; whatever requires grad trains."""
        raise NotImplementedError

    def validates_start(self, settings: Any | None) -> bool:
        """Whether the untrained composition is a model worth keeping, so training
        validates it first and keeps it unless an epoch beats it (``validate_start``)."""
        return False

    def fit(self, context: FitContext, settings: Any | None) -> tuple[Any | None, dict[str, Any] | None]:
        """Settings chosen on the target's allowed validation users before training
        (LoraHub's weight search), applied to ``context.scorer`` in place, and a JSON
        record of how they were chosen (stored as the composition's ``search``)."""
        return settings, None

    def after_training(self, scorer: "Scorer", data: "DomainData", template: "PromptTemplate",
                       name: str, sources: Sequence[str]) -> dict[str, Any] | None:
        """A JSON record of what the trained parts do, stored with the composition (as
        ``integration``) so showing it needs no model; None when there is nothing to say."""
        return None
