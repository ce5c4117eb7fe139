"""The application: configuration, error mapping, health, and the loop that runs it."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import os
import signal
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException

from ..ann import AnnConfig
from ..checks import finite_positive
from ..errors import NotFoundError, ValidationError, XregError
from ..registry import Registry
from ..runtimes import runtime
from . import api, pages
from .models import LOAD_WAIT_S, NAME_CACHE_S, BatchingConfig, ModelCache, SubjectUnavailable

STATIC_DIR = Path(__file__).resolve().parent / "static"

MAX_BODY_BYTES = 256 * 1024  # far above any real history; a 1 MB body is refused unparsed
DRAIN_FACTOR = 16  # a refused body up to 16 x the limit is read (and dropped) before the 413
# Host headers answered without --allowed-host: the loopback names.  A page on another
# site that rebinds its DNS name to 127.0.0.1 sends its own name as Host, and is refused.
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
TOKEN_VARIABLE = "XREG_SERVE_TOKEN"


@dataclass
class ServerConfig:
    """What ``xreg serve`` was asked for."""

    host: str = "127.0.0.1"
    port: int = 8000
    preload: list[str] = field(default_factory=list)
    max_models: int = 4
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    load_wait_s: float = LOAD_WAIT_S  # a request waits this long for a load, then gets 503
    name_cache_s: float = NAME_CACHE_S  # a name's registry record is reused this long
    # Clients: a bearer token required on /v1 (None: none), Host names answered beside
    # the loopback ones ("*": any), and how long a client may take to send a request's
    # head (request line and headers) and its body before it is answered 408.
    token: str | None = None
    allowed_hosts: list[str] = field(default_factory=list)
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    runtime: str = "torch"  # how request histories are encoded (xcross_registry.runtimes)
    ann: AnnConfig = field(default_factory=AnnConfig)  # when a catalogue gets an approximate index

    def __post_init__(self) -> None:
        runtime(self.runtime)  # a ValidationError naming the known runtimes
        for name in ("header_timeout_s", "body_timeout_s"):
            finite_positive(f"--{name[:-2].replace('_', '-')}", getattr(self, name))
        if self.token is not None and (not self.token or any(c.isspace() for c in self.token)):
            raise ValidationError("the serve token must be non-empty and without spaces")
        if not 0 <= self.load_wait_s <= 600:
            raise ValidationError(f"--load-wait must be between 0 and 600 seconds, not {self.load_wait_s}")
        if not 0 <= self.name_cache_s <= 3600:
            raise ValidationError(f"--name-cache must be between 0 and 3600 seconds, not {self.name_cache_s}")
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

    @property
    def loopback_only(self) -> bool:
        return _is_loopback(self.host)

    def answers_host(self, host: str) -> bool:
        """Whether a request's Host header (with or without a port) is one to answer."""
        name = _host_name(host)
        allowed = {*LOOPBACK_HOSTS, *(_host_name(h) for h in self.allowed_hosts)}
        if not _is_wildcard(self.host):
            allowed.add(_host_name(self.host))  # the address it was asked to listen on
        return "*" in self.allowed_hosts or name in allowed


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
            if int(declared) <= DRAIN_FACTOR * self.limit:
                await self._drain(receive, 0)
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
                        if message.get("more_body", False):
                            await self._drain(receive, received)
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

    async def _drain(self, receive, received: int) -> None:
        """Read and drop the rest of a refused body (up to DRAIN_FACTOR times the limit,
        within the body timeout) before answering: a server that answers and closes on
        unread data breaks the client's own sending before it can read the 413."""
        while received <= DRAIN_FACTOR * self.limit:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                return
            received += len(message.get("body", b""))

    async def _refuse(self, send, size: int) -> None:
        body = json.dumps({"error": f"request body is {size} bytes or more; the limit is "
                                    f"{self.limit} bytes"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def read_token(token_file: str | None) -> str | None:
    """The serve token: the first line of ``token_file``, else ``$XREG_SERVE_TOKEN``, else none."""
    if token_file is None:
        return os.environ.get(TOKEN_VARIABLE) or None
    try:
        text = Path(token_file).read_text()
    except OSError as exc:
        raise ValidationError(f"--token-file {token_file}: {exc.strerror or exc}") from None
    token = text.strip().splitlines()[0].strip() if text.strip() else ""
    if not token:
        raise ValidationError(f"--token-file {token_file} is empty")
    return token


def _host_name(host: str) -> str:
    """``Example.COM:8000`` -> ``example.com``; ``[::1]:8000`` -> ``::1``."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _is_wildcard(host: str) -> bool:
    return host in ("", "0.0.0.0", "::")


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(_host_name(host)).is_loopback
    except ValueError:
        return _host_name(host) == "localhost"


class ClientGuard:
    """ASGI middleware that admits a request before the application sees it: its Host
    header must be one the server answers (DNS rebinding), ``/v1`` needs the bearer token
    when one is set, and the body must arrive within the body timeout (a client that
    stalls mid-body is answered 408 instead of holding a worker)."""

    def __init__(self, app, config: ServerConfig) -> None:
        self.app = app
        self.config = config

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        host = headers.get(b"host", b"").decode("latin-1")
        if not self.config.answers_host(host):
            await _send_json(send, 400, f"this server does not answer Host {host!r}; start it "
                                        f"with --allowed-host {_host_name(host) or 'NAME'} to allow it")
            return
        if self.config.token is not None and scope["path"].startswith("/v1"):
            given = headers.get(b"authorization", b"").decode("latin-1")
            expected = f"Bearer {self.config.token}"
            if not hmac.compare_digest(given.encode(), expected.encode()):
                await _send_json(send, 401, "this server needs 'Authorization: Bearer TOKEN' on /v1"
                                 + (" (the token given is wrong)" if given else ""),
                                 [(b"www-authenticate", b"Bearer")])
                return
        await self.app(scope, self._timed_receive(receive, send), send)

    def _timed_receive(self, receive, send):
        """``receive`` with one deadline for the whole body, counted from its first read."""
        loop = asyncio.get_running_loop()
        state = {"deadline": None, "done": False}

        async def timed():
            if state["done"]:
                return await receive()
            if state["deadline"] is None:
                state["deadline"] = loop.time() + self.config.body_timeout_s
            try:
                message = await asyncio.wait_for(receive(), max(0.0, state["deadline"] - loop.time()))
            except asyncio.TimeoutError:
                state["done"] = True
                with contextlib.suppress(Exception):  # a response already started: just drop it
                    await _send_json(send, 408, f"the request body did not arrive within "
                                                f"{self.config.body_timeout_s:g} s")
                return {"type": "http.disconnect"}
            if message["type"] != "http.request" or not message.get("more_body", False):
                state["done"] = True
            return message

        return timed


async def _send_json(send, status: int, message: str,
                     headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


def header_timeout_protocol(seconds: float):
    """uvicorn's h11 protocol with a deadline on each request's head: a client that opens
    a connection, or starts a request, and does not finish its request line and headers
    within ``seconds`` is answered 408 and disconnected (uvicorn itself waits forever)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    body = json.dumps({"error": f"the request head did not arrive within {seconds:g} s"}).encode()
    timeout_response = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                        b"connection: close\r\ncontent-length: " + str(len(body)).encode()
                        + b"\r\n\r\n" + body)

    class HeadTimeoutProtocol(H11Protocol):
        head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._start_head_timer()

        def data_received(self, data: bytes) -> None:
            cycle = self.cycle
            if self._waiting_for_head():
                self._start_head_timer()
            super().data_received(data)
            if self.cycle is not cycle:  # a new request's head is complete
                self._stop_head_timer()

        def connection_lost(self, exc) -> None:
            self._stop_head_timer()
            super().connection_lost(exc)

        def _waiting_for_head(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def _start_head_timer(self) -> None:
            if self.head_timer is None:
                self.head_timer = self.loop.call_later(seconds, self._head_too_slow)

        def _stop_head_timer(self) -> None:
            if self.head_timer is not None:
                self.head_timer.cancel()
                self.head_timer = None

        def _head_too_slow(self) -> None:
            self.head_timer = None
            if self._waiting_for_head() and not self.transport.is_closing():
                self.transport.write(timeout_response)
                self.transport.close()

    return HeadTimeoutProtocol


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
    cache = ModelCache(registry or Registry(), config.max_models, config.batching, config.runtime, config.ann,
                       load_wait_s=config.load_wait_s, name_cache_s=config.name_cache_s, log=_log)
    preload_state: dict[str, Any] = {"done": not config.preload}

    async def preload() -> None:
        for name in config.preload:
            with contextlib.suppress(XregError, SubjectUnavailable):
                await cache.get(name, patient=True)
        preload_state["done"] = True

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        task = asyncio.create_task(preload()) if config.preload else None
        yield
        if task is not None:
            task.cancel()
        cache.shutdown()

    # FastAPIOffline: FastAPI with /docs and /redoc served from the assets its package
    # installs (FastAPI's own pages load them from a CDN); no validator badge either.
    app = FastAPIOffline(title="xcross-registry", version="1", static_url="/static/docs",
                         favicon_url="/static/favicon.svg",
                         swagger_ui_parameters={"validatorUrl": None},
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
        response = _error(503, str(exc))
        if exc.retry_after is not None:  # still loading: when to ask again
            response.headers["Retry-After"] = str(exc.retry_after)
        return response

    @app.exception_handler(XregError)
    async def user_error(request: Request, exc: XregError) -> JSONResponse:
        return _error(422, str(exc))

    @app.api_route("/healthz", methods=["GET", "HEAD"], tags=["health"], response_model=api.Health)
    async def healthz() -> dict[str, str]:
        """The process answers."""
        return {"status": "ok"}

    @app.api_route("/readyz", methods=["GET", "HEAD"], tags=["health"], response_model=api.Readiness,
                   responses={503: {"model": api.Readiness, "description": "Not ready yet, or a "
                                    "--preload subject failed to load."}})
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
    app.add_middleware(ClientGuard, config=config)  # outermost: admits before anything runs
    return app


def _log(line: str) -> None:
    """The server log: loads and their progress, on stderr."""
    print(f"xreg serve: {line}", file=sys.stderr, flush=True)


def serve(config: ServerConfig) -> None:
    """Check the preload names, bind the socket, and serve until interrupted."""
    import uvicorn

    from ..subjects import resolve_subject

    registry = Registry()
    for name in config.preload:
        resolve_subject(registry, name).check_serves()  # a typo fails now, not in the log
    if not config.loopback_only and config.token is None:
        print(f"warning: listening on {config.host} without a token: anyone who can reach this "
              f"machine can use the API; set --token-file or {TOKEN_VARIABLE}", file=sys.stderr, flush=True)
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
                                           access_log=False,
                                           http=header_timeout_protocol(config.header_timeout_s)))
    # uvicorn shuts down gracefully on SIGTERM and then re-raises it: the process ends by
    # the signal as a server should, not through the CLI's "nothing was registered" line.
    with contextlib.suppress(ValueError):  # not the main thread
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    server.run(sockets=[sock])
