"""The JSON API under ``/v1``: every answer is a typed model, so ``/openapi.json`` (and the
page at ``/docs``) says exactly what each endpoint returns, its errors included."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Sequence

from fastapi import APIRouter, HTTPException, Query as QueryParameter, Request
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from .. import leaderboard
from ..candidates import PROTOCOLS
from ..data import SPLITS, TITLE_PREFIX_MIN_WORDS
from ..evaluation import compare as compare_results, verdict
from ..registry import as_dict
from ..scoring_modes import require_catalogue_ranker
from ..serving import Query
from ..subjects import LoadedSubject, list_subjects
from .models import ModelCache, Served

# Request limits: a history is a user's recent items, not a data dump.
MAX_HISTORY_ITEMS = 200
MAX_CANDIDATES = 5000
MAX_TOP_K = 1000
MAX_TITLE_CHARS = 1000
MAX_ITEMS_LISTED = 1000

Title = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_TITLE_CHARS)]
ProtocolName = Literal[PROTOCOLS]  # type: ignore[valid-type]  # the candidates module's table
SplitName = Literal[SPLITS]  # type: ignore[valid-type]


class RecommendRequest(BaseModel):
    """Rank the catalogue (or ``candidates``) for a history."""

    model_config = ConfigDict(extra="forbid", strict=True)

    subject: str = Field(min_length=1, max_length=200,
                         description="A composition name, or an adapter: DOMAIN (its latest version) "
                                     "or DOMAIN@vN.")
    history: list[Title] = Field(min_length=1, max_length=MAX_HISTORY_ITEMS,
                                 description="Item titles or ids, oldest first. Titles that are "
                                             "not in the catalogue are used as text.")
    candidates: list[Title] | None = Field(
        default=None, min_length=1, max_length=MAX_CANDIDATES,
        description="Catalogue item ids or titles to rank; omitted: the whole catalogue "
                    "(dual models).")
    top_k: int = Field(default=10, ge=1, le=MAX_TOP_K, description="How many items to return.")
    exclude_history: bool | None = Field(
        default=None, description="Leave the history's items out of the ranking. Default: yes "
                                  "for the whole catalogue, no for a given candidate list.")


class RankedItem(BaseModel):
    rank: int
    item_id: str
    title: str
    score: float


class HistoryMatch(BaseModel):
    """How one history entry was read."""

    entry: str = Field(description="The entry as given.")
    matched: Literal["id", "title", "title prefix"] | None = Field(
        description="How it matched a catalogue item: its id or its title (any case), or "
                    f"'title prefix': the catalogue's title is the entry's first words (at least "
                    f"{TITLE_PREFIX_MIN_WORDS}; catalogues cut long titles). None: no item "
                    "matched, and the entry was scored as free text.")
    item_id: str | None = Field(description="The matched item's id (None for free text).")
    title: str = Field(description="The matched item's catalogue title, or the free text.")


class RecommendResponse(BaseModel):
    subject: str = Field(description="The resolved subject: a composition name or DOMAIN@vN.")
    kind: str = Field(description="composition or adapter")
    version: str = Field(description="An adapter's label DOMAIN@vN; a composition's creation time "
                                     "(compositions are not versioned: the digest identifies them).")
    digest: str = Field(description="sha256 of the model's stored artifact.")
    domain: str
    history: list[HistoryMatch] = Field(description="Each history entry and what it matched.")
    items: list[RankedItem]


class ErrorResponse(BaseModel):
    error: str = Field(description="What is wrong, in one line.")
    details: list[dict[str, Any]] | None = None


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    ready: bool = Field(description="Every --preload subject has been tried and loaded.")
    loaded: list[str]
    loading: list[str]
    failed: dict[str, str] = Field(description="--preload subjects that failed to load: why.")


class LoadingState(BaseModel):
    """A load under way: a subject's model is read, then (a catalogue ranker) its
    catalogue encoded."""

    stage: str = Field(description="'reading the model' or 'encoding the catalogue'.")
    items_encoded: int
    items: int = Field(description="Catalogue items to encode (0 until the encoding starts).")
    seconds: float = Field(description="Since the load started.")


class Batching(BaseModel):
    requests: int = Field(description="Requests scored since the model was loaded.")
    batches: int = Field(description="Forward-pass batches they were scored in.")
    waits: int = Field(description="Batches that waited --batch-wait-ms for companions (only "
                       "while others were queued).")


class SubjectInfo(BaseModel):
    subject: str = Field(description="What to ask /v1/recommend for: a composition or DOMAIN@vN.")
    kind: Literal["composition", "adapter"]
    domain: str = Field(description="The domain it recommends items of.")
    mode: str | None = Field(description="Scoring mode (dual ranks a whole catalogue; cross needs "
                                         "candidates); None for an adapter imported without a head.")
    digest: str
    version: str
    base_model: str | None
    status: str | None = Field(description="An adapter's status (ready, head-only, no-head); None "
                                           "for a composition.")
    sources: list[str] = Field(description="A composition's source adapters (empty for an adapter).")
    loaded: bool
    loading: LoadingState | None = Field(description="Progress of a load under way.")
    batching: Batching | None
    load_error: str | None = Field(description="Why its last load failed (retried after 30 s).")


class SequenceLengths(BaseModel):
    min: int
    max: int
    mean: float
    median: float


class DomainSummary(BaseModel):
    model_config = ConfigDict(extra="allow")

    items: int
    users: dict[str, int] = Field(description="Users per split: train, valid, test.")
    interactions: int
    sequence_length: SequenceLengths


class DomainInfo(BaseModel):
    model_config = ConfigDict(extra="allow")  # fields a later registry adds pass through

    name: str
    plugin: str
    plugin_version: str | None
    data_location: str
    data_fingerprint: str
    data_version: int
    data_history: list[dict[str, Any]]
    summary: DomainSummary
    description: str
    created: str


class MetricInterval(BaseModel):
    mean: float
    low: float = Field(description="2.5% bootstrap quantile over users.")
    high: float = Field(description="97.5% bootstrap quantile over users.")


class RunBrief(BaseModel):
    stop_reason: str
    examples_seen: int
    optimizer_steps: int
    epochs_completed: int


class BoardRow(BaseModel):
    model_config = ConfigDict(extra="allow")  # facts a later evaluation records pass through

    subject: str
    kind: str = Field(description="adapter, composition or baseline")
    users: int
    trainable_parameters: int | None
    fraction: float | None = Field(description="Share of the domain's training users it trained on.")
    mode: str | None
    popularity_prior: bool | None
    method: str | None
    training_seed: int | None
    sources: list[str] | None
    run: RunBrief | None
    metrics: dict[str, MetricInterval]
    evaluation_id: int
    created: str


class Board(BaseModel):
    """Results that can be compared: one data fingerprint, split, protocol and candidate set."""

    model_config = ConfigDict(extra="allow")

    domain: str
    protocol: str
    split: str
    data_fingerprint: str
    candidates_digest: str | None
    rows: list[BoardRow]


class CatalogueItem(BaseModel):
    id: str
    title: str


class Difference(BaseModel):
    difference: float = Field(description="Mean over users of FIRST's metric minus SECOND's.")
    low: float
    high: float
    verdict: Literal["better", "worse", "no clear difference"]


class Comparison(BaseModel):
    domain: str
    protocol: str
    first: str
    second: str
    users: int
    differences: dict[str, Difference]


ERRORS = {status: {"model": ErrorResponse} for status in (404, 413, 422, 503)}

router = APIRouter(prefix="/v1", tags=["v1"])


def cache_of(request: Request) -> ModelCache:
    return request.app.state.cache


async def recommend_for(cache: ModelCache, body: RecommendRequest,
                        wait_s: float | None = None) -> tuple[Served, list]:
    """Load (or find) the subject, check the candidates against its catalogue, and wait
    for the answer from the subject's micro-batcher.  A load still under way after
    ``wait_s`` (default: the server's ``--load-wait``) is answered "still loading"."""
    served = await cache.get(body.subject, wait_s)
    if body.candidates is None:
        require_catalogue_ranker(served.subject.name, served.model.scorer.config.mode,
                                 "whole-catalogue ranking", " (give candidates)")
    else:
        unknown = [text for text, item in zip(body.candidates, served.model.match(body.candidates))
                   if not item.id]
        if unknown:
            shown = ", ".join(repr(text) for text in unknown[:5])
            more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
            raise HTTPException(422, f"unknown candidates (no item id or title of domain "
                                     f"{served.model.domain!r}): {shown}{more}")
    ranked = await served.batcher.submit(Query(history=body.history, candidates=body.candidates,
                                               top=body.top_k, exclude_history=body.exclude_history))
    return served, ranked


def match_report(model: LoadedSubject, history: Sequence[str]) -> list[HistoryMatch]:
    """What each history entry matched, by the same matching the model scores with."""
    report = []
    for entry, item in zip(history, model.match(history)):
        key = entry.strip().lower()
        how = (None if not item.id else "id" if item.id.strip().lower() == key
               else "title" if item.title.strip().lower() == key else "title prefix")
        report.append(HistoryMatch(entry=entry, matched=how, item_id=item.id or None, title=item.title))
    return report


@router.post("/recommend", response_model=RecommendResponse, responses={
    **ERRORS, 503: {"model": ErrorResponse, "description": "The model cannot be loaded, or is "
                    "still loading: then a Retry-After header says when to ask again."}})
async def recommend(body: RecommendRequest, request: Request) -> RecommendResponse:
    """Ranked items for a history, with the subject's version and digest and what each
    history entry matched."""
    served, ranked = await recommend_for(cache_of(request), body)
    model = served.model
    return RecommendResponse(subject=served.subject.name, kind=model.kind, version=model.version,
                             digest=model.digest, domain=model.domain,
                             history=match_report(model, body.history),
                             items=[RankedItem(**r.as_dict()) for r in ranked])


@router.get("/subjects", response_model=list[SubjectInfo])
def subjects(request: Request) -> list[SubjectInfo]:  # plain defs run on a worker thread
    """Every composition and adapter version that can be asked for, and whether it is
    loaded, loading (with progress) or failed to load."""
    cache = cache_of(request)
    loaded, failed = cache.batching_stats(), cache.failures()
    rows = []
    for s in list_subjects(cache.registry):
        loading = cache.loading.get(s.name)
        rows.append(SubjectInfo(
            subject=s.name, kind=s.kind, domain=s.domain, mode=s.mode, digest=s.digest or "",
            version=s.version, base_model=s.base_model,
            status=s.status if s.kind == "adapter" else None, sources=list(s.sources),
            loaded=s.name in loaded, loading=loading.as_dict() if loading else None,
            batching=loaded.get(s.name), load_error=failed.get(s.name)))
    return rows


@router.get("/domains", response_model=list[DomainInfo])
def domains(request: Request) -> list[dict[str, Any]]:
    """Registered domains with their data statistics."""
    return [as_dict(row) for row in cache_of(request).registry.domains()]


@router.get("/domains/{domain}/items", response_model=list[CatalogueItem], responses=ERRORS)
def items(domain: str, request: Request, search: str | None = None,
          limit: Annotated[int, QueryParameter(ge=1, le=MAX_ITEMS_LISTED)] = 50) -> list[dict[str, str]]:
    """Catalogue items whose id or title contains every word of ``search`` (``xreg items``)."""
    found = cache_of(request).registry.find_items(domain, search)
    return [{"id": item.id, "title": item.title} for item in found[:limit]]


@router.get("/leaderboard/{domain}", response_model=list[Board], responses=ERRORS)
def board(domain: str, request: Request, protocol: ProtocolName | None = None, split: SplitName | None = None,
          candidates: str | None = None) -> list[dict[str, Any]]:
    """The domain's leaderboards, one per comparable group (data, split, protocol,
    candidates); ``candidates`` keeps the groups whose candidate-set digest starts with it."""
    return [b.as_dict() for b in leaderboard.leaderboard(cache_of(request).registry, domain, protocol,
                                                         split, candidates)]


@router.get("/compare/{domain}", response_model=Comparison, responses=ERRORS)
def compare(domain: str, first: str, second: str, request: Request,
            protocol: ProtocolName = "sampled") -> dict[str, Any]:
    """Paired bootstrap of FIRST minus SECOND on the same stored candidates (``xreg compare``)."""
    return with_verdicts(compare_results(cache_of(request).registry, domain, first, second, protocol))


def with_verdicts(document: dict[str, Any]) -> dict[str, Any]:
    """A :func:`~xcross_registry.evaluation.compare` document with each difference's verdict."""
    return {**document, "differences": {name: {**d, "verdict": verdict(d)}
                                        for name, d in document["differences"].items()}}
