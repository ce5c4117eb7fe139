"""What a model name refers to, read from the registry rows alone.

Loading a model takes seconds to minutes (torch, the base model, the source adapters).
``evaluate``, ``recommend`` and ``serve`` first resolve every name they are given and
check every option against these records, so a typo or a bad value is refused at once,
before anything heavy is imported or loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import selectinload

from .adapters import require_scorer, resolve_adapter
from .errors import NotFoundError, ValidationError
from .registry import Registry
from .schema import Composition


@dataclass(frozen=True)
class Subject:
    """A composition or an adapter version, as the registry records it."""

    kind: str  # "composition" or "adapter"
    name: str  # the composition's name, or the adapter's label DOMAIN@vN
    domain: str  # the domain it was trained on (a composition's target)
    mode: str | None  # "cross" or "dual"; None where the record does not say (imports)
    status: str  # an adapter's status (ready, head-only, no-head); "ready" for compositions
    template: str | None  # the prompt template key it was trained with

    def check_scores(self) -> None:
        """Refuse a subject that cannot rank on its own (see :func:`require_scorer`)."""
        if self.kind == "adapter":
            require_scorer(self.name, self.status)


def resolve_subject(registry: Registry, name: str, *, composition_only: bool = False) -> Subject:
    """A composition when ``name`` is one, else an adapter label (``DOMAIN[@vN]``)."""
    with registry.session() as session:
        row = session.scalar(select(Composition).options(selectinload(Composition.target_domain))
                             .where(Composition.name == name))
        if row is not None:
            return Subject(kind="composition", name=row.name, domain=row.target_domain.name,
                           mode=row.integrator_config.get("mode"), status="ready",
                           template=row.training_config.get("template"))
    if composition_only:
        raise NotFoundError(f"unknown composition {name!r}")
    version = resolve_adapter(registry, name)
    return Subject(kind="adapter", name=version.label, domain=version.domain.name,
                   mode=(version.training_config.get("scorer") or {}).get("mode"),
                   status=version.status, template=version.training_config.get("template"))


def require_dual(name: str, mode: str | None, need: str, hint: str = "") -> None:
    """Refuse a model whose mode is not ``dual`` for something only dual models do.

    Called on the record before loading, where an unknown mode (an imported adapter)
    passes, and again on the loaded model."""
    if mode is not None and mode != "dual":
        raise ValidationError(f"{need} needs a dual model; {name} is a {mode} model{hint}")


@dataclass(frozen=True)
class RecommendRequest:
    """A ``recommend`` call whose names, history, candidates and data have been checked."""

    subject: Subject
    reranker: Subject | None
    history: list[str]
    candidates: list[str] | None


def check_recommend(registry: Registry, name: str, history: str,
                    candidates_file: str | Path | None = None,
                    rerank: str | None = None, template: str | None = None) -> RecommendRequest:
    """Everything about a recommendation that can be wrong without loading a model."""
    titles = parse_history(history)
    candidates = read_candidates(candidates_file) if candidates_file is not None else None
    subject = resolve_subject(registry, name)
    subject.check_scores()
    if candidates is None:
        require_dual(subject.name, subject.mode, "whole-catalogue ranking",
                     " (use it with --rerank, or give --candidates)")
    reranker = resolve_subject(registry, rerank) if rerank else None
    if reranker is not None:
        reranker.check_scores()
    registry.domain_data(subject.domain)  # changed or unreadable data fails here
    for model in filter(None, (subject, reranker)):
        registry.domain_type(subject.domain).template_for(model.template, template)
    return RecommendRequest(subject, reranker, titles, candidates)


def parse_history(history: str) -> list[str]:
    """Item titles or ids from ``--history``: ';'-separated, oldest first."""
    titles = [part.strip() for part in history.split(";") if part.strip()]
    if not titles:
        raise ValidationError("--history needs at least one item title (separate titles with ';')")
    return titles


def read_candidates(path: str | Path) -> list[str]:
    """Candidate titles or ids, one a line, from a UTF-8 text file."""
    file = Path(path)
    try:
        lines = [line.strip() for line in file.read_text(encoding="utf-8").splitlines()
                 if line.strip()]
    except OSError as exc:
        raise ValidationError(f"cannot read candidates file {file}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ValidationError(f"candidates file {file} is not UTF-8 text (byte "
                              f"0x{exc.object[exc.start]:02x} at offset {exc.start})") from None
    if not lines:
        raise ValidationError(f"candidates file {file} is empty")
    return lines
