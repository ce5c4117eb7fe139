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
from dataclasses import dataclass, field
from typing import Sequence

import torch

from . import settings
from .data import DomainData, Item
from .errors import ValidationError
from .progress import task
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
    kind: str = "adapter"  # or "composition"
    version: str = ""  # adapter label (toys@v2), or a composition's creation time
    _positions: dict[str, int] | None = field(default=None, init=False, repr=False)
    _keys: dict[str, Item] | None = field(default=None, init=False, repr=False)

    def positions(self) -> dict[str, int]:
        """Catalogue index of each item id (built once: requests mask their history with it)."""
        if self._positions is None:
            self._positions = {item.id: index for index, item in enumerate(self.data.items)}
        return self._positions

    def match(self, texts: Sequence[str]) -> list[Item]:
        """:func:`match_items` on this model's catalogue, whose keys are built once."""
        if self._keys is None:
            self._keys = catalogue_keys(self.data)
        return match_items(self.data, texts, self._keys)


def load_model(registry: Registry, name: str, domain: str | None = None,
               template: str | None = None) -> LoadedModel:
    """A composition or an adapter by name, ready to score on its (target) domain, with
    the prompt template it was trained with (or ``template``, by name)."""
    from .adapters import load_scorer
    from .composer import composition_exists, load_composition

    if composition_exists(registry, name):
        scorer, row = load_composition(registry, name)
        own_domain, digest, template_key = (row.target_domain.name, row.artifact_digest,
                                            row.training_config.get("template"))
        kind, version_label = "composition", row.created.isoformat()
    else:
        scorer, version = load_scorer(registry, name)
        own_domain, digest, template_key = (version.domain.name, version.artifact_digest,
                                            version.training_config.get("template"))
        kind, version_label = "adapter", version.label
    domain = domain or own_domain
    return LoadedModel(name=name, scorer=scorer, domain=domain, data=registry.domain_data(domain),
                       template=registry.domain_type(domain).template_for(template_key, template),
                       digest=digest,
                       kind=kind, version=version_label)


def catalogue_keys(data: DomainData) -> dict[str, Item]:
    """Each item under its lower-cased title and id (the first item wins a shared title)."""
    by_key: dict[str, Item] = {}
    for item in data.items:
        by_key.setdefault(item.title.strip().lower(), item)
        by_key.setdefault(item.id.strip().lower(), item)
    return by_key


def match_items(data: DomainData, texts: Sequence[str],
                keys: dict[str, Item] | None = None) -> list[Item]:
    """Catalogue items for titles or ids; text that matches nothing becomes a free item
    (``id`` empty).  ``keys``: :func:`catalogue_keys` of ``data``, when already built."""
    by_key = catalogue_keys(data) if keys is None else keys
    return [by_key.get(text.strip().lower(), Item(id="", title=text.strip())) for text in texts]


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
    with torch.inference_mode(), task(f"encoding the {len(model.data.items)} catalogue items") as progress:
        embeddings = model.scorer.encode_items(model.data.items, model.template, batch_size,
                                               progress=progress).float().cpu()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    save_file({"embeddings": embeddings.contiguous()}, tmp)
    os.replace(tmp, path)
    return embeddings


@dataclass
class Query:
    """One request of :func:`recommend_many`: a history (titles or ids, oldest first),
    optional candidates (else the whole catalogue), how many to return, and whether
    items of the history may be recommended (default: not from the catalogue; a given
    candidate list is ranked as given)."""

    history: Sequence[str]
    candidates: Sequence[str] | None = None
    top: int = 10
    exclude_history: bool | None = None


def recommend(model: LoadedModel, history: Sequence[str], *, candidates: Sequence[str] | None = None,
              top: int = 10, reranker: LoadedModel | None = None,
              rerank_depth: int = DEFAULT_RERANK_DEPTH,
              exclude_history: bool | None = None) -> list[Recommendation]:
    """Rank ``candidates`` (titles or ids) for ``history``, or the whole catalogue."""
    return recommend_many(model, [Query(history, candidates, top, exclude_history)],
                          reranker=reranker, rerank_depth=rerank_depth)[0]


def recommend_many(model: LoadedModel, queries: Sequence[Query], *, reranker: LoadedModel | None = None,
                   rerank_depth: int = DEFAULT_RERANK_DEPTH) -> list[list[Recommendation]]:
    """Answer several queries in shared forward passes instead of one pass per query.

    A service collects the requests that arrive together and calls this once (micro-
    batching): their histories are encoded in shared forward passes, and all (history,
    candidate) prompts of the queries with candidate lists share passes too.  Texts are
    batched by padded length (see PAD_MULTIPLE), so every query gets exactly the scores
    it gets alone, whatever else is in its batch."""
    for query in queries:
        if query.top < 1:
            raise ValidationError(f"--top must be at least 1, not {query.top}")
        if not query.history:
            raise ValidationError("the history is empty: give at least one item title or id")
    pasts = [model.match(query.history) for query in queries]
    pools: list[list[Item]] = [[] for _ in queries]
    scores: list[list[float]] = [[] for _ in queries]
    listed = [i for i, query in enumerate(queries) if query.candidates is not None]
    for i in listed:
        pools[i] = model.match(queries[i].candidates)
        if queries[i].exclude_history:
            seen = {item.id for item in pasts[i] if item.id}
            pools[i] = [item for item in pools[i] if not item.id or item.id not in seen]
        if not pools[i]:
            raise ValidationError("the candidate list is empty")
    for i, values in zip(listed, _score_many(model, [(pasts[i], pools[i]) for i in listed])):
        scores[i] = values
    ranked = [i for i, query in enumerate(queries) if query.candidates is None]
    if ranked:
        if model.scorer.config.mode != "dual":
            raise ValidationError(f"{model.name} is a cross model: whole-catalogue ranking needs a "
                                  "dual model (use it with --rerank) or a --candidates list")
        embeddings = item_embeddings(model)
        positions = model.positions()
        with torch.inference_mode():
            encoded = _encode_queries(model, [pasts[i] for i in ranked])
            embeddings = embeddings.to(encoded.device)
            # One product per query: a [B, H] @ [H, N] product sums in another order than
            # B separate ones, and a query's scores must not depend on its batch.
            all_scores = torch.cat([model.scorer.score_embeddings(query, embeddings)
                                    for query in encoded.split(1)])
        all_scores = all_scores.float().cpu().clone()  # a normal tensor: rows are masked in place
        for row, i in zip(all_scores, ranked):
            if queries[i].exclude_history is not False:
                seen = [positions[item.id] for item in pasts[i] if item.id in positions]
                row[seen] = float("-inf")
            depth = min(len(model.data.items), max(queries[i].top, rerank_depth if reranker else queries[i].top))
            best = torch.topk(row, depth).indices.tolist()
            pools[i], scores[i] = [model.data.items[j] for j in best], row[best].tolist()
    if reranker is not None:
        scores = _score_many(reranker, [(reranker.match(query.history), pool)
                                        for query, pool in zip(queries, pools)])
    answers = []
    for query, pool, values in zip(queries, pools, scores):
        order = sorted(range(len(pool)), key=lambda k: -values[k])[:query.top]
        answers.append([Recommendation(rank=r + 1, item_id=pool[k].id, title=pool[k].title,
                                       score=float(values[k])) for r, k in enumerate(order)])
    return answers


def _score_many(model: LoadedModel, pairs: Sequence[tuple[list[Item], list[Item]]]) -> list[list[float]]:
    """Scores of each (history, candidates) pair; the pairs of several queries share passes.

    ``cross``: every (history, candidate) prompt is one row of a pass.  ``dual``: the
    histories are encoded once each and the distinct candidate documents once each."""
    from .scorer import to_device

    if not pairs:
        return []
    scorer, template = model.scorer, model.template
    with torch.inference_mode():
        if scorer.config.mode == "cross":
            rendered = [template.render_with_span(history, item, scorer.tokenizer, scorer.config.max_length)
                        for history, pool in pairs for item in pool]

            def cross(chunk: list[tuple[str, tuple[int, int]]]) -> torch.Tensor:
                texts, spans = zip(*chunk)
                inputs = scorer.tokenize(texts, spans, pad_to_multiple_of=PAD_MULTIPLE)
                return scorer(**to_device(inputs, scorer.device), num_candidates=1)[:, 0].float()

            flat = _bucketed(scorer, rendered, [text for text, _ in rendered], cross).tolist()
            result, offset = [], 0
            for _, pool in pairs:
                result.append(flat[offset:offset + len(pool)])
                offset += len(pool)
            return result
        queries = _encode_queries(model, [history for history, _ in pairs])
        texts: dict[str, int] = {}
        index = [[texts.setdefault(template.render_document(item), len(texts)) for item in pool]
                 for _, pool in pairs]
        documents = _embed_texts(scorer, list(texts))
        return [scorer.score_embeddings(queries[r:r + 1], documents[rows].unsqueeze(0))[0].float().tolist()
                for r, rows in enumerate(index)]


# Micro-batching must not change a query's scores.  Padding is masked, but a sequence
# padded to another length goes through differently shaped matrix products and its
# scores move in the last float bits (about 1e-5 on a score of 20).  So texts are
# grouped by their length rounded up to PAD_MULTIPLE tokens and each group is padded
# to exactly that length: a text has the same shape alone or in any batch.
PAD_MULTIPLE = 16
PASS_SIZE = 64  # texts per forward pass


def _bucketed(scorer, rows: list, texts: list[str], run) -> torch.Tensor:
    """``run`` over ``rows`` in passes of at most PASS_SIZE rows whose ``texts`` have the
    same padded length; its results ``[len(rows), ...]`` in the order of ``rows``."""
    lengths = scorer.tokenizer(texts, truncation=True, max_length=scorer.config.max_length)["input_ids"]
    buckets: dict[int, list[int]] = {}
    for position, ids in enumerate(lengths):
        buckets.setdefault(-(-len(ids) // PAD_MULTIPLE), []).append(position)
    parts, order = [], []
    for members in buckets.values():
        for start in range(0, len(members), PASS_SIZE):
            chunk = members[start:start + PASS_SIZE]
            parts.append(run([rows[k] for k in chunk]))
            order += chunk
    return torch.cat(parts)[torch.argsort(torch.tensor(order))]


def _embed_texts(scorer, texts: list[str]) -> torch.Tensor:
    from .scorer import to_device

    return _bucketed(scorer, texts, texts, lambda chunk: scorer.embed(
        **to_device(scorer.tokenize(chunk, pad_to_multiple_of=PAD_MULTIPLE), scorer.device)))


def _encode_queries(model: LoadedModel, histories: Sequence[Sequence[Item]]) -> torch.Tensor:
    """Dual mode: history embeddings ``[B, H]``, each as it would be alone."""
    scorer = model.scorer
    scorer._require_dual("encode_histories")
    return _embed_texts(scorer, [model.template.render_query(h, scorer.tokenizer, scorer.config.max_length)
                                 for h in histories])
