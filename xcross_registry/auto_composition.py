"""Automatic composition: choose the sources and the method on the target's validation
users (``xreg compose --target T --sources auto --method auto``).

A team with a registry of adapters should not have to guess which of them help a new
domain or which way of combining them works best there.  Both choices are made here on
the validation users the run may see (its fraction of them,
:func:`~xcross_registry.training.allowed_validation_users`), with the candidates training
validates on; no test user is ever scored:

* **sources**: every other domain's latest adapter is used zero-shot on the target and
  ranked by NDCG@10; the top ``max_sources`` that share the best one's base model are
  kept;
* **method**: every candidate (a composition method, optionally with one setting, such
  as ``xcross:init=mix``) is trained under one declared budget (the same training
  settings, so the same ``--max-steps``) and scored the same way; the best is registered.

The whole search (each source and candidate with its budget, validation NDCG@10 and
seconds, and the choice) is stored with the composition as ``auto`` and printed by
``xreg show``.  Candidates that lose are not registered.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

from .composition_methods import composition_method
from .errors import ValidationError
from .progress import AUTO

if TYPE_CHECKING:  # pragma: no cover
    from .registry import Registry
    from .schema import Composition
    from .training import Deadline, TrainingConfig, TrainingProgress, ValidationSet

DEFAULT_MAX_SOURCES = 3
AUTOMATIC = "auto"  # the --sources / --method value that asks for a choice on validation


@dataclass(frozen=True)
class Candidate:
    """A method to try, with the settings that make it this candidate (``xcross:init=mix``)."""

    method: str
    settings: dict[str, Any] | None = None

    @property
    def label(self) -> str:
        if not self.settings:
            return self.method
        return self.method + ":" + ",".join(f"{k}={json.dumps(v)}" for k, v in self.settings.items())

    @classmethod
    def parse(cls, text: str) -> "Candidate":
        """``METHOD`` or ``METHOD:KEY=VALUE[,KEY=VALUE]`` (values as JSON, else text)."""
        method, _, rest = text.strip().partition(":")
        composition_method(method)  # an unknown method fails by name here
        settings: dict[str, Any] = {}
        for pair in filter(None, (part.strip() for part in rest.split(","))):
            key, equals, value = pair.partition("=")
            if not equals or not key:
                raise ValidationError(f"candidate {text!r}: settings are KEY=VALUE, got {pair!r}")
            try:
                settings[key] = json.loads(value)
            except ValueError:
                settings[key] = value
        return cls(method, settings or None)


# Every built-in way to combine adapters, X-Cross from both starts.
DEFAULT_CANDIDATES = ("xcross", "xcross:init=mix", "linear-merge", "ties", "dare-linear", "dare-ties",
                      "svd", "learned-merge", "lorahub", "arrow")


def validation_for(registry: "Registry", target: str, config: "TrainingConfig") -> "ValidationSet":
    """The validation users (and candidates) every choice of the search is scored on."""
    from .training import allowed_validation_users, validation_set

    data = registry.domain_data(target)
    valid = validation_set(data, seed=config.seed, users=allowed_validation_users(data, config.fraction,
                                                                                   config.valid_users),
                           negatives=config.valid_negatives)
    if valid is None:
        raise ValidationError(f"choosing automatically needs validation users of {target}; it has none")
    return valid


def rank_sources(registry: "Registry", target: str, valid: "ValidationSet") -> list[dict[str, Any]]:
    """Every other domain's latest adapter, used zero-shot on ``target``'s validation
    users, best first: ``[{"adapter", "base_model", "validation_ndcg@10"}]``."""
    from .fusion import ndcg_at_10
    from .subjects import load_subject

    data = registry.domain_data(target)
    ranked = []
    for domain in registry.domains():
        if domain.name == target:
            continue
        ready = [v for v in registry.adapters(domain.name) if v.status == "ready"]
        if not ready:
            continue
        latest = max(ready, key=lambda v: v.version)
        scores = load_subject(registry, latest.label, domain=target).score(data, valid.split, valid.users,
                                                                          valid.candidates)
        ranked.append({"adapter": latest.label, "base_model": latest.base_model.name,
                       "validation_ndcg@10": ndcg_at_10(scores)})
    ranked.sort(key=lambda row: -row["validation_ndcg@10"])
    return ranked


def choose_sources(ranked: Sequence[dict[str, Any]], max_sources: int) -> list[str]:
    """The top ``max_sources`` ranked sources on the best one's base model (at least two)."""
    if max_sources < 2:
        raise ValidationError(f"--max-sources must be at least 2 (a composition needs two sources), "
                              f"not {max_sources}")
    if not ranked:
        raise ValidationError("no other domain has a trained adapter to compose from")
    base = ranked[0]["base_model"]
    chosen = [row["adapter"] for row in ranked if row["base_model"] == base][:max_sources]
    if len(chosen) < 2:
        raise ValidationError(f"only {len(chosen)} other domain has an adapter on {base}; "
                              "a composition needs two sources")
    return chosen


def auto_compose(registry: "Registry", target: str, *, sources: Sequence[str] | str = AUTOMATIC,
                 method: str = AUTOMATIC, name: str | None = None, mode: str | None = None,
                 settings: Any | None = None, max_sources: int | None = None,
                 candidates: Sequence[str] | None = None, popularity_prior: bool = False,
                 fuse_with: str | None = None, training_config: "TrainingConfig | None" = None,
                 template: str | None = None,
                 progress: "Callable[[TrainingProgress], None] | str | None" = AUTO,
                 should_stop: "Callable[[], bool] | None" = None,
                 deadline: "Deadline | None" = None) -> "Composition":
    """Choose the sources (``sources="auto"``) and/or the method (``method="auto"``) on
    validation users, train the winner and register it with the search (see the module
    docstring).  Options are checked before any model loads; ``deadline`` (the CLI's
    ``--max-minutes``) bounds the whole search."""
    from .composer import plan_composition
    from .fusion import ndcg_at_10
    from .registry import validate_name
    from .runs import register_run, train_run
    from .scoring import score_candidates
    from .training import TrainingConfig

    config = training_config or TrainingConfig()
    registry.domain(target)
    auto_sources, auto_method = sources == AUTOMATIC, method == AUTOMATIC
    if max_sources is not None and not auto_sources:
        raise ValidationError("--max-sources applies to --sources auto")
    if candidates is not None and not auto_method:
        raise ValidationError("--candidates applies to --method auto")
    if auto_method and settings is not None:
        raise ValidationError("method settings apply to one method; with --method auto give them per "
                              "candidate (--candidates 'xcross:init=mix,...')")
    tried = [Candidate.parse(c) for c in (candidates or DEFAULT_CANDIDATES)] if auto_method \
        else [Candidate(method, settings)]
    if not tried:
        raise ValidationError("--candidates names no method")
    name = validate_name(name or f"{target}-{'auto' if auto_method else composition_method(method).default_suffix}",
                         "composition")
    registry.check_composition_name(name)
    valid = validation_for(registry, target, config)

    ranked: list[dict[str, Any]] = []
    if auto_sources:
        ranked = rank_sources(registry, target, valid)
        chosen_sources = choose_sources(ranked, max_sources or DEFAULT_MAX_SOURCES)
    else:
        chosen_sources = list(sources)
    plans = [plan_composition(registry, chosen_sources, target, name=name, method=c.method, mode=mode,
                              settings=c.settings, popularity_prior=popularity_prior, fuse_with=fuse_with,
                              training_config=config, template=template) for c in tried]

    data = registry.domain_data(target)
    results: list[dict[str, Any]] = []
    best = None
    for candidate, plan in zip(tried, plans):
        started = time.perf_counter()
        run = train_run(registry, plan.prepare, plan.training_config, progress=progress,
                        should_stop=should_stop, deadline=deadline, label=f"{name}: {candidate.label}")
        scores = score_candidates(run.job.scorer, data, plan.prompt, valid.split, valid.candidates, valid.users)
        score = ndcg_at_10(scores)
        results.append({"candidate": candidate.label, "method": candidate.method,
                        "planned_steps": run.result.planned_steps, "steps": run.result.optimizer_steps,
                        "examples_seen": run.result.examples_seen, "stop_reason": run.result.stop_reason,
                        "validation_ndcg@10": score, "seconds": round(time.perf_counter() - started, 1)})
        if best is None or score > best[0]:
            best = (score, candidate, plan, run)
        del run, scores  # only the best run's model stays in memory
    score, candidate, plan, run = best
    plan.record = {"auto": {"validation_users": len(valid.users), "seed": config.seed,
                            "sources": ranked, "max_sources": max_sources if auto_sources else None,
                            "chosen_sources": [v.label for v in plan.versions], "candidates": results,
                            "chosen": candidate.label, "validation_ndcg@10": score}}
    return registry.composition(register_run(registry, plan.register, run, staging="compose"))
