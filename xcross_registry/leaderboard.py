"""The leaderboard: every stored evaluation on a domain, side by side.

Rows are grouped by what makes numbers comparable: the data fingerprint, split,
protocol and stored candidate set.  Results from different groups are never merged
into one table; each group is its own board, so a number measured on other candidates
or other data cannot sit silently beside the rest.  Within a group the latest result
of each subject is shown.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path

from .candidates import check_protocol
from .checks import check_plot_path
from .errors import ValidationError
from .evaluation import stored_summary
from .registry import Registry

COLUMNS = ("hit@1", "hit@3", "hit@10", "ndcg@10", "recall@10", "recall@20", "ndcg@20", "mrr")


@dataclass
class Board:
    """Comparable results: one data fingerprint, split, protocol and candidate set."""

    domain: str
    protocol: str
    split: str
    data_fingerprint: str
    candidates_digest: str | None
    rows: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"domain": self.domain, "protocol": self.protocol, "split": self.split,
                "data_fingerprint": self.data_fingerprint,
                "candidates_digest": self.candidates_digest, "rows": self.rows}


def leaderboard(registry: Registry, domain: str, protocol: str | None = None,
                split: str | None = None, candidates: str | None = None) -> list[Board]:
    """Boards for ``domain`` (newest group first), rows sorted by Hit@1 then NDCG@10.

    ``protocol`` and ``split`` keep only those boards (an unknown value is an error, not
    an empty answer); ``candidates`` keeps the boards whose candidate-set digest starts
    with it (a board's caption shows the first 12 characters)."""
    registry.domain(domain)  # unknown domains are an error, not an empty board
    check_protocol(protocol or "sampled", split or "test")
    boards: dict[tuple, Board] = {}
    stored = {row["id"]: row for row in registry.evaluations(domain, protocol)}
    for row in stored.values():
        if (split is not None and row["split"] != split) or (
                candidates and not (row["candidates_digest"] or "").startswith(candidates)):
            continue
        key = (row["protocol"], row["split"], row["data_fingerprint"], row["candidates_digest"],
               row["users"])
        board = boards.setdefault(key, Board(domain, row["protocol"], row["split"],
                                             row["data_fingerprint"], row["candidates_digest"]))
        entry = {"subject": row["subject"], "kind": row["subject_kind"], "users": row["users"],
                 "trainable_parameters": row.get("trainable_parameters", 0),
                 "fraction": row.get("fraction"), "mode": row.get("mode"),
                 "popularity_prior": row.get("popularity_prior"),
                 "method": row.get("method"), "training_seed": row.get("training_seed"),
                 "sources": row.get("sources"), "run": row.get("run"),
                 "metrics": {}, "negatives": row.get("negatives"),
                 "evaluation_id": row["id"], "created": row["created"]}
        board.rows = [r for r in board.rows if r["subject"] != entry["subject"]] + [entry]
    ordered = sorted(boards.values(), key=lambda b: -max(r["evaluation_id"] for r in b.rows))
    for board in ordered:
        for entry in board.rows:  # the shown rows only: older ones may derive from their ranks
            entry["metrics"] = stored_summary(registry, stored[entry["evaluation_id"]], COLUMNS)
        board.rows.sort(key=lambda r: (-r["metrics"]["hit@1"]["mean"], -r["metrics"]["ndcg@10"]["mean"]))
    return ordered


# What a board can be sorted by (the CLI's columns): each row's value for the column.
SORT_KEYS = {
    "subject": lambda r: r["subject"],
    "kind": lambda r: r["kind"],
    "mode": lambda r: r["mode"],
    "prior": lambda r: r["popularity_prior"],
    "trainable": lambda r: r["trainable_parameters"],
    "fraction": lambda r: r["fraction"],
    "examples": lambda r: (r["run"] or {}).get("examples_seen"),
    **{name: (lambda r, name=name: r["metrics"].get(name, {}).get("mean")) for name in COLUMNS},
}


def sort_rows(rows: list[dict], column: str, descending: bool) -> list[dict]:
    """``rows`` ordered by ``column`` (a key of :data:`SORT_KEYS`); rows without a value
    for it (a baseline's mode, a model-free row's run) come last either way."""
    if column not in SORT_KEYS:
        raise ValidationError(f"cannot sort a board by {column!r}; expected one of "
                              f"{', '.join(SORT_KEYS)}")
    key = SORT_KEYS[column]
    present = [r for r in rows if key(r) is not None]
    return (sorted(present, key=key, reverse=descending)
            + [r for r in rows if key(r) is None])


def plot(boards: list[Board], path: str | Path) -> Path:
    """A bar chart per board: Hit@1 and NDCG@10 with their 95% intervals."""
    check_plot_path(path)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(len(boards), 1, figsize=(10, 1.2 + 0.45 * sum(len(b.rows) for b in boards)),
                                squeeze=False)
    for axis, board in zip(axes[:, 0], boards):
        labels = [r["subject"] for r in board.rows][::-1]
        for offset, metric in ((-0.2, "hit@1"), (0.2, "ndcg@10")):
            values = [r["metrics"][metric] for r in board.rows][::-1]
            means = [v["mean"] for v in values]
            errors = [[v["mean"] - v["low"] for v in values], [v["high"] - v["mean"] for v in values]]
            axis.barh([i + offset for i in range(len(labels))], means, height=0.4, xerr=errors,
                      label=metric, capsize=2)
        axis.set_yticks(range(len(labels)), labels)
        axis.set_title(f"{board.domain}: {board.protocol} protocol, {board.split} split, "
                       f"{board.rows[0]['users']} users, data {board.data_fingerprint[:8]}, "
                       f"candidates {str(board.candidates_digest)[:8]}", fontsize=9, loc="left")
        # Above the axes, not over the bars: inside, it covered an error bar.
        axis.legend(loc="lower right", bbox_to_anchor=(1.0, 1.02), ncol=2, fontsize=8, frameon=False)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


@dataclass
class EfficiencyPoint:
    """One method at one target-data fraction, over its training seeds (a data-efficiency
    curve is a method's points in order of fraction)."""

    method: str
    fraction: float
    subjects: list[str]
    seeds: list[int | None]
    trainable_parameters: int
    metrics: dict[str, dict[str, float]]  # name -> mean, min, max over seeds

    def as_dict(self) -> dict:
        return {"method": self.method, "fraction": self.fraction, "subjects": self.subjects,
                "seeds": self.seeds, "trainable_parameters": self.trainable_parameters,
                "metrics": self.metrics}


def efficiency(board: Board) -> list[EfficiencyPoint]:
    """The board's trained rows grouped by (method, fraction), averaged over seeds.

    Rows without a positive fraction (popularity, zero-shot sources) do not depend on
    the target data budget; :func:`plot_efficiency` draws them as flat references."""
    groups: dict[tuple[str, float], list[dict]] = {}
    for row in board.rows:
        if row["fraction"]:
            groups.setdefault((row["method"] or row["kind"], row["fraction"]), []).append(row)
    points = []
    for (method, fraction), rows in sorted(groups.items()):
        metrics = {}
        for name in COLUMNS:
            values = [r["metrics"][name]["mean"] for r in rows]
            metrics[name] = {"mean": statistics.fmean(values), "min": min(values), "max": max(values)}
        points.append(EfficiencyPoint(method, fraction, [r["subject"] for r in rows],
                                      [r["training_seed"] for r in rows],
                                      max(r["trainable_parameters"] or 0 for r in rows), metrics))
    return points


def plot_efficiency(boards: list[Board], path: str | Path,
                    metrics: tuple[str, ...] = ("hit@1", "ndcg@10")) -> Path:
    """Each metric against the target-data fraction, a row of panels per board: a line
    per method (mean over seeds, bars from the worst to the best seed) and a dashed
    line for each row that does not depend on the fraction."""
    check_plot_path(path, "--plot-fraction")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(len(boards), len(metrics), figsize=(5.5 * len(metrics), 4.2 * len(boards)),
                                squeeze=False)
    for panels, board in zip(axes, boards):
        points = efficiency(board)
        fractions = sorted({p.fraction for p in points})
        for axis, metric in zip(panels, metrics):
            for method in dict.fromkeys(p.method for p in points):
                curve = [p for p in points if p.method == method]
                values = [p.metrics[metric] for p in curve]
                axis.errorbar([p.fraction for p in curve], [v["mean"] for v in values],
                              yerr=[[v["mean"] - v["min"] for v in values],
                                    [v["max"] - v["mean"] for v in values]],
                              marker="o", capsize=3,
                              label=f"{method} ({curve[-1].trainable_parameters:,} trainable)")
            for index, row in enumerate(r for r in board.rows if not r["fraction"]):
                axis.axhline(row["metrics"][metric]["mean"], linestyle="--", linewidth=1,
                             color=f"C{(index + 5) % 10}", label=row["subject"])
            if fractions:
                axis.set_xscale("log")
                axis.set_xticks(fractions, [f"{f:g}" for f in fractions])
                axis.set_xticks([], minor=True)  # log-scale minor labels (6×10⁻¹) crowd the fractions
            axis.set_xlabel("fraction of the target's training users")
            axis.set_ylabel(metric)
            axis.set_title(f"{board.domain}: {board.protocol}, {board.split}, {board.rows[0]['users']} users, "
                           f"candidates {str(board.candidates_digest)[:8]}", fontsize=8)
            axis.grid(alpha=0.3)
            # Below the panel, not over its points and bars.
            axis.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
