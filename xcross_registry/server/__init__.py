"""``xreg serve``: one long-lived process that answers recommendations over HTTP and
shows the registry in a browser.

- ``models``: subjects loaded on first use into an LRU bounded by count, each with a
  micro-batcher that scores the requests arriving together in shared forward passes;
- ``api``: the JSON API under ``/v1`` (OpenAPI at ``/openapi.json``);
- ``pages``: server-rendered HTML at ``/`` (no build step, no CDN: it works offline),
  with plots drawn by matplotlib on the server;
- ``app``: configuration, error mapping, health checks and the uvicorn loop.

FastAPI, uvicorn and jinja2 come with the ``serve`` extra and are imported only here.
"""

from .app import ServerConfig, create_app, serve
from .models import BatchingConfig

__all__ = ["BatchingConfig", "ServerConfig", "create_app", "serve"]
