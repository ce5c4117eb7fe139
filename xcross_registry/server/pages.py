"""The registry browser: server-rendered HTML pages and server-drawn SVG plots.

Every page is a GET with its state in the URL (boards' protocol, split, candidates and
sort; searches; a "try it" history), so any view can be bookmarked or shared.  Every
text from the registry or a user goes through jinja2 with autoescaping on, so a title
such as ``<script>`` shows as text.  What a page shows is read by :mod:`.views`; plots
reuse the CLI's drawing functions (``leaderboard.plot``, ``leaderboard.plot_efficiency``,
``xcross.integration.plot_integration``) as vector SVG (text stays sharp and readable
when a phone zooms), kept in memory keyed by what they were drawn from.
"""

from __future__ import annotations

import asyncio
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable

import jinja2
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import ValidationError as SchemaError

from .. import composer, leaderboard
from ..candidates import PROTOCOLS, check_protocol
from ..errors import NotFoundError, XregError
from ..evaluation import compare as compare_results
from ..registry import as_dict
from ..xcross.integration import plot_integration
from . import views
from .api import MAX_HISTORY_ITEMS, MAX_TITLE_CHARS, MAX_TOP_K, RecommendRequest, match_report, \
    recommend_for, with_verdicts
from .models import ModelCache, SubjectLoading, SubjectUnavailable

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"

router = APIRouter(include_in_schema=False)

_templates = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)), autoescape=True,
                                undefined=jinja2.StrictUndefined)
_templates.filters["f4"] = lambda value: "" if value is None else f"{value:.4f}"
_templates.filters["f3"] = lambda value: "" if value is None else f"{value:.3f}"
_templates.filters["thousands"] = lambda value: "" if value is None else f"{value:,}"
_templates.filters["short"] = lambda digest: (digest or "")[:12]
_templates.globals["path"] = views.path

_plot_lock = threading.Lock()  # pyplot keeps global state: one figure at a time
_plots: dict[tuple, bytes] = {}
EXAMPLE_HISTORY_ITEMS = 5
ITEMS_SHOWN = 50
# A person waits at most this long for a model's load before the page says it is loading
# (with its progress) and reloads itself; API clients wait --load-wait.
PAGE_LOAD_WAIT_S = 2.0


def _page(request: Request, template: str, status: int = 200, headers: dict[str, str] | None = None,
          **context: Any) -> HTMLResponse:
    """Render a template with what every page uses: the registry's names (links) and
    the serving state of each model."""
    cache = _cache(request)
    body = _templates.get_template(template).render(names=views.Names(cache.registry), state=cache.state,
                                                **context)
    return HTMLResponse(body, status_code=status, headers=headers)


def _cache(request: Request) -> ModelCache:
    return request.app.state.cache


def _error_page(request: Request, status: int, message: str, heading: str | None = None,
                headers: dict[str, str] | None = None) -> HTMLResponse:
    return _page(request, "error.html", status, headers, title=heading or f"error {status}", message=message)


def _shown(request: Request, template: str, title: Callable[[dict], str],
           build: Callable[[], dict[str, Any]]) -> HTMLResponse:
    """The page ``template`` for what ``build`` reads; an unknown name is a 404 page and
    a bad parameter a 422 page, each with its one-line reason.  A page that shows its
    own error under its form (compare) answers 422 too."""
    try:
        context = build()
    except NotFoundError as exc:
        return _error_page(request, 404, str(exc))
    except XregError as exc:
        return _error_page(request, 422, str(exc))
    return _page(request, template, 422 if context.get("error") else 200, title=title(context), **context)


@router.get("/", response_class=HTMLResponse)
def index(request: Request) -> HTMLResponse:
    registry = _cache(request).registry
    return _page(request, "index.html", title="registry",
                 domains=[as_dict(row) for row in registry.domains()],
                 compositions=[composer.as_dict(row) for row in registry.compositions()],
                 adapters=[as_dict(row) for row in registry.adapters()],
                 baselines=[as_dict(row) for row in registry.baseline_models()])


@router.get("/domains/{name}", response_class=HTMLResponse)
def domain_page(name: str, request: Request, protocol: str | None = None, split: str | None = None,
                candidates: str | None = None, sort: str | None = None,
                order: str | None = None) -> HTMLResponse:
    """A domain: its data, every adapter version, compositions and baselines, and its
    boards filtered and sorted by the query string."""
    registry = _cache(request).registry

    def build() -> dict[str, Any]:
        context = views.domain_view(registry, name)
        context.update(views.boards_view(registry, name, protocol, split, candidates, sort, order))
        return context

    return _shown(request, "domain.html", lambda c: f"domain {name}", build)


@router.get("/domains/{name}/items", response_class=HTMLResponse)
def items_page(name: str, request: Request, q: str = "", limit: int = ITEMS_SHOWN) -> HTMLResponse:
    """``xreg items NAME --search Q``: the items to write a history with, each with a
    link that tries it on the domain's recommenders."""
    registry = _cache(request).registry

    def build() -> dict[str, Any]:
        found = registry.find_items(name, q)
        return {"domain": name, "query": q, "found": len(found), "items": found[:max(1, limit)],
                "recommenders": views.recommenders_of(registry, name)}

    return _shown(request, "items.html", lambda c: f"items of {name}", build)


@router.get("/adapters/{label}", response_class=HTMLResponse)
def adapter_page(label: str, request: Request) -> HTMLResponse:
    return _shown(request, "adapter.html", lambda c: f"adapter {c['name']}",
                  lambda: views.adapter_view(_cache(request).registry, label))


@router.get("/compositions/{name}", response_class=HTMLResponse)
def composition_page(name: str, request: Request) -> HTMLResponse:
    return _shown(request, "composition.html", lambda c: f"composition {name}",
                  lambda: views.composition_view(_cache(request).registry, name))


@router.get("/baselines/{name}", response_class=HTMLResponse)
def baseline_page(name: str, request: Request) -> HTMLResponse:
    return _shown(request, "baseline.html", lambda c: f"baseline {c['name']}",
                  lambda: views.baseline_view(_cache(request).registry, name))


@router.get("/runs/{name}", response_class=HTMLResponse)
def run_page(name: str, request: Request) -> HTMLResponse:
    return _shown(request, "run.html", lambda c: f"run of {c['name']}",
                  lambda: views.run_view(_cache(request).registry, name))


@router.get("/compare", response_class=HTMLResponse)
def compare_page(request: Request, domain: str = "", a: str = "", b: str = "",
                 protocol: str = PROTOCOLS[0]) -> HTMLResponse:
    """``xreg compare DOMAIN A B``: the paired differences of two results on the same
    users and candidates, with a form to pick others."""
    registry = _cache(request).registry

    def build() -> dict[str, Any]:
        check_protocol(protocol, "test")
        subjects = sorted({row["subject"] for row in registry.evaluations(domain or None, protocol)})
        context = {"domain": domain, "a": a, "b": b, "protocol": protocol, "protocols": PROTOCOLS,
                   "domains": [d.name for d in registry.domains()], "subjects": subjects,
                   "comparison": None, "error": None}
        if domain and a and b:
            try:
                context["comparison"] = with_verdicts(compare_results(registry, domain, a, b, protocol))
            except XregError as exc:  # on the page, under the form that asked
                context["error"] = str(exc)
        return context

    return _shown(request, "compare.html", lambda c: "compare", build)


@router.get("/search", response_class=HTMLResponse)
def search_page(request: Request, q: str = "") -> HTMLResponse:
    return _shown(request, "search.html", lambda c: f"search {q}".strip(),
                  lambda: views.search_view(_cache(request).registry, q))


# ---- try it ---------------------------------------------------------------------------

# What the form says instead of pydantic's wording, by the field a problem is in.
FORM_PROBLEMS = {
    "history": f"History: give 1 to {MAX_HISTORY_ITEMS} item titles or ids, one a line, each at "
               f"most {MAX_TITLE_CHARS} characters.",
    "candidates": f"Candidates: leave empty to rank the whole catalogue, or give item titles or "
                  f"ids, one a line, each at most {MAX_TITLE_CHARS} characters.",
    "top_k": f"How many: a whole number from 1 to {MAX_TOP_K}.",
}


def _lines(text: str | None) -> list[str]:
    return [line for line in (text or "").splitlines() if line.strip()]


@router.get("/try/{subject}", response_class=HTMLResponse)
async def try_page(subject: str, request: Request, history: str | None = None,
                   candidates: str | None = None, top_k: str = "10") -> HTMLResponse:
    """The "try it" form and, when the URL carries a ``history`` (one title or id a
    line), its answer: the same micro-batched path as ``POST /v1/recommend``, so a
    result has a URL to share."""
    cache = _cache(request)
    try:
        resolved = await cache.resolve(subject)
    except XregError as exc:
        return _error_page(request, 404, str(exc))
    loop = asyncio.get_running_loop()
    example = await loop.run_in_executor(None, _example_history, cache, resolved.domain)
    context = {"title": f"try {resolved.name}", "subject": resolved.name, "domain": resolved.domain,
               "history": history if history is not None else "\n".join(example),
               "example": "\n".join(example), "candidates": candidates or "", "top_k": top_k,
               "ranked": None, "matches": None, "error": None, "loading": None}
    if history is None:
        return _page(request, "try.html", **context)
    status, headers = 200, None
    try:
        body = RecommendRequest(subject=resolved.name, history=_lines(history),
                                candidates=_lines(candidates) or None,
                                top_k=int(top_k) if top_k.strip().isdigit() else 0)
        served, ranked = await recommend_for(cache, body, min(PAGE_LOAD_WAIT_S, cache.load_wait_s))
        context.update(ranked=ranked, matches=match_report(served.model, body.history))
    except SchemaError as exc:
        fields = dict.fromkeys(str(e["loc"][0]) for e in exc.errors())
        status, context["error"] = 422, " ".join(FORM_PROBLEMS.get(f, f) for f in fields)
    except SubjectLoading as exc:
        status, headers = 503, {"Retry-After": str(exc.retry_after)}
        context.update(loading=exc.progress.describe(), retry_after=exc.retry_after, error=str(exc))
    except NotFoundError as exc:
        status, context["error"] = 404, str(exc)
    except SubjectUnavailable as exc:
        status, context["error"] = 503, str(exc)
    except HTTPException as exc:
        status, context["error"] = exc.status_code, str(exc.detail)
    except XregError as exc:
        status, context["error"] = 422, str(exc)
    return _page(request, "try.html", status, headers, **context)


def _example_history(cache: ModelCache, domain: str) -> list[str]:
    """A real history to start the form with: the first test user's last few items."""
    data = cache.registry.domain_data(domain)
    users = [user for user in (data.test or data.valid or data.train) if user.history]
    if not users:
        return []
    return [data.items[i].title for i in users[0].history[-EXAMPLE_HISTORY_ITEMS:]]


# ---- plots --------------------------------------------------------------------------------

async def _svg(key: tuple, draw: Callable[[Path], Any]) -> Response:
    """The SVG drawn by ``draw(path)``, drawn once per ``key`` on a worker thread."""
    if key not in _plots:
        def render() -> bytes:
            with _plot_lock, tempfile.TemporaryDirectory() as folder:
                path = Path(folder) / "plot.svg"
                draw(path)
                return path.read_bytes()

        _plots[key] = await asyncio.get_running_loop().run_in_executor(None, render)
    return Response(_plots[key], media_type="image/svg+xml")


def _boards_or_404(request: Request, domain: str, protocol: str | None, split: str | None,
                   candidates: str | None) -> list[leaderboard.Board]:
    boards = leaderboard.leaderboard(_cache(request).registry, domain, protocol or None, split or None,
                                     candidates or None)
    if not boards:
        raise NotFoundError(f"no evaluations on {domain!r} yet")
    return boards


def _stamp(boards: list[leaderboard.Board]) -> tuple:
    return tuple(sorted(row["evaluation_id"] for board in boards for row in board.rows))


@router.get("/plots/board/{domain}.svg")
async def board_plot(domain: str, request: Request, protocol: str | None = None, split: str | None = None,
                     candidates: str | None = None) -> Response:
    boards = await asyncio.get_running_loop().run_in_executor(
        None, _boards_or_404, request, domain, protocol, split, candidates)
    return await _svg(("board", domain, _stamp(boards)), lambda path: leaderboard.plot(boards, path))


@router.get("/plots/efficiency/{domain}.svg")
async def efficiency_plot(domain: str, request: Request, protocol: str | None = None,
                          split: str | None = None, candidates: str | None = None) -> Response:
    boards = await asyncio.get_running_loop().run_in_executor(
        None, _boards_or_404, request, domain, protocol, split, candidates)
    return await _svg(("efficiency", domain, _stamp(boards)),
                      lambda path: leaderboard.plot_efficiency(boards, path))


@router.get("/plots/integration/{name}.svg")
async def integration_plot(name: str, request: Request) -> Response:
    """The composition's per-layer integration weights (``xreg show NAME --plot``)."""
    registry = _cache(request).registry
    row = await asyncio.get_running_loop().run_in_executor(None, registry.composition, name)
    return await _svg(("integration", name, row.artifact_digest), lambda path: plot_integration(
        composer.integration_weights(registry, name), path))
