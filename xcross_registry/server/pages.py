"""The registry browser: server-rendered HTML pages and server-drawn PNG plots.

Every text from the registry or a user goes through jinja2 with autoescaping on, so
a title such as ``<script>`` shows as text.  Plots reuse the CLI's drawing functions
(``leaderboard.plot``, ``leaderboard.plot_efficiency``, ``xcross.integration.plot_integration``)
and are kept in memory, keyed by what they were drawn from, so they are drawn once.
"""

from __future__ import annotations

import asyncio
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs

import jinja2
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import ValidationError as SchemaError

from .. import composer, leaderboard
from ..composition_methods import composition_method
from ..errors import NotFoundError, XregError
from ..registry import as_dict
from ..xcross.integration import plot_integration
from .api import RecommendRequest, recommend_for
from .models import ModelCache, SubjectUnavailable

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"

router = APIRouter(include_in_schema=False)

_templates = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)), autoescape=True,
                                undefined=jinja2.StrictUndefined)
_templates.filters["f4"] = lambda value: "" if value is None else f"{value:.4f}"
_templates.filters["thousands"] = lambda value: "" if value is None else f"{value:,}"

_plot_lock = threading.Lock()  # pyplot keeps global state: one figure at a time
_plots: dict[tuple, bytes] = {}
EXAMPLE_HISTORY_ITEMS = 5


def _page(name: str, status: int = 200, **context: Any) -> HTMLResponse:
    return HTMLResponse(_templates.get_template(name).render(**context), status_code=status)


def _cache(request: Request) -> ModelCache:
    return request.app.state.cache


def _error_page(status: int, message: str) -> HTMLResponse:
    return _page("error.html", status, title=f"error {status}", message=message)


@router.get("/", response_class=HTMLResponse)
def index(request: Request) -> HTMLResponse:
    registry = _cache(request).registry
    return _page("index.html", title="registry",
                 domains=[as_dict(row) for row in registry.domains()],
                 compositions=[composer.as_dict(row) for row in registry.compositions()],
                 adapters=[as_dict(row) for row in registry.adapters()],
                 loaded=set(_cache(request).loaded()))


@router.get("/domains/{name}", response_class=HTMLResponse)
def domain_page(name: str, request: Request) -> HTMLResponse:
    registry = _cache(request).registry
    try:
        domain = as_dict(registry.domain(name))
    except NotFoundError as exc:
        return _error_page(404, str(exc))
    boards = leaderboard.leaderboard(registry, name)
    return _page("domain.html", title=f"domain {name}", domain=domain,
                 adapters=[as_dict(row) for row in registry.adapters(name)],
                 compositions=[composer.as_dict(row) for row in registry.compositions()
                               if row.target_domain.name == name],
                 boards=boards, columns=leaderboard.COLUMNS,
                 has_fractions=any(row["fraction"] for b in boards for row in b.rows))


@router.get("/compositions/{name}", response_class=HTMLResponse)
def composition_page(name: str, request: Request) -> HTMLResponse:
    registry = _cache(request).registry
    try:
        document = composer.as_dict(registry.composition(name))
    except NotFoundError as exc:
        return _error_page(404, str(exc))
    return _page("composition.html", title=f"composition {name}", c=document,
                 has_integrators=composition_method(document["method"]).has_integrators)


@router.get("/try/{subject}", response_class=HTMLResponse)
async def try_form(subject: str, request: Request) -> HTMLResponse:
    cache = _cache(request)
    try:
        resolved = await cache.resolve(subject)
    except XregError as exc:
        return _error_page(404, str(exc))
    example = await asyncio.get_running_loop().run_in_executor(None, _example_history, cache, resolved.domain)
    return _page("try.html", title=f"try {resolved.name}", subject=resolved.name, domain=resolved.domain,
                 history="\n".join(example), top_k=10, ranked=None, error=None)


@router.post("/try/{subject}", response_class=HTMLResponse)
async def try_submit(subject: str, request: Request) -> HTMLResponse:
    """The form posts ``history`` (one title or id a line) and ``top_k``; the answer is
    the same micro-batched path as ``POST /v1/recommend``."""
    form = parse_qs((await request.body()).decode("utf-8", errors="replace"))
    history_text = (form.get("history") or [""])[0]
    top_text = (form.get("top_k") or ["10"])[0]
    context = {"title": f"try {subject}", "subject": subject, "domain": "", "history": history_text,
               "top_k": top_text, "ranked": None, "error": None}
    status = 200
    try:
        body = RecommendRequest(subject=subject, history=[line for line in history_text.splitlines()
                                                          if line.strip()],
                                top_k=int(top_text) if top_text.strip().isdigit() else 0)
        served, ranked = await recommend_for(_cache(request), body)
        context.update(domain=served.model.domain, ranked=ranked, version=served.model.version)
    except SchemaError as exc:
        status, context["error"] = 422, "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
    except NotFoundError as exc:
        status, context["error"] = 404, str(exc)
    except SubjectUnavailable as exc:
        status, context["error"] = 503, str(exc)
    except HTTPException as exc:
        status, context["error"] = exc.status_code, str(exc.detail)
    except XregError as exc:
        status, context["error"] = 422, str(exc)
    return _page("try.html", status, **context)


def _example_history(cache: ModelCache, domain: str) -> list[str]:
    """A real history to start the form with: the first test user's last few items."""
    data = cache.registry.domain_data(domain)
    users = [user for user in (data.test or data.valid or data.train) if user.history]
    if not users:
        return []
    return [data.items[i].title for i in users[0].history[-EXAMPLE_HISTORY_ITEMS:]]


# ---- plots --------------------------------------------------------------------------------

async def _png(key: tuple, draw: Callable[[Path], Any]) -> Response:
    """The PNG drawn by ``draw(path)``, drawn once per ``key`` on a worker thread."""
    if key not in _plots:
        def render() -> bytes:
            with _plot_lock, tempfile.TemporaryDirectory() as folder:
                path = Path(folder) / "plot.png"
                draw(path)
                return path.read_bytes()

        _plots[key] = await asyncio.get_running_loop().run_in_executor(None, render)
    return Response(_plots[key], media_type="image/png")


def _boards_or_404(request: Request, domain: str) -> list[leaderboard.Board]:
    boards = leaderboard.leaderboard(_cache(request).registry, domain)
    if not boards:
        raise NotFoundError(f"no evaluations on {domain!r} yet")
    return boards


def _stamp(boards: list[leaderboard.Board]) -> int:
    return max(row["evaluation_id"] for board in boards for row in board.rows)


@router.get("/plots/board/{domain}.png")
async def board_plot(domain: str, request: Request) -> Response:
    boards = await asyncio.get_running_loop().run_in_executor(None, _boards_or_404, request, domain)
    return await _png(("board", domain, _stamp(boards)), lambda path: leaderboard.plot(boards, path))


@router.get("/plots/efficiency/{domain}.png")
async def efficiency_plot(domain: str, request: Request) -> Response:
    boards = await asyncio.get_running_loop().run_in_executor(None, _boards_or_404, request, domain)
    return await _png(("efficiency", domain, _stamp(boards)),
                      lambda path: leaderboard.plot_efficiency(boards, path))


@router.get("/plots/integration/{name}.png")
async def integration_plot(name: str, request: Request) -> Response:
    """The composition's per-layer integration weights (``xreg show NAME --plot``)."""
    registry = _cache(request).registry
    row = await asyncio.get_running_loop().run_in_executor(None, registry.composition, name)
    return await _png(("integration", name, row.artifact_digest), lambda path: plot_integration(
        composer.integration_weights(registry, name), path))
