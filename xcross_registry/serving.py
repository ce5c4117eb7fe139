"""Recommending for one history: rank given candidates, or the whole catalogue.

Whole-catalogue requests run in two stages: a ``dual`` model (adapter or composition)
retrieves by a dot product against item embeddings that are computed once per model
version and cached under ``$XREG_HOME/cache``, then an optional ``cross`` model
re-ranks the top of that list.  History and candidate titles are matched to the
catalogue by title (case-insensitive) or item id; unknown titles still work as text.
A model's popularity prior is added here to what its mode scored, by item (see
:mod:`xcross_registry.item_prior`): unknown titles count zero.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from . import settings
from .ann import AnnConfig, AnnIndex
from .batching import embed_texts
from .data import Item
from .errors import ValidationError
from .progress import task
from .registry import Registry
from .scoring_modes import require_catalogue_ranker
from .subjects import LoadedSubject, load_subject, resolve_subject

DEFAULT_RERANK_DEPTH = 50


@dataclass
class Recommendation:
    rank: int
    item_id: str
    title: str
    score: float

    def as_dict(self) -> dict:
        return {"rank": self.rank, "item_id": self.item_id, "title": self.title, "score": self.score}


def load_model(registry: Registry, name: str, domain: str | None = None,
               template: str | None = None) -> LoadedSubject:
    """A composition or an adapter by name, ready to serve on its (target) domain, or
    on ``domain``, with the prompt template it was trained with (or ``template``).
    Baselines are refused (see :meth:`Subject.check_serves`), and so is a model fused with
    an ID model that cannot score a request's history."""
    subject = resolve_subject(registry, name, domain=domain)
    subject.check_serves()
    model = load_subject(registry, subject, template=template)
    if model.fusion is not None and model.fusion.history_scores is None:
        raise ValidationError(f"{subject.name} is fused with {model.fusion.fusion.with_model}, which scores a "
                              "split's users only, not a history given at request time: recommend with the "
                              "unfused model")
    return model


@dataclass
class Catalogue:
    """A catalogue ranker's catalogue in the layout a request needs, built once per
    loaded model (:func:`catalogue`) so that a request pays only for its own history.

    ``embeddings [N, H]``: float32, contiguous, on the scorer's device.  ``prior [N]``:
    what the popularity prior adds to each item (``None`` without one).  ``index``: an
    approximate nearest-neighbour index (:mod:`xcross_registry.ann`) over ``vectors``
    (the embeddings, with the items' log-counts as one more column when there is a
    prior), for catalogues of at least ``AnnConfig.min_items`` items."""

    embeddings: torch.Tensor
    prior: torch.Tensor | None
    index: AnnIndex | None = None
    vectors: "np.ndarray | None" = None


def catalogue(model: LoadedSubject, ann: AnnConfig | None = None,
              progress: Callable[[int, int], None] | None = None) -> Catalogue:
    """The model's :class:`Catalogue`: read from (or computed into) the disk cache once,
    then kept with the loaded model.  ``ann`` (default :class:`AnnConfig`) decides
    whether an index is built (or read from the cache beside the embeddings); the first
    call for a loaded model decides, later calls get what it built.  ``progress(items
    encoded, items)`` follows an encoding besides the terminal bar (the service shows a
    loading model's progress with it)."""
    built = model.derived.get("catalogue")
    if built is not None:
        return built
    key = hashlib.sha256(f"{model.digest}:{model.data.fingerprint()}:{model.template.key}"
                         .encode()).hexdigest()
    embeddings = _cached_embeddings(model, settings.home() / "cache" / "item-embeddings" / f"{key}.safetensors",
                                    progress=progress)
    scorer = model.scorer
    prior = scorer.item_prior.scores(model.data.items) if scorer.item_prior is not None else None
    built = Catalogue(embeddings.to(scorer.device).contiguous(), prior)
    ann = ann or AnnConfig()
    with torch.inference_mode():
        searchable = scorer.mode.query_vectors(scorer, built.embeddings[:1]) is not None
    if len(model.data.items) >= ann.min_items and searchable:
        built.vectors = _index_vectors(model, embeddings)
        path = settings.home() / "cache" / "ann" / f"{key}-{ann.key()}.faiss"
        built.index = AnnIndex.load(path, ann, len(built.vectors))
        if built.index is None:
            with task(f"indexing the {len(built.vectors)} catalogue items"):
                built.index = AnnIndex.build(built.vectors, ann)
            built.index.save(path)
    model.derived["catalogue"] = built
    return built


def item_embeddings(model: LoadedSubject) -> torch.Tensor:
    """The catalogue's item embeddings for a dual model, computed once and cached on disk."""
    return catalogue(model).embeddings


def _cached_embeddings(model: LoadedSubject, path: "os.PathLike", batch_size: int = 256,
                       progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """The embeddings stored at ``path``, or the catalogue encoded now and stored there
    (a damaged or foreign file is recomputed, never trusted)."""
    from safetensors.torch import load_file, save_file

    if os.path.isfile(path):
        try:
            cached = load_file(str(path))["embeddings"]
            if cached.shape[0] == len(model.data.items):
                return cached
        except Exception:  # a damaged cache is recomputed, never trusted
            pass
    with torch.inference_mode(), task(f"encoding the {len(model.data.items)} catalogue items") as bar:
        def update(done: int, total: int) -> None:
            bar(done, total)
            if progress is not None:
                progress(done, total)

        embeddings = model.scorer.encode_items(model.data.items, model.template, batch_size,
                                               progress=update).float().cpu()
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    os.close(fd)
    save_file({"embeddings": embeddings.contiguous()}, tmp)
    os.replace(tmp, path)
    return embeddings


def _index_vectors(model: LoadedSubject, embeddings: torch.Tensor) -> "np.ndarray":
    """The rows an index searches: each item's embedding, and with a popularity prior its
    ``log(1 + count)`` as one more column (the query gets the prior's weight there)."""
    vectors = embeddings.float().cpu()
    if model.scorer.item_prior is not None:
        counts = model.scorer.item_prior.log_counts(model.data.items).unsqueeze(1)
        vectors = torch.cat([vectors, counts], dim=1)
    return vectors.numpy().copy()


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


def recommend(model: LoadedSubject, history: Sequence[str], *, candidates: Sequence[str] | None = None,
              top: int = 10, reranker: LoadedSubject | None = None,
              rerank_depth: int = DEFAULT_RERANK_DEPTH,
              exclude_history: bool | None = None, exact: bool = False) -> list[Recommendation]:
    """Rank ``candidates`` (titles or ids) for ``history``, or the whole catalogue."""
    return recommend_many(model, [Query(history, candidates, top, exclude_history)],
                          reranker=reranker, rerank_depth=rerank_depth, exact=exact)[0]


def recommend_many(model: LoadedSubject, queries: Sequence[Query], *, reranker: LoadedSubject | None = None,
                   rerank_depth: int = DEFAULT_RERANK_DEPTH, exact: bool = False) -> list[list[Recommendation]]:
    """Answer several queries in shared forward passes instead of one pass per query.

    A service collects the requests that arrive together and calls this once (micro-
    batching): their histories are encoded in shared forward passes, and all (history,
    candidate) prompts of the queries with candidate lists share passes too.  Texts are
    batched by padded length (see :mod:`xcross_registry.batching`), so every query gets exactly the scores
    it gets alone, whatever else is in its batch.

    A catalogue with an approximate index (:func:`catalogue`) is searched through it
    unless ``exact``; the items found carry their exact scores.  A model fused with an ID
    model (:mod:`xcross_registry.fusion`) scores exactly: the index holds text scores only,
    and the ID model's would reorder past its depth."""
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
        if model.fusion is not None:
            positions = model.positions()
            values = _fused(model, [values], [pasts[i]], np.array([[positions.get(item.id, -1)
                                                                     for item in pools[i]]]))[0].tolist()
        scores[i] = values
    ranked = [i for i, query in enumerate(queries) if query.candidates is None]
    if ranked:
        require_catalogue_ranker(model.name, model.scorer.config.mode, "whole-catalogue ranking",
                                 " (use it with --rerank, or give --candidates)")
        found = catalogue(model)
        positions = model.positions()
        with torch.inference_mode():
            encoded = encode_histories(model, [pasts[i] for i in ranked])
            if found.index is not None and not exact and model.fusion is None:
                for query, i in zip(encoded.split(1), ranked):
                    pools[i], scores[i] = _search(model, found, query, pasts[i], queries[i],
                                                  rerank_depth if reranker else queries[i].top)
                ranked = []
            else:
                # One product per query: a [B, H] @ [H, N] product sums in another order than
                # B separate ones, and a query's scores must not depend on its batch.
                all_scores = torch.cat([model.scorer.score_embeddings(query, found.embeddings)
                                        for query in encoded.split(1)])
    if ranked:
        all_scores = all_scores.float().cpu().clone()  # a normal tensor: rows are masked in place
        if found.prior is not None:
            all_scores += found.prior
        if model.fusion is not None:
            every = np.broadcast_to(np.arange(len(model.data.items)), tuple(all_scores.shape))
            all_scores = torch.from_numpy(_fused(model, all_scores.numpy(), [pasts[i] for i in ranked], every))
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


def _fused(model: LoadedSubject, text, pasts: Sequence[list[Item]], matrix: np.ndarray) -> np.ndarray:
    """A fused model's scores ``[Q, C]`` of each query's candidates (catalogue indices,
    -1 outside the catalogue): the text scores fused with the ID model's, whose history
    is the query's entries that matched catalogue items."""
    positions = model.positions()
    histories = [[positions[item.id] for item in past if item.id in positions] for past in pasts]
    return model.fusion.combine(np.asarray(text, dtype=np.float64), histories, matrix)


def _search(model: LoadedSubject, found: Catalogue, encoded: torch.Tensor, past: list[Item],
            query: Query, rerank_depth: int) -> tuple[list[Item], list[float]]:
    """One query's top items from the catalogue's approximate index, with their exact
    scores; the history's items are searched past and dropped unless asked for."""
    scorer = model.scorer
    vector = scorer.mode.query_vectors(scorer, encoded).float().cpu()
    if scorer.item_prior is not None:
        vector = torch.cat([vector, scorer.item_prior.weight.detach().float().cpu().view(1, 1)], dim=1)
    positions = model.positions()
    seen = set()
    if query.exclude_history is not False:
        seen = {positions[item.id] for item in past if item.id in positions}
    depth = min(len(model.data.items), max(query.top, rerank_depth))
    indices, values = found.index.search(vector.numpy(), found.vectors, depth + len(seen))
    kept = [(int(j), float(v)) for j, v in zip(indices[0], values[0]) if j >= 0 and j not in seen][:depth]
    return [model.data.items[j] for j, _ in kept], [v for _, v in kept]


def _score_many(model: LoadedSubject, pairs: Sequence[tuple[list[Item], list[Item]]]) -> list[list[float]]:
    """Scores of each (history, candidates) pair; the pairs of several queries share passes.

    A catalogue ranker encodes each history once and each distinct candidate document
    once; any other mode scores the pairs as its :meth:`ScoringMode.score_pairs` does.
    The model's popularity prior is added to each candidate's score."""
    if not pairs:
        return []
    scorer, template = model.scorer, model.template
    with torch.inference_mode():
        if not scorer.mode.ranks_catalogue:
            scores = scorer.mode.score_pairs(scorer, template, pairs)
        else:
            queries = encode_histories(model, [history for history, _ in pairs])
            texts: dict[str, int] = {}
            index = [[texts.setdefault(template.render_document(item), len(texts)) for item in pool]
                     for _, pool in pairs]
            documents = embed_texts(scorer, list(texts))
            scores = [scorer.score_embeddings(queries[r:r + 1], documents[rows].unsqueeze(0))[0]
                      .float().tolist() for r, rows in enumerate(index)]
    if scorer.item_prior is None:
        return scores
    return [(torch.tensor(values, dtype=torch.float32) + scorer.item_prior.scores(pool)).tolist()
            for values, (_, pool) in zip(scores, pairs)]


def encode_histories(model: LoadedSubject, histories: Sequence[Sequence[Item]]) -> torch.Tensor:
    """History embeddings ``[B, H]`` of a catalogue ranker, each as it would be alone."""
    scorer = model.scorer
    scorer.require_catalogue_ranking("encode_histories")
    return embed_texts(scorer, [model.template.render_query(h, scorer.tokenizer, scorer.config.max_length)
                                for h in histories], embed=model.derived.get("embed"))
