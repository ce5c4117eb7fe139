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

from .baselines import ScoreFunction
from .candidates import CandidateSet, check_protocol, exclusion_mask, parse_protocol, protocol_label
from .checks import check_seed
from .data import DomainData
from .errors import ValidationError
from .metrics import DEFAULT_KS, full_ranks, sampled_ranks, summarize
from .progress import task
from .registry import Registry
from .scoring_modes import require_catalogue_ranker
from .subjects import load_subject, resolve_subject

# Users scored per call in the full protocol: as many as fit in this many score cells
# (float64: 128 MB), at least 64.  Each call encodes the catalogue once (a dual scorer
# encodes each distinct candidate once per call), so the fewer the calls the better:
# Tools (5,820 items, 2,193 test users) takes one call instead of 35.
FULL_PROTOCOL_SCORE_CELLS = 16_000_000
FULL_PROTOCOL_MIN_USERS_PER_CHUNK = 64


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
                  seed: int = 0, negatives: int | None = None) -> str:
    """The evaluation options a user gives, checked before any model is loaded; returns
    the protocol's label (``sampled:100`` for ``sampled`` with ``negatives=100``)."""
    check_protocol(protocol, split)
    if max_users is not None and max_users < 1:
        raise ValidationError(f"--max-users must be at least 1, not {max_users}")
    check_seed("--seed", seed)
    return protocol_label(protocol, negatives)


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
                    max_users: int | None = None, seed: int = 0, negatives: int | None = None,
                    ks: Sequence[int] = DEFAULT_KS, adapter_version_id: int | None = None,
                    composition_id: int | None = None, extra: dict | None = None) -> Evaluation:
    """Score ``domain``'s stored candidates with ``score`` and record the result.

    ``protocol`` is a protocol or its label; ``negatives`` (sampled protocols) overrides
    the count, and the result is stored under the label (see :mod:`.candidates`)."""
    protocol = check_options(protocol, split, max_users, seed, negatives=negatives)
    extra = {**(extra or {}), "negatives": parse_protocol(protocol)[1]}
    data = registry.domain_data(domain)
    candidates, candidates_digest = registry.candidate_set(domain, split, protocol, seed)
    rows = choose_users(candidates, max_users, seed)
    users = candidates.users[rows]
    with task(f"evaluating {subject_name} on {domain}") as progress:
        if parse_protocol(protocol)[0] == "full":
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
                            extra=extra)
    registry.add_evaluation(
        subject_kind=subject_kind, subject_name=subject_name, domain=domain, protocol=protocol,
        split=split, metrics={"summary": metrics, "ranks_digest": ranks_digest, "seed": seed,
                              **extra},
        num_users=len(users), candidates_digest=candidates_digest,
        adapter_version_id=adapter_version_id, composition_id=composition_id)
    return evaluation


def _full_catalogue_ranks(data: DomainData, split: str, users: np.ndarray, positives: np.ndarray,
                          score: ScoreFunction,
                          progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Rank each positive against every catalogue item the user has not interacted with;
    ``progress(users done, users)`` after each chunk."""
    catalogue = np.arange(len(data.items), dtype=np.int64)
    per_chunk = max(FULL_PROTOCOL_MIN_USERS_PER_CHUNK, FULL_PROTOCOL_SCORE_CELLS // len(catalogue))
    ranks = []
    for start in range(0, len(users), per_chunk):
        chunk = users[start:start + per_chunk]
        matrix = np.broadcast_to(catalogue, (len(chunk), len(catalogue)))
        scores = np.asarray(score(data, split, chunk.tolist(), matrix), dtype=np.float64)
        ranks.append(full_ranks(scores, positives[start:start + len(chunk)],
                                exclude=exclusion_mask(data, split, chunk)))
        if progress is not None:
            progress(start + len(chunk), len(users))
    return np.concatenate(ranks)


def load_ranks(registry: Registry, digest: str) -> tuple[np.ndarray, np.ndarray]:
    """(users, ranks) of a stored evaluation, for paired comparisons."""
    tensors = safetensors.numpy.load(registry.store.get_bytes(digest))
    return tensors["users"], tensors["ranks"]


def stored_summary(registry: Registry, row: dict, names: Sequence[str]) -> dict[str, dict[str, float]]:
    """The summary of a stored evaluation (a :meth:`Registry.evaluations` row) for the
    metrics ``names``.  A metric the row lacks (stored before Recall@K and NDCG@20
    existed) is derived from the row's stored per-user ranks with the row's seed, which
    is exactly what evaluating again on the same candidates would give."""
    from .metrics import bootstrap_interval, per_user_metrics

    summary = {name: row["metrics"][name] for name in names if name in row["metrics"]}
    missing = [name for name in names if name not in summary]
    if missing and row.get("ranks_digest"):
        _, ranks = load_ranks(registry, row["ranks_digest"])
        values = per_user_metrics(ranks)
        for name in missing:
            if name in values:  # as summarize() computes it
                low, high = bootstrap_interval(values[name], row.get("seed", 0))
                summary[name] = {"mean": float(values[name].mean()), "low": low, "high": high}
    return summary


def evaluate(registry: Registry, name: str, *, domain: str | None = None,
             template: str | None = None, batch_size: int = 64, **options) -> Evaluation:
    """Evaluate any subject (see :mod:`xcross_registry.subjects`): a composition, an
    adapter on its own domain or zero-shot on ``domain``, or a baseline
    (``popularity:DOMAIN``), on the domain's stored candidates.

    The name, the options, the data and the template are all checked before a model
    loads; a mode that cannot rank a catalogue is refused the ``full`` protocol."""
    check_options(**options)
    subject = resolve_subject(registry, name, domain=domain)
    full = parse_protocol(options.get("protocol", "sampled"))[0] == "full"
    if full:
        subject.require_catalogue_ranker("the full-catalogue protocol")
    loaded = load_subject(registry, subject, template=template, batch_size=batch_size)
    if full and loaded.scorer is not None:  # an imported adapter's mode is known only now
        require_catalogue_ranker(subject.name, loaded.scorer.config.mode, "the full-catalogue protocol")
    return evaluate_scores(registry, subject.domain, loaded.score, subject_kind=subject.board_kind,
                           subject_name=loaded.board_name,
                           adapter_version_id=subject.adapter_version_id,
                           composition_id=subject.composition_id, extra=loaded.evaluation_facts(),
                           **options)


def evaluate_adapter(registry: Registry, label: str, domain: str | None = None,
                     **options) -> Evaluation:
    """An adapter version on its own domain, or zero-shot on ``domain``."""
    return evaluate(registry, registry.adapter(label).label, domain=domain, **options)


def evaluate_composition(registry: Registry, name: str, **options) -> Evaluation:
    """A registered composition on its target domain."""
    return evaluate(registry, resolve_subject(registry, name, composition_only=True).name, **options)


def evaluate_popularity(registry: Registry, domain: str, **options) -> Evaluation:
    """The popularity baseline of ``domain``."""
    return evaluate(registry, f"popularity:{domain}", **options)


def compare(registry: Registry, domain: str, first: str, second: str,
            protocol: str = "sampled", seed: int = 0) -> dict:
    """Paired comparison of two subjects' latest results on the same stored candidates.

    The difference of each per-user metric is resampled over users (paired bootstrap),
    which is far tighter than comparing two separate intervals; results on different
    candidates, data or users are refused rather than compared."""
    from .metrics import bootstrap_interval, per_user_metrics

    latest: dict[str, dict] = {}
    for row in registry.evaluations(domain, protocol):
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


def verdict(difference: dict) -> str:
    """What a paired difference of :func:`compare` says: "better" or "worse" when its 95%
    interval leaves zero out, else "no clear difference"."""
    if difference["low"] > 0:
        return "better"
    return "worse" if difference["high"] < 0 else "no clear difference"
