"""Connecting to the registry database and keeping its schema at head.

Two backends are supported: SQLite (the default, one file under ``$XREG_HOME``) and
PostgreSQL through psycopg 3 (``postgresql+psycopg://``, the ``postgres`` extra) for
a team sharing one registry.

SQLite is opened in WAL mode with a busy timeout and foreign keys on, and every
transaction starts with ``BEGIN IMMEDIATE``: a writer takes the write lock up front
and waits for it (up to the busy timeout) instead of failing half-way with "database
is locked" when two processes register at once.

The schema is changed only by Alembic revisions.  Opening the registry compares the
stored revision with :data:`schema.SCHEMA_HEAD` using one plain query, so the usual
start-up never imports Alembic; only an out-of-date database runs the migrations,
under a lock that serialises first uses across processes: a file lock beside a
SQLite file, a session-level advisory lock on PostgreSQL.

What can go wrong with a database is the user's environment, not our bug: a bad URL,
a driver that is not installed, a corrupt or read-only file, a schema written by a
newer release.  Each becomes a :class:`~xcross_registry.errors.DatabaseError` with
one line that names the file (or the URL, its password masked: :mod:`safe_text`), here in the library
so that Python callers get the same messages as the CLI.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from pathlib import Path
from typing import Iterator

from sqlalchemy import create_engine, event, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.orm import Session, sessionmaker

from . import schema, settings
from .errors import DatabaseError
from .safe_text import mask_url, mask_urls_in

BUSY_TIMEOUT_MS = 60_000
# pg_advisory_lock key of schema migrations: the first 8 bytes (signed) of
# sha256(b"xcross-registry schema migration"), so it cannot collide by accident with
# another application's lock on a shared server.
MIGRATION_LOCK_KEY = 1919529782899178534
POSTGRES_EXTRA = "pip install 'xcross-registry[postgres]'"
URL_FORMS = "sqlite:///PATH or postgresql+psycopg://USER:PASSWORD@HOST:PORT/DATABASE"


def parse_url(url: str) -> URL:
    """The URL of a supported backend; plain ``postgresql://`` means psycopg 3."""
    try:
        parsed = make_url(url)
    except (sa_exc.ArgumentError, ValueError):
        raise DatabaseError(f"invalid database URL {mask_url(url)!r}: expected {URL_FORMS}") from None
    if "@" in (parsed.host or ""):
        raise DatabaseError(f"invalid database URL {mask_url(url)!r}: percent-encode '@' "
                            "in the user name or password as %40 (and '%' as %25)")
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise DatabaseError(f"unsupported database backend {backend!r} in {mask_url(url)!r}: "
                            f"xcross-registry runs on {URL_FORMS}")
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def describe(url: URL) -> str:
    """How an error names the database: the file for SQLite, else the masked URL."""
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        return url.database
    return mask_url(url)


def make_engine(url: str | None = None) -> Engine:
    parsed = parse_url(url or settings.database_url())
    if parsed.get_backend_name() != "sqlite":
        try:
            return create_engine(parsed)
        except ImportError as exc:
            raise DatabaseError(_missing_driver(parsed, exc)) from None
    if parsed.database and parsed.database != ":memory:":
        _prepare_sqlite_file(Path(parsed.database))
    engine = create_engine(parsed, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})

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


def _missing_driver(url: URL, exc: ImportError) -> str:
    module = exc.name or str(exc)
    if url.drivername == "postgresql+psycopg":
        return (f"the PostgreSQL driver (psycopg) is not installed, needed for "
                f"{mask_url(url)}: {POSTGRES_EXTRA}")
    return (f"the database driver {module!r} of {mask_url(url)} is not installed: use a "
            f"postgresql+psycopg:// URL and {POSTGRES_EXTRA}")


def _prepare_sqlite_file(path: Path) -> None:
    """Create the database's folder, or say plainly why it cannot be a database."""
    try:
        _check_sqlite_location(path)
    except OSError as exc:  # a folder on the way that we may not enter, say
        raise DatabaseError(f"cannot open the registry database {path}: {exc.strerror}") from None


def _check_sqlite_location(path: Path) -> None:
    if path.is_dir():
        raise DatabaseError(f"the SQLite database {path} is a folder, not a file")
    existing = path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise DatabaseError(f"cannot create the registry database {path}: {existing} is a file, "
                            "not a folder (check XREG_HOME)")
    path.parent.mkdir(parents=True, exist_ok=True)


def explain(exc: sa_exc.DBAPIError, url: URL) -> DatabaseError | None:
    """The user-facing error behind a driver error, or ``None`` when it is not one the
    user's environment causes (a constraint violation, a bug: those stay as they are)."""
    original = exc.orig if exc.orig is not None else exc
    message = _one_line(original)
    lowered = message.lower()
    where = describe(url)
    sqlstate = getattr(original, "sqlstate", None)
    if "file is not a database" in lowered or "malformed" in lowered:
        return DatabaseError(f"registry database {where} is corrupt ({message}); restore it from "
                             "a backup, or move it away and run 'xreg init' for a new one")
    missing = re.search(r'no such table: (\S+)|relation "([^"]+)" does not exist', message)
    if missing or sqlstate == "42P01":
        table = (missing.group(1) or missing.group(2)) if missing else "?"
        return DatabaseError(f"registry database {where} is damaged: table {table} is missing")
    if "readonly database" in lowered:
        return DatabaseError(f"registry database {where} is read-only; nothing was changed")
    if "unable to open database file" in lowered:
        folder = Path(where).parent
        reason = (f"{folder} is not writable" if folder.is_dir() and not os.access(folder, os.W_OK)
                  else message)
        return DatabaseError(f"cannot open registry database {where}: {reason}")
    if isinstance(exc, sa_exc.OperationalError) and url.get_backend_name() != "sqlite" \
            and (sqlstate is None or sqlstate[:2] in ("08", "28", "3D", "57")):
        return DatabaseError(f"cannot connect to registry database {where}: {message}")
    return None


def _one_line(error: BaseException) -> str:
    """A driver's (often multi-line) message on one line, any URL or ``password=`` pair
    in it masked by position (never by searching for the password's text)."""
    return mask_urls_in(" ".join(line.strip() for line in str(error).splitlines() if line.strip()))


@contextlib.contextmanager
def explained_errors(url: URL) -> Iterator[None]:
    """Re-raise driver errors the user can act on as one-line :class:`DatabaseError`."""
    try:
        yield
    except sa_exc.DBAPIError as exc:
        error = explain(exc, url)
        if error is None:
            raise
        raise error from exc


def current_revision(engine: Engine) -> str | None:
    """The schema revision stored in the database; ``None`` for an empty database.

    One plain query (no reflection): this runs at the start of every command."""
    with explained_errors(engine.url), engine.connect() as connection:
        try:
            return connection.execute(
                text(f"SELECT version_num FROM {schema.VERSION_TABLE}")).scalar()
        except (sa_exc.OperationalError, sa_exc.ProgrammingError) as exc:
            if _is_missing_version_table(exc):
                return None
            raise


def _is_missing_version_table(exc: sa_exc.DBAPIError) -> bool:
    return (getattr(exc.orig, "sqlstate", None) == "42P01"  # PostgreSQL: undefined table
            or f"no such table: {schema.VERSION_TABLE}" in str(exc.orig))


def alembic_config(engine: Engine):
    """Alembic's config for the migrations installed inside the package.

    The engine travels in ``config.attributes`` (``migrations/env.py`` uses it); the
    URL is never written into the config's options, whose ``%`` interpolation would
    choke on (and whose errors would print) a password such as ``p%40ss%25w0rd``."""
    from alembic.config import Config

    from . import migrations

    config = Config()
    # The folder of the installed subpackage: migrations/ in a checkout, or inside
    # site-packages after a non-editable install.
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    config.attributes["engine"] = engine
    return config


def upgrade(engine: Engine) -> str:
    """Bring the schema to head (a no-op when it is already there); return the revision.

    A revision this release does not know was written by a newer release: refused
    before anything is touched."""
    with _migration_lock(engine):
        revision = current_revision(engine)
        if revision != schema.SCHEMA_HEAD:
            _migrate(engine, revision)
            revision = current_revision(engine)
    if revision != schema.SCHEMA_HEAD:
        raise DatabaseError(f"registry schema of {describe(engine.url)} is at {revision}, "
                            f"this xreg expects {schema.SCHEMA_HEAD}")
    return revision


def _migrate(engine: Engine, revision: str | None) -> None:
    from alembic import command
    from alembic.script import ScriptDirectory
    from alembic.script.revision import RevisionError
    from alembic.util import CommandError

    config = alembic_config(engine)
    if revision is not None:
        try:
            ScriptDirectory.from_config(config).get_revision(revision)
        except (CommandError, RevisionError):  # "Can't locate revision identified by …"
            raise DatabaseError(f"registry was written by a newer xcross-registry (revision "
                                f"{revision}); upgrade xcross-registry to use "
                                f"{describe(engine.url)}") from None
    try:
        with explained_errors(engine.url):
            command.upgrade(config, "head")
    except sa_exc.DBAPIError as exc:
        raise DatabaseError(f"upgrading the schema of {describe(engine.url)} from {revision} "
                            f"failed: {_one_line(exc.orig)}") from exc


@contextlib.contextmanager
def _migration_lock(engine: Engine) -> Iterator[None]:
    """One migrating process at a time: an advisory lock held by a PostgreSQL session
    (released by the server if the process dies), a file lock beside a SQLite file."""
    if engine.url.get_backend_name() == "postgresql":
        with explained_errors(engine.url), engine.connect() as connection:
            connection = connection.execution_options(isolation_level="AUTOCOMMIT")
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
            try:
                yield
            finally:
                connection.execute(text("SELECT pg_advisory_unlock(:key)"),
                                   {"key": MIGRATION_LOCK_KEY})
        return
    database = engine.url.database
    if not database or database == ":memory:":
        yield
        return
    lock_path = Path(database).with_name(Path(database).name + ".migrate.lock")
    try:
        handle = open(lock_path, "w")
    except OSError as exc:
        raise DatabaseError(f"cannot create or upgrade the registry database {database}: "
                            f"{lock_path}: {exc.strerror}") from None
    with handle:
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
