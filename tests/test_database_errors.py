"""A database the user's environment broke gives one ``error:`` line and changes nothing.

Each case is run through the CLI (exit code, the single stderr line, the files of the
registry before and after) and, where it matters, through the library, which raises
:class:`DatabaseError` for Python callers too.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from xcross_registry import database
from xcross_registry.errors import DatabaseError
from xcross_registry.registry import Registry
from xcross_registry.safe_text import mask_url, mask_urls_in

SECRET = "p%40ss%25w0rd"  # p@ss%w0rd, percent-encoded as a URL needs it
DOMAIN = ("--plugin", "synthetic", "--data", "toys?users=20&items=60&max_len=6")


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with the sha256 of its bytes ('' for a folder).

    SQLite's ``-shm`` file is left out: it is the WAL's shared-memory index, which
    every reader rewrites; the database and its WAL hold the data."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file()
            else "" for p in sorted(folder.rglob("*")) if not p.name.endswith("-shm")}


def one_error_line(result) -> str:
    assert result.exit_code == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.fixture
def registered(xreg, xreg_home) -> Path:
    """A registry with one domain, ``toys``, all of it in the database file (WAL
    checkpointed, as after the last process using it exited); returns that file."""
    assert xreg("add-domain", "toys", *DOMAIN).exit_code == 0
    gc.collect()  # close the in-process command's pooled connections
    path = xreg_home / "registry.db"
    with contextlib.closing(sqlite3.connect(path)) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return path


def damage(path: Path, how: str) -> None:
    size = path.stat().st_size
    if how == "zeroed":
        path.write_bytes(b"\0" * size)
    elif how == "truncated-half":
        os.truncate(path, size // 2)
    elif how == "truncated-header":
        os.truncate(path, 100)
    else:  # random bytes of the same size
        path.write_bytes(os.urandom(size))


@pytest.mark.parametrize("how", ["zeroed", "truncated-half", "truncated-header", "random"])
@pytest.mark.parametrize("command", [["domains"], ["add-domain", "tools", *DOMAIN],
                                     ["remove", "toys"], ["init"]])
def test_corrupt_database_is_named_and_left_alone(xreg, xreg_home, registered, how, command):
    damage(registered, how)
    before = snapshot(xreg_home)
    line = one_error_line(xreg(*command))
    assert line.startswith(f"error: registry database {registered} is corrupt ("), line
    assert snapshot(xreg_home) == before


def test_corrupt_database_raises_for_python_callers(registered):
    damage(registered, "zeroed")
    with pytest.raises(DatabaseError, match="is corrupt"):
        Registry()


def test_schema_from_a_newer_release_is_refused_untouched(xreg, xreg_home, registered):
    with sqlite3.connect(registered) as connection:
        connection.execute("UPDATE xreg_schema_version SET version_num = 'ffff'")
    before = snapshot(xreg_home)
    for command in (["domains"], ["init"], ["add-domain", "tools", *DOMAIN]):
        line = one_error_line(xreg(*command))
        assert line == ("error: registry was written by a newer xcross-registry (revision ffff); "
                        f"upgrade xcross-registry to use {registered}")
    assert snapshot(xreg_home) == before


def test_missing_table_on_remove_rolls_back(xreg, registered):
    with sqlite3.connect(registered) as connection:
        connection.execute("DROP TABLE tags")
    line = one_error_line(xreg("remove", "toys"))
    assert line == f"error: registry database {registered} is damaged: table tags is missing"
    with sqlite3.connect(registered) as connection:
        assert connection.execute("SELECT name FROM domains").fetchall() == [("toys",)]


def test_home_that_is_a_file(xreg, xreg_home, monkeypatch, tmp_path):
    file = tmp_path / "not-a-folder"
    file.write_text("x")
    monkeypatch.setenv("XREG_HOME", str(file))
    line = one_error_line(xreg("domains"))
    assert line == (f"error: cannot create the registry database {file / 'registry.db'}: {file} "
                    "is a file, not a folder (check XREG_HOME)")
    assert file.read_text() == "x"


@pytest.mark.parametrize("url, message", [
    ("definitely not a url", "error: invalid database URL 'definitely not a url': expected "
                             "sqlite:///PATH or postgresql+psycopg://USER:PASSWORD@HOST:PORT/DATABASE"),
    (f"mysql://xreg:{SECRET}@127.0.0.1/xreg", "error: unsupported database backend 'mysql' in "
                                             "'mysql://xreg:***@127.0.0.1/xreg'"),
    (f"oracle+nodriver://xreg:{SECRET}@h/db", "error: unsupported database backend 'oracle'"),
    ("postgresql://xreg:p@ss%w0rd@127.0.0.1/xreg", "error: invalid database URL "
                                                  "'postgresql://xreg:***@127.0.0.1/xreg': "
                                                  "percent-encode '@'"),
    (f"postgresql+psycopg2://xreg:{SECRET}@127.0.0.1/xreg",
     "error: the database driver 'psycopg2' of postgresql+psycopg2://xreg:***@127.0.0.1/xreg is "
     "not installed: use a postgresql+psycopg:// URL and pip install 'xcross-registry[postgres]'"),
])
def test_bad_database_urls(xreg, xreg_home, monkeypatch, url, message):
    monkeypatch.setenv("XREG_DATABASE_URL", url)
    if "psycopg2" in url:  # whether or not psycopg2 happens to be installed
        monkeypatch.setitem(sys.modules, "psycopg2", None)
    line = one_error_line(xreg("domains"))
    assert line.startswith(message), line
    assert "ss%w0rd" not in line and "ss%25w0rd" not in line
    assert not xreg_home.exists()


def test_postgres_url_without_its_driver_names_the_extra(xreg, monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if the extra were not installed
    for url in (f"postgresql://xreg:{SECRET}@127.0.0.1:5/xreg",
                f"postgresql+psycopg://xreg:{SECRET}@127.0.0.1:5/xreg"):
        monkeypatch.setenv("XREG_DATABASE_URL", url)
        line = one_error_line(xreg("init"))
        assert line == ("error: the PostgreSQL driver (psycopg) is not installed, needed for "
                        "postgresql+psycopg://xreg:***@127.0.0.1:5/xreg: "
                        "pip install 'xcross-registry[postgres]'")
    with pytest.raises(DatabaseError, match=r"xcross-registry\[postgres\]"):
        Registry(url=f"postgresql://xreg:{SECRET}@127.0.0.1:5/xreg")


def test_sqlite_url_naming_a_folder(xreg, monkeypatch, tmp_path):
    monkeypatch.setenv("XREG_DATABASE_URL", f"sqlite:///{tmp_path}")
    before = snapshot(tmp_path)
    line = one_error_line(xreg("add-domain", "toys", *DOMAIN))
    assert line == f"error: the SQLite database {tmp_path} is a folder, not a file"
    assert snapshot(tmp_path) == before


def test_masked_urls():
    assert mask_url(f"postgresql+psycopg://u:{SECRET}@h:5/d") == \
        "postgresql+psycopg://u:***@h:5/d"
    assert mask_url("postgresql://u:p@ss%w0rd@h/d") == "postgresql://u:***@h/d"
    assert mask_url("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"
    assert mask_url(database.parse_url(f"postgresql://u:{SECRET}@h/d")) == \
        "postgresql+psycopg://u:***@h/d"


def test_urls_are_masked_by_position_in_userinfo_and_query():
    # A password in the query string (libpq's form) is masked as well as one in the userinfo.
    assert mask_url("postgresql://127.0.0.1:5432/db?user=u&password=s3cret&sslmode=require") == \
        "postgresql://127.0.0.1:5432/db?user=u&password=***&sslmode=require"
    assert mask_url("postgresql://u:pw@h/db?PassWord=x&sslpassword=y") == \
        "postgresql://u:***@h/db?PassWord=***&sslpassword=***"
    assert mask_url(database.parse_url("postgresql://h:5/db?user=u&password=p")) == \
        "postgresql+psycopg://h:5/db?password=***&user=u"
    # By position, not by text: a one-letter password leaves "port", "p" and "postgresql" alone.
    assert mask_url("postgresql://p:p@port/p?password=p") == "postgresql://p:***@port/p?password=***"
    message = ('connection to postgresql://u:p@h:5/d failed at port 5; retry '
               'postgresql://h:5/d?password=p&user=u or "host=h password=p port=5"')
    assert mask_urls_in(message) == ('connection to postgresql://u:***@h:5/d failed at port 5; retry '
                                      'postgresql://h:5/d?password=***&user=u or "host=h password=*** port=5"')


# A read-only home: as root, file permissions do not apply, so the command runs in a
# child that drops to the `nobody` user after a first run in a writable home has
# imported everything the command needs (the interpreter may live in /root).
READ_ONLY_RUN = textwrap.dedent("""
    import os, sys
    from xcross_registry.cli import main

    def run(home):
        os.environ["XREG_HOME"] = home
        sys.argv = ["xreg", *sys.argv[3:]]
        try:
            main()
        except SystemExit as exit_:
            return exit_.code
        return 0

    warm, home = sys.argv[1], sys.argv[2]
    if os.getuid() == 0:
        args = list(sys.argv)
        run(warm)
        sys.argv = args
        print("---", file=sys.stderr, flush=True)
        os.setgid(65534)
        os.setuid(65534)
    sys.exit(run(home))
""")


@pytest.fixture
def open_folder():
    """A folder any user may enter (pytest's own tmp folders are private to their owner)."""
    folder = Path(tempfile.mkdtemp(prefix="xreg-ro-"))
    os.chmod(folder, 0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_read_only_home_on_write(xreg, monkeypatch, open_folder):
    home = open_folder / "home"
    monkeypatch.setenv("XREG_HOME", str(home))
    assert xreg("add-domain", "toys", *DOMAIN).exit_code == 0
    gc.collect()
    registered = home / "registry.db"
    os.chmod(home, 0o555)
    before = snapshot(home)
    try:
        result = subprocess.run(
            [sys.executable, "-c", READ_ONLY_RUN, str(open_folder / "warm"), str(home),
             "add-domain", "tools", *DOMAIN],
            capture_output=True, text=True, timeout=300,
            env={**os.environ, "HOME": str(open_folder)})
    finally:
        os.chmod(home, 0o755)
    stderr = result.stderr.split("---\n")[-1]
    assert result.returncode == 1, result.stderr
    assert stderr.strip() == (f"error: registry database {registered} is read-only; "
                              "nothing was changed"), result.stderr
    assert snapshot(home) == before
