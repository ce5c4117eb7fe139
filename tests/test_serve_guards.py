"""``xreg serve`` and its clients, over real HTTP on 127.0.0.1: the Host allow-list
(DNS rebinding), the optional bearer token on /v1, the warning for a non-loopback
address without a token, and the head and body timeouts against slow clients.

The server runs over a registry with one domain and no model: admission happens before
any model would be touched.  Bounded: 20 slow connections, timeouts of 1 s.
"""

from __future__ import annotations

import json
import os
import socket

import pytest

pytest.importorskip("fastapi", reason="the serve extra (fastapi, uvicorn, jinja2) is not installed")

from conftest import run_subprocess, xreg_command  # noqa: E402
from test_server import running_server  # noqa: E402

from xcross_registry import plugins  # noqa: E402

TOKEN = "s3cret-token"
SLOW_CLIENTS = 20


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    """A served registry with a token, one extra allowed Host and 1 s timeouts."""
    root = tmp_path_factory.mktemp("guarded")
    home = root / "home"
    env = {**os.environ, "XREG_HOME": str(home), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("XREG_DATABASE_URL", None)
    env.pop("XREG_SERVE_TOKEN", None)
    added = run_subprocess(xreg_command("add-domain", "toys", "--plugin", "synthetic", "--data",
                                        "toys?users=60&items=60&max_len=6"), env=env)
    assert added.returncode == 0, added.stderr
    token_file = root / "token"
    token_file.write_text(TOKEN + "\n")
    plugins.reset()
    with running_server(["--token-file", str(token_file), "--allowed-host", "registry.internal",
                         "--header-timeout", "1", "--body-timeout", "1"],
                        env, root / "server.log") as base:
        yield base.rsplit(":", 1)[-1]  # the port


def _raw(port: str, request: bytes, wait: float = 60) -> bytes:
    """Send ``request`` as is and read the whole answer (the server closes or answers)."""
    with socket.create_connection(("127.0.0.1", int(port)), timeout=wait) as connection:
        connection.sendall(request)
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer) < _expected_length(answer):
            chunk = connection.recv(65536)
            if not chunk:
                break
            answer += chunk
        return answer


def _expected_length(answer: bytes) -> int:
    head, _, _ = answer.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(head) + 4 + int(line.split(b":")[1])
    return 1 << 30


def _get(port: str, path: str, host: str | None = None, token: str | None = None) -> tuple[int, dict]:
    headers = f"Host: {host or '127.0.0.1:' + port}\r\n"
    if token is not None:
        headers += f"Authorization: Bearer {token}\r\n"
    answer = _raw(port, f"GET {path} HTTP/1.1\r\n{headers}Connection: close\r\n\r\n".encode())
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_only_allowed_host_headers_are_answered(guarded):
    assert _get(guarded, "/healthz")[0] == 200
    assert _get(guarded, "/healthz", host=f"localhost:{guarded}")[0] == 200
    assert _get(guarded, "/healthz", host="registry.internal")[0] == 200  # --allowed-host
    status, body = _get(guarded, "/healthz", host="evil.example")
    assert status == 400
    assert body["error"] == ("this server does not answer Host 'evil.example'; start it with "
                             "--allowed-host evil.example to allow it")
    assert _get(guarded, "/v1/domains", host=f"evil.example:{guarded}", token=TOKEN)[0] == 400


def test_the_api_needs_the_bearer_token_when_one_is_set(guarded):
    status, body = _get(guarded, "/v1/domains")
    assert status == 401 and body["error"] == "this server needs 'Authorization: Bearer TOKEN' on /v1"
    status, body = _get(guarded, "/v1/domains", token="wrong")
    assert status == 401 and body["error"].endswith("(the token given is wrong)")
    status, body = _get(guarded, "/v1/domains", token=TOKEN)
    assert status == 200 and [d["name"] for d in body] == ["toys"]
    assert _get(guarded, "/healthz")[0] == 200  # health and pages stay open
    head = _raw(guarded, f"GET /v1/domains HTTP/1.1\r\nHost: 127.0.0.1:{guarded}\r\n"
                         "Connection: close\r\n\r\n".encode()).partition(b"\r\n\r\n")[0]
    assert b"www-authenticate: Bearer" in head.lower().replace(b"bearer", b"Bearer")


def test_slow_heads_and_bodies_get_408_and_do_not_block_others(guarded):
    slow = []
    for _ in range(SLOW_CLIENTS):  # half-sent heads: no blank line after the headers
        connection = socket.create_connection(("127.0.0.1", int(guarded)), timeout=60)
        connection.sendall(f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{guarded}\r\n".encode())
        slow.append(connection)
    silent = socket.create_connection(("127.0.0.1", int(guarded)), timeout=60)  # sends nothing
    assert _get(guarded, "/healthz")[0] == 200  # others are answered meanwhile
    for connection in [*slow, silent]:
        with connection:
            answer = b""
            while chunk := connection.recv(65536):  # the server answers, then closes
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 408 ")
        assert json.loads(answer.partition(b"\r\n\r\n")[2]) == {
            "error": "the request head did not arrive within 1 s"}
    half_body = (f"POST /v1/recommend HTTP/1.1\r\nHost: 127.0.0.1:{guarded}\r\n"
                 f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n"
                 "Content-Length: 100\r\n\r\n{\"subject\": ").encode()
    answer = _raw(guarded, half_body)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert json.loads(answer.partition(b"\r\n\r\n")[2]) == {
        "error": "the request body did not arrive within 1 s"}


def test_a_non_loopback_address_without_a_token_warns(xreg, monkeypatch):
    """192.0.2.1 (TEST-NET-1) is never assigned here: the warning comes before the bind,
    which then fails, so nothing listens beyond loopback."""
    monkeypatch.delenv("XREG_SERVE_TOKEN", raising=False)
    result = xreg("serve", "--host", "192.0.2.1", "--port", "0")
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 1
    assert lines[0] == ("warning: listening on 192.0.2.1 without a token: anyone who can reach this "
                        "machine can use the API; set --token-file or XREG_SERVE_TOKEN")
    assert lines[-1].startswith("error: cannot listen on 192.0.2.1:0: ")
    monkeypatch.setenv("XREG_SERVE_TOKEN", TOKEN)
    with_token = xreg("serve", "--host", "192.0.2.1", "--port", "0")
    assert with_token.exit_code == 1 and "warning" not in with_token.stderr


def test_bad_guard_settings_are_one_line(xreg, tmp_path):
    empty = tmp_path / "token"
    empty.write_text("\n")
    for args, message in [
        (["--token-file", "/nonexistent/token"], "error: --token-file /nonexistent/token: No such file or directory"),
        (["--token-file", str(empty)], f"error: --token-file {empty} is empty"),
        (["--header-timeout", "inf"], "error: --header-timeout must be a finite number above 0, not inf"),
        (["--body-timeout", "0"], "error: --body-timeout must be a finite number above 0, not 0.0"),
    ]:
        result = xreg("serve", "--port", "0", *args)
        assert result.exit_code == 1 and result.stderr.strip() == message, result.stderr
