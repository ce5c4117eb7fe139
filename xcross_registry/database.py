"""Connecting to the registry database and keeping its schema at head.

SQLite (the default) is opened in WAL mode with a busy timeout and foreign keys on,
and every transaction starts with ``BEGIN IMMEDIATE``: a writer takes the write lock
up front and waits for it (up to the busy timeout) instead of failing half-way with
"database is locked" when two processes register at once.

The schema is changed only by Alembic revisions.  Opening the registry compares the
stored revision with :data:`schema.SCHEMA_HEAD` using one plain query, so the usual
start-up never imports Alembic; only an out-of-date database runs the migrations,
under a file lock so that two first uses do not migrate at the same time.
"""

from __future__ import annotations

import contextlib
import fcntl
from pathlib import Path
from typing import Iterator

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import OperationalError, ProgrammingError
from sqlalchemy.orm import Session, sessionmaker

from . import schema, settings
from .errors import XregError

BUSY_TIMEOUT_MS = 60_000


def make_engine(url: str | None = None) -> Engine:
    url = url or settings.database_url()
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, future=True)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection, _record) -> None:
        # Let SQLAlchemy, not the driver, decide when transactions begin (below).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def current_revision(engine: Engine) -> str | None:
    """The schema revision stored in the database; ``None`` for an empty database.

    One plain query (no reflection): this runs at the start of every command."""
    with engine.connect() as connection:
        try:
            return connection.execute(
                text(f"SELECT version_num FROM {schema.VERSION_TABLE}")).scalar()
        except OperationalError:  # no version table yet
            return None
        except ProgrammingError:  # the same, as PostgreSQL reports it
            return None


def alembic_config(engine: Engine):
    """Alembic's config for the migrations installed inside the package."""
    from alembic.config import Config

    from . import migrations

    config = Config()
    # The folder of the installed subpackage: migrations/ in a checkout, or inside
    # site-packages after a non-editable install.
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    config.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False))
    config.attributes["engine"] = engine
    return config


def upgrade(engine: Engine) -> str:
    """Bring the schema to head (a no-op when it is already there); return the revision."""
    with _migration_lock(engine):
        if current_revision(engine) != schema.SCHEMA_HEAD:
            from alembic import command

            command.upgrade(alembic_config(engine), "head")
        revision = current_revision(engine)
    if revision != schema.SCHEMA_HEAD:
        raise XregError(f"registry schema is at {revision}, this xreg expects {schema.SCHEMA_HEAD}")
    return revision


@contextlib.contextmanager
def _migration_lock(engine: Engine) -> Iterator[None]:
    database = engine.url.database if engine.url.get_backend_name() == "sqlite" else None
    if not database or database == ":memory:":
        yield
        return
    lock_path = Path(database).with_name(Path(database).name + ".migrate.lock")
    with open(lock_path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def open_session_factory(url: str | None = None) -> sessionmaker[Session]:
    """Engine for ``url`` with the schema at head, as a session factory."""
    engine = make_engine(url)
    if current_revision(engine) != schema.SCHEMA_HEAD:
        upgrade(engine)
    return sessionmaker(engine, expire_on_commit=False)
