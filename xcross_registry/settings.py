"""Where the registry lives: ``$XREG_HOME`` (default ``~/.xreg``) and ``$XREG_DATABASE_URL``.

Read at call time, not import time, so tests and long-lived processes can point the
library at another home by changing the environment.
"""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    return Path(os.environ.get("XREG_HOME") or Path.home() / ".xreg").expanduser()


def database_url() -> str:
    """Any SQLAlchemy URL; SQLite at ``$XREG_HOME/registry.db`` by default."""
    return os.environ.get("XREG_DATABASE_URL") or f"sqlite:///{home() / 'registry.db'}"


def artifacts_root() -> Path:
    return home() / "artifacts"


def artifacts_location() -> str:
    """``$XREG_ARTIFACTS``: a folder or an fsspec URL (``s3://bucket/prefix``) shared by
    replicas on several machines; ``$XREG_HOME/artifacts`` by default."""
    return os.environ.get("XREG_ARTIFACTS") or str(artifacts_root())
