"""Evaluation: rank the stored candidates of a domain with some scorer, summarise, record.

Every subject (an adapter, a composition, a baseline) is evaluated through
:func:`evaluate_scores`: it receives the same stored candidate set
(:meth:`Registry.candidate_set`), so results on one domain are comparable user by
user.  The per-user ranks are stored as an artifact beside the result row, which lets
two results be compared with a paired bootstrap later.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import safetensors.numpy

from .candidates import CandidateSet, check_protocol, exclusion_mask
from .data import DomainData
from .errors import ValidationError
from .metrics import DEFAULT_KS, full_ranks, sampled_ranks, summarize
from .progress import task
from .registry import Registry
from .schema import EvaluationResult
from .subjects import require_dual, resolve_subject

# score(data, split, user_indices, candidate_matrix [U, C], progress=None) -> scores [U, C];
# progress(done, total), when given, follows the work (see xcross_registry.progress).
ScoreFunction = Callable[..., np.ndarray]

FULL_PROTOCOL_USERS_PER_CHUNK = 64


@dataclass
class Evaluation:
    """A finished evaluation, as stored in the registry."""

    subject_kind: str
    subject_name: str
    domain: str
    protocol: str
    split: str
    num_users: int
    metrics: dict[str, dict[str, float]]
    candidates_digest: str | None
    ranks_digest: str
    data_fingerprint: str
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"subject_kind": self.subject_kind, "subject": self.subject_name,
                "domain": self.domain, "protocol": self.protocol, "split": self.split,
                "users": self.num_users, "metrics": self.metrics,
                "candidates_digest": self.candidates_digest, "ranks_digest": self.ranks_digest,
                "data_fingerprint": self.data_fingerprint, **self.extra}


def check_options(protocol: str = "sampled", split: str = "test", max_users: int | None = None,
                  seed: int = 0) -> None:
    """The evaluation options a user gives, checked before any model is loaded."""
    check_protocol(protocol, split)
    if max_users is not None and max_users < 1:
        raise ValidationError(f"--max-users must be at least 1, not {max_users}")


def choose_users(candidates: CandidateSet, max_users: int | None, seed: int) -> np.ndarray:
    """Rows of the stored set to evaluate: all of them, or the first ``max_users`` of a
    seeded permutation (so a smaller evaluation is a subset of a larger one)."""
    rows = np.arange(len(candidates.users))
    if max_users is None or max_users >= len(rows):
        return rows
    if max_users < 1:
        raise ValidationError(f"--max-users must be at least 1, not {max_users}")
    return np.sort(np.random.default_rng([seed, 7]).permutation(rows)[:max_users])


def evaluate_scores(registry: Registry, domain: str, score: ScoreFunction, *, subject_kind: str,
                    subject_name: str, protocol: str = "sampled", split: str = "test",
                    max_users: int | None = None, seed: int = 0, ks: Sequence[int] = DEFAULT_KS,
                    adapter_version_id: int | None = None, composition_id: int | None = None,
                    extra: dict | None = None) -> Evaluation:
    """Score ``domain``'s stored candidates with ``score`` and record the result."""
    check_options(protocol, split, max_users)
    data = registry.domain_data(domain)
    candidates, candidates_digest = registry.candidate_set(domain, split, protocol, seed)
    rows = choose_users(candidates, max_users, seed)
    users = candidates.users[rows]
    with task(f"evaluating {subject_name} on {domain}") as progress:
        if protocol == "full":
            ranks = _full_catalogue_ranks(data, split, users, candidates.positives[rows], score,
                                          progress)
        else:
            matrix = candidates.candidates[rows]
            scores = np.asarray(score(data, split, users.tolist(), matrix, progress=progress),
                                dtype=np.float64)
            if scores.shape != matrix.shape:
                raise ValidationError(f"scorer returned {scores.shape} scores for {matrix.shape} candidates")
            ranks = sampled_ranks(scores)
    summary = summarize(ranks, ks, seed=seed)
    metrics = {name: {"mean": s.mean, "low": s.low, "high": s.high} for name, s in summary.items()}
    ranks_digest = registry.store.put_bytes(safetensors.numpy.save(
        {"users": users.astype(np.int64), "ranks": np.asarray(ranks, dtype=np.int64)}))
    row = registry.domain(domain)
    evaluation = Evaluation(subject_kind=subject_kind, subject_name=subject_name, domain=domain,
                            protocol=protocol, split=split, num_users=int(len(users)),
                            metrics=metrics, candidates_digest=candidates_digest,
                            ranks_digest=ranks_digest, data_fingerprint=row.data_fingerprint,
                            extra=extra or {})
    with registry.session() as session:
        session.add(EvaluationResult(
            subject_kind=subject_kind, subject_name=subject_name,
            adapter_version_id=adapter_version_id, composition_id=composition_id,
            domain_id=row.id, protocol=protocol, split=split,
            metrics={"summary": metrics, "ranks_digest": ranks_digest, "seed": seed, **(extra or {})},
            num_users=int(len(users)), data_fingerprint=row.data_fingerprint,
            candidates_digest=candidates_digest))
    return evaluation


def _full_catalogue_ranks(data: DomainData, split: str, users: np.ndarray, positives: np.ndarray,
                          score: ScoreFunction,
                          progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Rank each positive against every catalogue item the user has not interacted with;
    ``progress(users done, users)`` after each chunk."""
    catalogue = np.arange(len(data.items), dtype=np.int64)
    ranks = []
    for start in range(0, len(users), FULL_PROTOCOL_USERS_PER_CHUNK):
        chunk = users[start:start + FULL_PROTOCOL_USERS_PER_CHUNK]
        matrix = np.broadcast_to(catalogue, (len(chunk), len(catalogue)))
        scores = np.asarray(score(data, split, chunk.tolist(), matrix), dtype=np.float64)
        ranks.append(full_ranks(scores, positives[start:start + len(chunk)],
                                exclude=exclusion_mask(data, split, chunk)))
        if progress is not None:
            progress(start + len(chunk), len(users))
    return np.concatenate(ranks)


def popularity_score(data: DomainData, split: str, users: Sequence[int],
                     matrix: np.ndarray, progress=None) -> np.ndarray:
    """The popularity baseline: an item's score is its count in the training sequences."""
    return np.asarray(data.popularity(), dtype=np.float64)[matrix]


def evaluate_popularity(registry: Registry, domain: str, **options) -> Evaluation:
    return evaluate_scores(registry, domain, popularity_score, subject_kind="baseline",
                           subject_name=f"popularity:{domain}",
                           extra={"trainable_parameters": 0, "method": "popularity"}, **options)


def results(registry: Registry, domain: str | None = None,
            protocol: str | None = None) -> list[dict]:
    """Stored evaluation rows, newest last, as JSON-ready dicts."""
    from sqlalchemy import select

    from .schema import Domain

    with registry.session() as session:
        query = (select(EvaluationResult, Domain.name).join(Domain)
                 .order_by(EvaluationResult.id))
        if domain is not None:
            query = query.where(Domain.name == domain)
        if protocol is not None:
            query = query.where(EvaluationResult.protocol == protocol)
        return [{"id": r.id, "subject_kind": r.subject_kind, "subject": r.subject_name,
                 "domain": name, "protocol": r.protocol, "split": r.split, "users": r.num_users,
                 "metrics": r.metrics.get("summary", {}),
                 **{k: v for k, v in r.metrics.items() if k != "summary"},
                 "data_fingerprint": r.data_fingerprint, "candidates_digest": r.candidates_digest,
                 "created": r.created.isoformat()}
                for r, name in session.execute(query)]


def load_ranks(registry: Registry, digest: str) -> tuple[np.ndarray, np.ndarray]:
    """(users, ranks) of a stored evaluation, for paired comparisons."""
    tensors = safetensors.numpy.load(registry.store.get_bytes(digest))
    return tensors["users"], tensors["ranks"]


def scorer_score_function(scorer, template, batch_size: int = 64) -> ScoreFunction:
    """Adapt a :class:`~xcross_registry.scorer.Scorer` to :data:`ScoreFunction`."""
    from .training import score_candidates

    def score(data: DomainData, split: str, users: Sequence[int], matrix: np.ndarray,
              progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        return score_candidates(scorer, data, template, split, matrix, users, batch_size=batch_size,
                                progress=progress)

    return score


def evaluate_adapter(registry: Registry, label: str, domain: str | None = None,
                     batch_size: int = 64, template: str | None = None, **options) -> Evaluation:
    """Evaluate a registered adapter version on its own domain, or zero-shot on another.

    Names, options, data and template are all checked before the model loads."""
    from .adapters import load_scorer, require_scorer, resolve_adapter

    check_options(**options)
    version = resolve_adapter(registry, label)
    require_scorer(version.label, version.status)
    domain = domain or version.domain.name
    registry.domain_data(domain)  # an unknown or changed domain fails here, not after the load
    trained = version.training_config.get("template")
    prompt = registry.domain_type(domain).template_for(trained, template)
    full = options.get("protocol") == "full"
    if full:
        require_dual(version.label, (version.training_config.get("scorer") or {}).get("mode"),
                     "the full-catalogue protocol")
    scorer, version = load_scorer(registry, version.label)
    if full:  # an imported adapter's mode is known only now
        require_dual(version.label, scorer.config.mode, "the full-catalogue protocol")
    zero_shot = domain != version.domain.name
    kind = "baseline" if version.status == "head-only" or zero_shot else "adapter"
    name = f"{version.label}:zero-shot" if zero_shot else version.label
    training = version.training_config.get("training", {})
    method = "zero-shot" if zero_shot else "head-only" if version.status == "head-only" else "lora"
    return evaluate_scores(registry, domain, scorer_score_function(scorer, prompt, batch_size),
                           subject_kind=kind, subject_name=_prompted(name, template, trained, prompt.key),
                           adapter_version_id=version.id,
                           extra={"trainable_parameters": version.trainable_parameters,
                                  "template": prompt.key,
                                  "mode": scorer.config.mode, "method": method,
                                  # the share of the evaluated domain's users it trained on
                                  "fraction": 0.0 if zero_shot else training.get("fraction"),
                                  "training_seed": training.get("seed"),
                                  "run": _run_brief(version.training_config)},
                           **options)


def evaluate_composition(registry: Registry, name: str, batch_size: int = 64,
                         template: str | None = None, **options) -> Evaluation:
    """Evaluate a registered composition on its target domain (checks before the load)."""
    check_options(**options)
    subject = resolve_subject(registry, name, composition_only=True)
    registry.domain_data(subject.domain)
    prompt = registry.domain_type(subject.domain).template_for(subject.template, template)
    if options.get("protocol") == "full":
        require_dual(name, subject.mode, "the full-catalogue protocol")
    from .composer import load_composition

    scorer, row = load_composition(registry, name)
    domain = row.target_domain.name
    method = row.integrator_config.get("method", "xcross")
    training = row.training_config.get("training", {})
    return evaluate_scores(registry, domain, scorer_score_function(scorer, prompt, batch_size),
                           subject_kind="composition" if method == "xcross" else "baseline",
                           subject_name=_prompted(name, template, subject.template, prompt.key),
                           composition_id=row.id,
                           extra={"trainable_parameters": row.trainable_parameters,
                                  "template": prompt.key,
                                  "mode": scorer.config.mode, "method": method,
                                  "fraction": training.get("fraction"), "training_seed": training.get("seed"),
                                  "sources": [s.adapter.label for s in row.sources],
                                  "run": _run_brief(row.training_config)},
                           **options)


def _prompted(name: str, requested: str | None, trained: str | None, used: str) -> str:
    """A subject scored with another prompt than it was trained with (``--template``)
    is its own row on the leaderboard: ``toys@v1:prompt=short@1``."""
    return name if requested is None or used == trained else f"{name}:prompt={used}"


def _run_brief(training_config: dict) -> dict | None:
    """What a leaderboard shows of the evaluated model's training run (``None`` for
    imported adapters and models trained before runs were recorded)."""
    run = training_config.get("run")
    return {key: run[key] for key in ("stop_reason", "examples_seen", "optimizer_steps",
                                      "epochs_completed")} if run else None


def evaluate_named(registry: Registry, name: str, **options) -> Evaluation:
    """A composition when ``name`` is one, else an adapter label."""
    if resolve_subject(registry, name).kind == "composition":
        return evaluate_composition(registry, name, **options)
    return evaluate_adapter(registry, name, **options)


def compare(registry: Registry, domain: str, first: str, second: str,
            protocol: str = "sampled", seed: int = 0) -> dict:
    """Paired comparison of two subjects' latest results on the same stored candidates.

    The difference of each per-user metric is resampled over users (paired bootstrap),
    which is far tighter than comparing two separate intervals; results on different
    candidates, data or users are refused rather than compared."""
    from .metrics import bootstrap_interval, per_user_metrics

    latest: dict[str, dict] = {}
    for row in results(registry, domain, protocol):
        if row["subject"] in (first, second):
            latest[row["subject"]] = row
    for subject in (first, second):
        if subject not in latest:
            raise ValidationError(f"no {protocol} evaluation of {subject!r} on {domain!r}")
    a, b = latest[first], latest[second]
    if (a["candidates_digest"], a["data_fingerprint"], a["split"]) != \
            (b["candidates_digest"], b["data_fingerprint"], b["split"]):
        raise ValidationError(f"{first} and {second} were evaluated on different candidates, "
                              "data or splits; re-evaluate them on the same ones")
    users_a, ranks_a = load_ranks(registry, a["ranks_digest"])
    users_b, ranks_b = load_ranks(registry, b["ranks_digest"])
    if not np.array_equal(users_a, users_b):
        raise ValidationError(f"{first} and {second} were evaluated on different users "
                              "(use the same --max-users and --seed)")
    values_a, values_b = per_user_metrics(ranks_a), per_user_metrics(ranks_b)
    differences = {}
    for name in values_a:
        delta = values_a[name] - values_b[name]
        low, high = bootstrap_interval(delta, seed)
        differences[name] = {"difference": float(delta.mean()), "low": low, "high": high}
    return {"domain": domain, "protocol": protocol, "first": first, "second": second,
            "users": int(len(users_a)), "differences": differences}
