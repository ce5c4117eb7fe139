"""Recommending for one history: rank given candidates, or the whole catalogue.

Whole-catalogue requests run in two stages: a ``dual`` model (adapter or composition)
retrieves by a dot product against item embeddings that are computed once per model
version and cached under ``$XREG_HOME/cache``, then an optional ``cross`` model
re-ranks the top of that list.  History and candidate titles are matched to the
catalogue by title (case-insensitive) or item id; unknown titles still work as text.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from . import settings
from .data import DomainData, Item
from .errors import ValidationError
from .registry import Registry

DEFAULT_RERANK_DEPTH = 50


@dataclass
class Recommendation:
    rank: int
    item_id: str
    title: str
    score: float

    def as_dict(self) -> dict:
        return {"rank": self.rank, "item_id": self.item_id, "title": self.title, "score": self.score}


@dataclass
class LoadedModel:
    """A scorer with what it needs to serve: its domain, data, template and identity."""

    name: str
    scorer: object
    domain: str
    data: DomainData
    template: object
    digest: str


def load_model(registry: Registry, name: str, domain: str | None = None) -> LoadedModel:
    """A composition or an adapter by name, ready to score on its (target) domain."""
    from .adapters import load_scorer
    from .composer import composition_exists, load_composition

    if composition_exists(registry, name):
        scorer, row = load_composition(registry, name)
        own_domain, digest, template_key = (row.target_domain.name, row.artifact_digest,
                                            row.training_config.get("template"))
    else:
        scorer, version = load_scorer(registry, name)
        own_domain, digest, template_key = (version.domain.name, version.artifact_digest,
                                            version.training_config.get("template"))
    domain = domain or own_domain
    return LoadedModel(name=name, scorer=scorer, domain=domain, data=registry.domain_data(domain),
                       template=registry.domain_type(domain).template_for(template_key), digest=digest)


def match_items(data: DomainData, texts: Sequence[str]) -> list[Item]:
    """Catalogue items for titles or ids; text that matches nothing becomes a free item."""
    by_key: dict[str, Item] = {}
    for item in data.items:
        by_key.setdefault(item.title.strip().lower(), item)
        by_key.setdefault(item.id.strip().lower(), item)
    return [by_key.get(text.strip().lower(), Item(id="", title=text.strip())) for text in texts]


def parse_history(history: str) -> list[str]:
    titles = [part.strip() for part in history.split(";") if part.strip()]
    if not titles:
        raise ValidationError("--history needs at least one item title (separate titles with ';')")
    return titles


def item_embeddings(model: LoadedModel, batch_size: int = 256) -> torch.Tensor:
    """The catalogue's item embeddings for a dual model, computed once and cached on disk."""
    from safetensors.torch import load_file, save_file

    key = hashlib.sha256(f"{model.digest}:{model.data.fingerprint()}:{model.template.key}"
                         .encode()).hexdigest()
    path = settings.home() / "cache" / "item-embeddings" / f"{key}.safetensors"
    if path.is_file():
        try:
            cached = load_file(str(path))["embeddings"]
            if cached.shape[0] == len(model.data.items):
                return cached
        except Exception:  # a damaged cache is recomputed, never trusted
            pass
    with torch.inference_mode():
        embeddings = model.scorer.encode_items(model.data.items, model.template, batch_size).float().cpu()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    save_file({"embeddings": embeddings.contiguous()}, tmp)
    os.replace(tmp, path)
    return embeddings


def recommend(model: LoadedModel, history: Sequence[str], *, candidates: Sequence[str] | None = None,
              top: int = 10, reranker: LoadedModel | None = None,
              rerank_depth: int = DEFAULT_RERANK_DEPTH) -> list[Recommendation]:
    """Rank ``candidates`` (titles or ids) for ``history``, or the whole catalogue."""
    if top < 1:
        raise ValidationError(f"--top must be at least 1, not {top}")
    past = match_items(model.data, history)
    if candidates is not None:
        pool = match_items(model.data, candidates)
        if not pool:
            raise ValidationError("the candidate list is empty")
        scores = _score(model, past, pool)
    else:
        if model.scorer.config.mode != "dual":
            raise ValidationError(f"{model.name} is a cross model: whole-catalogue ranking needs a "
                                  "dual model (use it with --rerank) or a --candidates list")
        seen = {item.id for item in past if item.id}
        embeddings = item_embeddings(model)
        with torch.inference_mode():
            query = model.scorer.encode_histories([past], model.template)
            all_scores = model.scorer.score_embeddings(query, embeddings.to(query.device))[0]
            all_scores = all_scores.float().cpu().clone()
            for index, item in enumerate(model.data.items):
                if item.id in seen:
                    all_scores[index] = float("-inf")
        depth = min(len(model.data.items), max(top, rerank_depth if reranker else top))
        best = torch.topk(all_scores, depth).indices.tolist()
        pool = [model.data.items[i] for i in best]
        scores = all_scores[best].tolist()
    if reranker is not None:
        scores = _score(reranker, match_items(reranker.data, history), pool)
    order = sorted(range(len(pool)), key=lambda i: -scores[i])[:top]
    return [Recommendation(rank=r + 1, item_id=pool[i].id, title=pool[i].title, score=float(scores[i]))
            for r, i in enumerate(order)]


def _score(model: LoadedModel, history: list[Item], pool: list[Item], batch: int = 64) -> list[float]:
    scores: list[float] = []
    with torch.inference_mode():
        for start in range(0, len(pool), batch):
            chunk = pool[start:start + batch]
            scores += model.scorer.score([history], [chunk], model.template)[0].float().tolist()
    return scores


def read_candidates(path: str | Path) -> list[str]:
    file = Path(path)
    try:
        lines = [line.strip() for line in file.read_text().splitlines() if line.strip()]
    except OSError as exc:
        raise ValidationError(f"cannot read candidates file {file}: {exc.strerror}") from None
    if not lines:
        raise ValidationError(f"candidates file {file} is empty")
    return lines
