"""What the browser pages show, read from registry rows alone (no model is loaded).

Each ``*_view`` function returns the context of one template; :class:`Names` turns any
name a page prints (a domain, an adapter version, a composition, a baseline, a board
row such as ``toys@v1:zero-shot``) into the URL of its page, so every name is a link.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

from .. import composer, leaderboard
from ..baselines import BASELINES, split_baseline_name, stored_baseline
from ..candidates import PROTOCOLS, check_protocol
from ..data import SPLITS
from ..composition_methods import composition_method
from ..errors import NotFoundError, ValidationError
from ..records import TrainingRecord
from ..registry import Registry, as_dict
from ..scoring_modes import catalogue_rankers
from ..subjects import list_subjects, resolve_subject

# Board-name suffixes that mark a use of a model, not another model (see Subject.board_name).
USE_SUFFIXES = (":zero-shot", ":prompt=")
DEFAULT_SORT = "hit@1"


def path(prefix: str, name: str) -> str:
    return f"{prefix}/{quote(name, safe='@:')}"


def model_of(board_name: str) -> str:
    """The registered model behind a board row's name (``toys@v1:zero-shot`` → ``toys@v1``)."""
    for suffix in USE_SUFFIXES:
        board_name = board_name.split(suffix)[0]
    return board_name


class Names:
    """Every registered name and the URL of its page, read once per page."""

    def __init__(self, registry: Registry) -> None:
        self.domains = [row.name for row in registry.domains()]
        adapters, compositions = registry.adapters(), registry.compositions()
        baselines = registry.baseline_models()
        self.urls: dict[str, str] = {name: path("/domains", name) for name in self.domains}
        self.urls.update({a.label: path("/adapters", a.label) for a in adapters})
        self.urls.update({c.name: path("/compositions", c.name) for c in compositions})
        self.urls.update({b.label: path("/baselines", b.label) for b in baselines})
        self.urls.update({f"{kind}:{domain}": path("/baselines", f"{kind}:{domain}")
                          for kind, cls in BASELINES.items() if not cls.trained
                          for domain in self.domains})
        # How many training users each trained model saw (a fraction alone hides --max-users).
        trained = [(row.label, row) for row in [*adapters, *baselines]] + [(c.name, c) for c in compositions]
        self.train_users = {name: (row.metrics or {}).get("train_users") for name, row in trained}

    def url(self, name: str) -> str | None:
        """The page of ``name``, or None for a name the registry does not know."""
        return self.urls.get(name) or self.urls.get(model_of(name))


def board_query(protocol: str | None, split: str | None, candidates: str | None, **more: Any) -> str:
    """The query string of a board view (what ``/domains/NAME`` takes), without empty values."""
    values = {"protocol": protocol, "split": split, "candidates": candidates, **more}
    return urlencode({k: v for k, v in values.items() if v})


@dataclass
class BoardView:
    """One board as a page shows it: rows in the asked order, with the links around them."""

    board: leaderboard.Board
    rows: list[dict]
    only_this: str  # query string that shows this board alone

    @property
    def leader(self) -> str:
        return self.rows[0]["subject"]


def boards_view(registry: Registry, domain: str, protocol: str | None, split: str | None,
                candidates: str | None, sort: str | None, order: str | None) -> dict[str, Any]:
    """The boards of ``domain`` filtered and sorted as the URL asks (bad values raise
    :class:`~xcross_registry.errors.ValidationError`: HTTP 422)."""
    check_protocol(protocol or PROTOCOLS[0], split or "test")
    if order not in (None, "", "asc", "desc"):
        raise ValidationError(f"order must be asc or desc, not {order!r}")
    column = sort or DEFAULT_SORT
    descending = (order or "desc") == "desc"
    boards = leaderboard.leaderboard(registry, domain, protocol or None, split or None, candidates or None)
    views = [BoardView(b, leaderboard.sort_rows(b.rows, column, descending) if sort else list(b.rows),
                       board_query(b.protocol, b.split, (b.candidates_digest or "")[:12]))
             for b in boards]
    filters = {"protocol": protocol or "", "split": split or "", "candidates": candidates or ""}
    return {"boards": views, "filters": filters, "protocols": PROTOCOLS, "splits": SPLITS,
            "sort": column if sort else "", "descending": descending, "columns": leaderboard.COLUMNS,
            "sort_query": lambda key: board_query(
                protocol, split, candidates, sort=key,
                order="asc" if sort == key and descending else "desc") + "#leaderboard",
            "plot_query": board_query(protocol, split, candidates),
            "has_fractions": any(row["fraction"] for b in boards for row in b.rows)}


def results_of(registry: Registry, model: str) -> list[dict]:
    """The latest result of each use of ``model`` (its own domain, zero-shot elsewhere,
    other prompts) on each board, newest first, with the URL of that board."""
    latest: dict[tuple, dict] = {}
    for row in registry.evaluations():
        if model_of(row["subject"]) != model:
            continue
        key = (row["subject"], row["domain"], row["protocol"], row["split"], row["data_fingerprint"],
               row["candidates_digest"], row["users"])
        latest[key] = row
    rows = sorted(latest.values(), key=lambda r: -r["id"])
    for row in rows:
        row["board_url"] = (path("/domains", row["domain"]) + "?" + board_query(
            row["protocol"], row["split"], (row["candidates_digest"] or "")[:12]) + "#leaderboard")
    return rows


def _used_by(registry: Registry, label: str) -> list[str]:
    return [c.name for c in registry.compositions() if label in [s.adapter.label for s in c.sources]]


def domain_view(registry: Registry, name: str) -> dict[str, Any]:
    domain = as_dict(registry.domain(name))
    compositions = [composer.as_dict(row) for row in registry.compositions()]
    targets = [c for c in compositions if c["target"] == name]
    return {"domain": domain,
            "adapters": [{**as_dict(a), "record": TrainingRecord.of(a)} for a in registry.adapters(name)],
            "compositions": targets,
            "used_by": [c for c in registry.dependents(name)["compositions"]
                        if c not in {t["name"] for t in targets}],
            "baselines": [{**as_dict(b), "record": TrainingRecord.of(b)}
                          for b in registry.baseline_models(name)],
            "model_free": [f"{kind}:{name}" for kind, cls in BASELINES.items() if not cls.trained]}


def adapter_view(registry: Registry, label: str) -> dict[str, Any]:
    row = registry.adapter(label)
    label = row.label
    versions = [{**as_dict(a), "record": TrainingRecord.of(a)} for a in registry.adapters(row.domain.name)]
    return {"kind": "adapter", "name": label, "row": as_dict(row), "record": TrainingRecord.of(row),
            "domain": row.domain.name, "versions": versions, "used_by": _used_by(registry, label),
            "results": results_of(registry, label),
            "export": f"xreg export {label} DIR" if row.status != "no-head" else None,
            "serves": row.status != "no-head"}


def composition_view(registry: Registry, name: str) -> dict[str, Any]:
    row = registry.composition(name)
    document = composer.as_dict(row)
    return {"kind": "composition", "name": name, "c": document, "record": TrainingRecord.of(row),
            "domain": document["target"], "results": results_of(registry, name),
            "source_domains": {s.adapter.label: s.adapter.domain.name for s in row.sources},
            "has_integrators": composition_method(document["method"]).has_integrators,
            "serves": composition_method(document["method"]).subject_kind == "composition"}


def baseline_view(registry: Registry, name: str) -> dict[str, Any]:
    """A trained baseline version (``sasrec:tools@v1``) or a model-free one (``popularity:tools``)."""
    parsed = split_baseline_name(name)
    if parsed is None:
        raise NotFoundError(f"unknown baseline {name!r}: a baseline is named BASELINE:DOMAIN")
    cls, _ = parsed
    stored = stored_baseline(registry, name)
    subject = resolve_subject(registry, name)
    context: dict[str, Any] = {"kind": "baseline", "name": subject.name, "domain": subject.domain,
                               "baseline": cls.name, "description": cls.description,
                               "trained": stored is not None, "results": results_of(registry, subject.name)}
    if stored is not None:
        context.update(row=as_dict(stored), record=TrainingRecord.of(stored),
                       versions=[as_dict(b) for b in registry.baseline_models(subject.domain, cls.name)])
    return context


def run_view(registry: Registry, name: str) -> dict[str, Any]:
    """The training run of an adapter version, a composition or a trained baseline."""
    subject = resolve_subject(registry, name)
    if subject.record is None:
        raise NotFoundError(f"{subject.name} is a model-free baseline: it has no training run")
    return {"name": subject.name, "subject": subject, "record": subject.record,
            "domain": subject.trained_on}


def search_view(registry: Registry, query: str) -> dict[str, Any]:
    """Registered models and domains whose name, domain, base model, method or mode
    contains every word of ``query`` (any case); all of them for an empty query."""
    words = query.lower().split()
    found = []
    for domain in registry.domains():
        found.append({"name": domain.name, "kind": "domain", "domain": domain.name,
                      "about": domain.description or domain.plugin})
    for subject in list_subjects(registry):
        found.append({"name": subject.name, "kind": subject.kind, "domain": subject.domain,
                      "about": " ".join(filter(None, [subject.method, subject.mode, subject.base_model]))})
    for row in registry.baseline_models():
        found.append({"name": row.label, "kind": "baseline", "domain": row.domain.name,
                      "about": f"trained {row.kind}"})
    for domain in registry.domains():
        for kind, cls in BASELINES.items():
            if not cls.trained:
                found.append({"name": f"{kind}:{domain.name}", "kind": "baseline",
                              "domain": domain.name, "about": cls.description})
    hits = [f for f in found
            if all(word in " ".join((f["name"], f["kind"], f["domain"], f["about"])).lower()
                   for word in words)]
    return {"query": query, "hits": hits, "domains": [d.name for d in registry.domains()]}


def recommenders_of(registry: Registry, domain: str) -> list[str]:
    """The subjects that rank ``domain``'s whole catalogue from a history (what an
    item's "try" links offer)."""
    rankers = set(catalogue_rankers())
    return [s.name for s in list_subjects(registry)
            if s.domain == domain and s.mode in rankers and s.status != "no-head"]
