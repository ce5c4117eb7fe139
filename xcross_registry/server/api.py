"""The JSON API under ``/v1`` (schemas double as the OpenAPI document at ``/openapi.json``)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from .. import leaderboard
from ..registry import as_dict
from ..scoring_modes import require_catalogue_ranker
from ..serving import Query
from ..subjects import list_subjects
from .models import ModelCache, Served

# Request limits: a history is a user's recent items, not a data dump.
MAX_HISTORY_ITEMS = 200
MAX_CANDIDATES = 5000
MAX_TOP_K = 1000
MAX_TITLE_CHARS = 1000

Title = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_TITLE_CHARS)]


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


class RecommendResponse(BaseModel):
    subject: str = Field(description="The resolved subject: a composition name or DOMAIN@vN.")
    kind: str = Field(description="composition or adapter")
    version: str = Field(description="An adapter's label DOMAIN@vN; a composition's creation time "
                                     "(compositions are not versioned: the digest identifies them).")
    digest: str = Field(description="sha256 of the model's stored artifact.")
    domain: str
    items: list[RankedItem]


class ErrorResponse(BaseModel):
    error: str = Field(description="What is wrong, in one line.")
    details: list[dict[str, Any]] | None = None


ERRORS = {status: {"model": ErrorResponse} for status in (404, 413, 422, 503)}

router = APIRouter(prefix="/v1", tags=["v1"])


def cache_of(request: Request) -> ModelCache:
    return request.app.state.cache


async def recommend_for(cache: ModelCache, body: RecommendRequest) -> tuple[Served, list]:
    """Load (or find) the subject, check the candidates against its catalogue, and wait
    for the answer from the subject's micro-batcher."""
    served = await cache.get(body.subject)
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


@router.post("/recommend", response_model=RecommendResponse, responses=ERRORS)
async def recommend(body: RecommendRequest, request: Request) -> RecommendResponse:
    """Ranked items for a history, with the subject's version and digest."""
    served, ranked = await recommend_for(cache_of(request), body)
    model = served.model
    return RecommendResponse(subject=served.subject.name, kind=model.kind, version=model.version,
                             digest=model.digest, domain=model.domain,
                             items=[RankedItem(**r.as_dict()) for r in ranked])


@router.get("/subjects")
def subjects(request: Request) -> list[dict[str, Any]]:  # plain defs run on a worker thread
    """Every composition and adapter version that can be asked for, and whether it is loaded."""
    cache = cache_of(request)
    registry = cache.registry
    loaded, failed = cache.batching_stats(), cache.failures()
    rows = [{"subject": s.name, "kind": s.kind, "domain": s.domain, "mode": s.mode,
             "digest": s.digest, "version": s.version,
             **({"sources": list(s.sources)} if s.kind == "composition" else
                {"status": s.status, "base_model": s.base_model})}
            for s in list_subjects(registry)]
    for row in rows:
        row["loaded"] = row["subject"] in loaded
        row["batching"] = loaded.get(row["subject"])
        row["load_error"] = failed.get(row["subject"])
    return rows


@router.get("/domains")
def domains(request: Request) -> list[dict[str, Any]]:
    """Registered domains with their data statistics."""
    return [as_dict(row) for row in cache_of(request).registry.domains()]


@router.get("/leaderboard/{domain}", responses=ERRORS)
def board(domain: str, request: Request, protocol: str | None = None) -> list[dict[str, Any]]:
    """The domain's leaderboards, one per comparable group (data, split, protocol, candidates)."""
    return [b.as_dict() for b in leaderboard.leaderboard(cache_of(request).registry, domain, protocol)]
