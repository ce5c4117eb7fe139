"""What a registered model's training was, read from its row as one typed record.

Adapter versions and compositions store their training in one shape (see
:class:`~xcross_registry.schema.Composition`): ``training_config`` holds the settings
(``training``: the :class:`~xcross_registry.training.TrainingConfig` as a dict, the
prompt ``template``, the ``run`` record) and ``metrics`` what the run measured.  Only
the method and the scoring mode sit in different places (an adapter's mode is part of
its scorer settings, a composition's method and mode of its integrator settings), and
imported adapters have no training at all.  Trained baselines (SASRec) store theirs in
the same shape, with their own settings under ``training`` and no mode or template.
:meth:`TrainingRecord.of` reads all of that once, so no caller digs
``training_config["training"]["fraction"]`` out of raw JSON.  Torch-free: listing
commands read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .schema import AdapterVersion, BaselineModel, Composition

# What an adapter version's record calls its method (a composition's is its
# composition method's name).
LORA = "lora"
HEAD_ONLY = "head-only"
RUN_BRIEF_KEYS = ("stop_reason", "examples_seen", "optimizer_steps", "epochs_completed")


@dataclass(frozen=True)
class TrainingRecord:
    """How a registered adapter version, composition or trained baseline was trained,
    and what that measured."""

    method: str  # "lora" or "head-only" for adapters; the composition method's or baseline's name
    mode: str | None  # the scoring mode; None where the record does not say (imports, baselines)
    template: str | None  # the prompt template key it was trained with (None: no prompts)
    training: dict[str, Any]  # the TrainingConfig (a baseline: its config) as stored ({} for imports)
    run: dict[str, Any] | None  # the run record (None: imported, or trained before runs were recorded)
    validation: dict[str, float] | None  # validation metrics of the kept epoch
    best_epoch: int | None
    train_users: int | None
    seconds: float | None
    imported_from: str | None = None  # the folder an imported adapter came from
    fusion: dict[str, Any] | None = None  # a stored late fusion with an ID model (xcross_registry.fusion)

    @property
    def board_method(self) -> str:
        """What a leaderboard calls it: the method, ``+`` the fused ID model's kind."""
        if not self.fusion:
            return self.method
        return f"{self.method}+{self.fusion['with'].partition(':')[0]}"

    @property
    def fraction(self) -> float | None:
        """The share of the domain's training users it trained on (None: imported)."""
        return self.training.get("fraction")

    @property
    def seed(self) -> int | None:
        return self.training.get("seed")

    @property
    def stop_reason(self) -> str | None:
        """Why the run ended ("completed", "time-cap", ...; None when no run was recorded)."""
        return self.run["stop_reason"] if self.run else None

    def run_brief(self) -> dict[str, Any] | None:
        """What a leaderboard shows of the run (None when no run was recorded)."""
        return {key: self.run[key] for key in RUN_BRIEF_KEYS} if self.run else None

    @classmethod
    def of(cls, row: AdapterVersion | Composition | BaselineModel) -> "TrainingRecord":
        """The record of an adapter version, a composition or a trained baseline row."""
        fusion = None
        if isinstance(row, AdapterVersion):
            stored = row.training_config or {}
            method, mode = (HEAD_ONLY if row.status == HEAD_ONLY else LORA,
                            (stored.get("scorer") or {}).get("mode"))
            fusion = stored.get("fusion")
        elif isinstance(row, Composition):
            stored = row.training_config or {}
            method, mode = row.integrator_config.get("method"), row.integrator_config.get("mode")
            fusion = row.integrator_config.get("fusion")
        elif isinstance(row, BaselineModel):
            stored = row.training_config or {}
            method, mode = row.kind, None  # an ID model: no scoring mode, no prompt
        else:
            raise TypeError(f"no training record for {type(row).__name__}")
        measured = row.metrics or {}
        return cls(method=method, mode=mode, template=stored.get("template"),
                   training=dict(stored.get("training") or {}), run=stored.get("run"),
                   validation=measured.get("validation"), best_epoch=measured.get("best_epoch"),
                   train_users=measured.get("train_users"), seconds=measured.get("seconds"),
                   imported_from=stored.get("imported_from"), fusion=fusion)
