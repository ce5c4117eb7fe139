"""The application: configuration, error mapping, health, and the loop that runs it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from ..ann import AnnConfig
from ..errors import NotFoundError, ValidationError, XregError
from ..registry import Registry
from ..runtimes import runtime
from . import api, pages
from .models import BatchingConfig, ModelCache, SubjectUnavailable

STATIC_DIR = Path(__file__).resolve().parent / "static"

MAX_BODY_BYTES = 256 * 1024  # far above any real history; a 1 MB body is refused unread


@dataclass
class ServerConfig:
    """What ``xreg serve`` was asked for."""

    host: str = "127.0.0.1"
    port: int = 8000
    preload: list[str] = field(default_factory=list)
    max_models: int = 4
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    runtime: str = "torch"  # how request histories are encoded (xcross_registry.runtimes)
    ann: AnnConfig = field(default_factory=AnnConfig)  # when a catalogue gets an approximate index

    def __post_init__(self) -> None:
        runtime(self.runtime)  # a ValidationError naming the known runtimes
        if self.max_models < 1:
            raise ValidationError(f"--max-models must be at least 1, not {self.max_models}")
        if len(self.preload) > self.max_models:
            raise ValidationError(f"--preload names {len(self.preload)} models but --max-models is "
                                  f"{self.max_models}")
        if self.batching.max_batch < 1:
            raise ValidationError(f"--max-batch must be at least 1, not {self.batching.max_batch}")
        if not 0 <= self.batching.wait_s <= 1:
            raise ValidationError("--batch-wait-ms must be between 0 and 1000")
        if not 0 <= self.port <= 65535:
            raise ValidationError(f"--port must be between 0 and 65535, not {self.port}")


class BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes gets 413 before it is parsed,
    whether it announces its length or streams in chunks."""

    def __init__(self, app, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._refuse(send, int(declared))
            return
        received = 0
        started = refused = False

        async def counting_receive():
            # Past the limit the client is answered 413 here, and the application sees
            # a disconnect: whatever it answers to that is dropped.
            nonlocal received, refused
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit and not refused:
                    refused = True
                    if not started:
                        await self._refuse(send, received)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message):
            nonlocal started
            if refused:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        await self.app(scope, counting_receive, guarded_send)

    async def _refuse(self, send, size: int) -> None:
        body = json.dumps({"error": f"request body is {size} bytes or more; the limit is "
                                    f"{self.limit} bytes"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def _error(status: int, message: str, details: list[dict[str, Any]] | None = None) -> JSONResponse:
    content: dict[str, Any] = {"error": message}
    if details is not None:
        content["details"] = details
    return JSONResponse(content, status_code=status)


def _where(location: tuple) -> str:
    parts = [str(part) for part in location if part != "body"]
    return ".".join(parts) or "body"


def create_app(config: ServerConfig, registry: Registry | None = None) -> FastAPI:
    """The FastAPI application for ``config`` over ``registry`` (default: $XREG_HOME's)."""
    cache = ModelCache(registry or Registry(), config.max_models, config.batching, config.runtime, config.ann)
    preload_state: dict[str, Any] = {"done": not config.preload}

    async def preload() -> None:
        for name in config.preload:
            with contextlib.suppress(XregError, SubjectUnavailable):
                await cache.get(name)
        preload_state["done"] = True

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        task = asyncio.create_task(preload()) if config.preload else None
        yield
        if task is not None:
            task.cancel()
        cache.shutdown()

    app = FastAPI(title="xcross-registry", version="1", docs_url=None, redoc_url=None,
                  description="Recommendations from registered X-Cross compositions and LoRA "
                              "adapters, and a browser for the registry.", lifespan=lifespan)
    app.state.cache = cache
    app.state.config = config

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        for e in errors:
            if e["type"] == "json_invalid":
                return _error(422, "invalid request: the body is not valid JSON "
                                   f"({e['ctx']['error']} at character {e['loc'][-1]})")
        message = "; ".join(f"{_where(e['loc'])}: {e['msg']}" for e in errors[:5])
        return _error(422, f"invalid request: {message}",
                      [{"location": _where(e["loc"]), "problem": e["msg"]} for e in errors])

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(NotFoundError)
    async def not_found(request: Request, exc: NotFoundError) -> JSONResponse:
        return _error(404, str(exc))

    @app.exception_handler(SubjectUnavailable)
    async def unavailable(request: Request, exc: SubjectUnavailable) -> JSONResponse:
        return _error(503, str(exc))

    @app.exception_handler(XregError)
    async def user_error(request: Request, exc: XregError) -> JSONResponse:
        return _error(422, str(exc))

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        """The process answers."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    async def readyz() -> JSONResponse:
        """Ready once every --preload subject has been tried: 200 when all loaded, else 503."""
        failed = {name: message for name, message in cache.failures().items() if name in config.preload}
        document = {"ready": preload_state["done"] and not failed, "loaded": cache.loaded(),
                    "loading": sorted(cache.loading), "failed": failed}
        return JSONResponse(document, status_code=200 if document["ready"] else 503)

    app.include_router(api.router)
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)
    return app


def serve(config: ServerConfig) -> None:
    """Check the preload names, bind the socket, and serve until interrupted."""
    import uvicorn

    from ..subjects import resolve_subject

    registry = Registry()
    for name in config.preload:
        resolve_subject(registry, name).check_serves()  # a typo fails now, not in the log
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((config.host, config.port))
    except OSError as exc:
        sock.close()
        raise ValidationError(f"cannot listen on {config.host}:{config.port}: "
                              f"{exc.strerror or exc}") from None
    sock.listen(2048)
    host, port = sock.getsockname()[:2]
    print(f"xreg serve: http://{host}:{port}/ (API under /v1, schema at /openapi.json)",
          file=sys.stderr, flush=True)
    server = uvicorn.Server(uvicorn.Config(create_app(config, registry), log_level="warning",
                                           access_log=False))
    server.run(sockets=[sock])
