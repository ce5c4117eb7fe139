"""``xreg serve``: the JSON API, its errors, micro-batching and the registry browser,
against a real server process on a free loopback port (tiny random models, seconds)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import pytest

pytest.importorskip("fastapi", reason="the serve extra (fastapi, uvicorn, jinja2) is not installed")
# Every test shares a served registry whose models train first: the full tier's
# (tests/test_serve_guards.py is the quick tier's real server).
pytestmark = pytest.mark.slow

from conftest import xreg_command  # noqa: E402

from xcross_registry import plugins  # noqa: E402

QUICK = {"epochs": 1, "max_users": 16, "batch_size": 8, "negatives": 3, "valid_users": 10}
SCRIPT_TITLE = "<script>alert('x')</script> & co"


@pytest.fixture(scope="module")
def served_registry(tmp_path_factory, tiny_base_model) -> Path:
    """A registry with a dual composition (kitchen-x) over two dual adapters, a cross
    adapter (kitchen@v1), an adapter whose artifact was damaged (tools@v2),
    evaluations for a leaderboard, and a description that needs escaping."""
    from xcross_registry import adapters, composer, evaluation
    from xcross_registry.registry import Registry
    from xcross_registry.scorer import ScorerConfig
    from xcross_registry.training import TrainingConfig

    home = tmp_path_factory.mktemp("serve") / "home"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XREG_HOME", str(home))
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.delenv("XREG_DATABASE_URL", raising=False)
        patch.delenv("XREG_LOAD_PLUGINS", raising=False)
        plugins.reset()
        registry = Registry()
        for name in ("toys", "tools", "kitchen"):
            registry.add_domain(name, "synthetic", f"{name}?users=120&items=60&max_len=8",
                                description=SCRIPT_TITLE if name == "kitchen" else "")
        dual = ScorerConfig(mode="dual", max_length=64)
        for name in ("toys", "tools"):
            adapters.train_adapter(registry, name, scorer_config=dual, training_config=TrainingConfig(**QUICK),
                                   base_model=str(tiny_base_model))
        composer.compose(registry, ["toys", "tools"], "kitchen",
                         training_config=TrainingConfig(**QUICK, fraction=0.5, lr=1e-3))
        adapters.train_adapter(registry, "kitchen", scorer_config=ScorerConfig(mode="cross", max_length=64),
                               training_config=TrainingConfig(**QUICK, fraction=0.5),
                               base_model=str(tiny_base_model))
        broken = adapters.train_adapter(registry, "tools", scorer_config=dual,
                                        training_config=TrainingConfig(**QUICK),
                                        base_model=str(tiny_base_model))
        path = registry.store.path(broken.artifact_digest)
        os.chmod(path, 0o644)
        path.write_bytes(b"not the stored bytes")
        evaluation.evaluate_composition(registry, "kitchen-x", max_users=20)
        evaluation.evaluate_adapter(registry, "kitchen@v1", max_users=20)
        evaluation.evaluate_popularity(registry, "kitchen", max_users=20)
        plugins.reset()
    return home


class Client:
    """JSON over urllib against the server under test."""

    def __init__(self, base: str) -> None:
        self.base = base

    def request(self, method: str, path: str, body: bytes | None = None,
                content_type: str = "application/json") -> tuple[int, bytes, str]:
        request = urllib.request.Request(self.base + path, data=body, method=method,
                                         headers={"Content-Type": content_type} if body is not None else {})
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return response.status, response.read(), response.headers.get("Content-Type", "")
        except urllib.error.HTTPError as error:
            return error.code, error.read(), error.headers.get("Content-Type", "")

    def get(self, path: str):
        status, body, _ = self.request("GET", path)
        return status, json.loads(body)

    def post(self, path: str, document) -> tuple[int, dict]:
        status, body, kind = self.request("POST", path, json.dumps(document).encode())
        assert kind.startswith("application/json"), (status, body[:200])
        return status, json.loads(body)


@pytest.fixture(scope="module")
def server(served_registry, tmp_path_factory):
    """``xreg serve`` in a subprocess; stopped (and waited for) at the end of the module."""
    env = {**os.environ, "XREG_HOME": str(served_registry), "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": "1"}
    env.pop("XREG_DATABASE_URL", None)
    with running_server(["--preload", "kitchen-x", "--max-models", "3", "--batch-wait-ms", "100"],
                        env, tmp_path_factory.mktemp("serve-log") / "server.log") as base:
        yield Client(base)


@contextlib.contextmanager
def running_server(arguments: list[str], env: dict[str, str], log: Path) -> Iterator[str]:
    """``xreg serve ARGUMENTS --port 0`` until the block ends; yields its base URL once
    ``/readyz`` answers 200.  The server picks a free port itself and prints it, so
    servers started at once (pytest-xdist workers) never race for one."""
    with open(log, "w") as output:
        process = subprocess.Popen(xreg_command("serve", *arguments, "--port", "0"),
                                   env=env, stdout=output, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        base = None
        while True:
            assert process.poll() is None, log.read_text()
            base = base or _announced_url(log.read_text())
            if base is not None:
                try:
                    if Client(base).get("/readyz")[0] == 200:
                        break
                except OSError:
                    pass
            assert time.monotonic() < deadline, "server not ready in time:\n" + log.read_text()
            time.sleep(0.5)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _announced_url(log: str) -> str | None:
    """The address ``xreg serve`` printed when it bound its socket."""
    found = re.search(r"xreg serve: (http://\S+?)/ ", log)
    return found.group(1) if found else None


@pytest.fixture(scope="module")
def library(served_registry):
    """The same subjects loaded in this process, for the answers the API must match."""
    from xcross_registry import serving
    from xcross_registry.registry import Registry

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XREG_HOME", str(served_registry))
        plugins.reset()
        registry = Registry()
        models = {name: serving.load_model(registry, name) for name in ("kitchen-x", "toys", "kitchen@v1")}
        yield models
        plugins.reset()


def _titles(model, indices):
    return [model.data.items[i].title for i in indices]


def _same(answer: dict, expected) -> None:
    assert [item["item_id"] for item in answer["items"]] == [r.item_id for r in expected]
    assert [item["rank"] for item in answer["items"]] == [r.rank for r in expected]
    for item, reference in zip(answer["items"], expected):
        assert item["title"] == reference.title
        assert abs(item["score"] - reference.score) <= 1e-6


def test_health_ready_and_openapi(server):
    assert server.get("/healthz") == (200, {"status": "ok"})
    status, ready = server.get("/readyz")
    assert status == 200 and ready["ready"] is True and "kitchen-x" in ready["loaded"]
    status, schema = server.get("/openapi.json")
    assert status == 200
    assert {"/v1/recommend", "/v1/subjects", "/v1/domains", "/v1/leaderboard/{domain}", "/healthz",
            "/readyz"} <= set(schema["paths"])
    body = schema["components"]["schemas"]["RecommendRequest"]["properties"]
    assert {"subject", "history", "candidates", "top_k", "exclude_history"} == set(body)


@pytest.mark.parametrize("subject,request_options,library_options", [
    ("kitchen-x", {"top_k": 7}, {"top": 7}),
    ("kitchen-x", {"top_k": 60, "exclude_history": False}, {"top": 60, "exclude_history": False}),
    ("toys", {"top_k": 5}, {"top": 5}),
    ("kitchen-x", {"candidates": "ids", "top_k": 4}, {"candidates": "ids", "top": 4}),
    ("kitchen@v1", {"candidates": "titles", "top_k": 6}, {"candidates": "titles", "top": 6}),
    ("kitchen@v1", {"candidates": "ids", "exclude_history": True, "top_k": 20},
     {"candidates": "ids", "exclude_history": True, "top": 20}),
])
def test_recommend_equals_the_library(server, library, subject, request_options, library_options):
    from xcross_registry import serving

    model = library[subject]
    request_options, library_options = dict(request_options), dict(library_options)
    history = _titles(model, [3, 8, 11]) + ["a free-text item not in the catalogue"]
    candidates = {"ids": [item.id for item in model.data.items[:12]],
                  "titles": _titles(model, range(5, 25))}
    for options in (request_options, library_options):
        if "candidates" in options:
            options["candidates"] = candidates[options["candidates"]]
    status, answer = server.post("/v1/recommend", {"subject": subject, "history": history,
                                                   **request_options})
    assert status == 200, answer
    _same(answer, serving.recommend(model, history, **library_options))
    assert answer["digest"] == model.digest and answer["version"] == model.version
    assert answer["subject"] == ("toys@v1" if subject == "toys" else subject)
    assert answer["kind"] == ("composition" if subject == "kitchen-x" else "adapter")
    if request_options.get("exclude_history") is not False and "candidates" not in request_options:
        assert not {item["title"] for item in answer["items"]} & set(history)


def test_concurrent_requests_share_batches_and_keep_their_answers(server, library):
    from xcross_registry import serving

    model = library["kitchen-x"]
    histories = [_titles(model, range(start, start + 1 + start % 6)) for start in range(16)]
    before = {row["subject"]: row["batching"] for row in server.get("/v1/subjects")[1]}["kitchen-x"]
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda h: server.post("/v1/recommend", {"subject": "kitchen-x",
                                                                         "history": h, "top_k": 10}),
                                histories))
    for (status, answer), history in zip(answers, histories):
        assert status == 200, answer
        _same(answer, serving.recommend(model, history, top=10))
    after = {row["subject"]: row["batching"] for row in server.get("/v1/subjects")[1]}["kitchen-x"]
    requests, batches = (after["requests"] - before["requests"], after["batches"] - before["batches"])
    assert requests == 16 and batches < requests


@pytest.mark.parametrize("mode_subject", ["kitchen-x", "kitchen@v1"])
def test_batched_scoring_equals_one_query_at_a_time(library, mode_subject):
    """The library path the micro-batcher uses: a query's answer does not depend on its batch."""
    from xcross_registry import serving

    model = library[mode_subject]
    items = model.data.items
    queries = [serving.Query([item.title for item in items[i:i + 1 + i % 7]],
                             candidates=[item.id for item in items[i + 3:i + 8 + i % 5]], top=5)
               for i in range(10)]
    if model.scorer.config.mode == "dual":
        queries += [serving.Query([item.title for item in items[i:i + 2 + i % 5]], top=10) for i in range(10)]
    together = serving.recommend_many(model, queries)
    for query, answer in zip(queries, together):
        alone = serving.recommend_many(model, [query])[0]
        assert [r.item_id for r in answer] == [r.item_id for r in alone]
        assert max(abs(a.score - b.score) for a, b in zip(answer, alone)) <= 1e-6


def test_subjects_domains_and_leaderboard(server):
    status, subjects = server.get("/v1/subjects")
    assert status == 200
    by_name = {row["subject"]: row for row in subjects}
    assert set(by_name) == {"kitchen-x", "toys@v1", "tools@v1", "tools@v2", "kitchen@v1"}
    assert by_name["kitchen-x"]["sources"] == ["toys@v1", "tools@v1"]
    assert by_name["kitchen-x"]["loaded"] is True and by_name["kitchen@v1"]["mode"] == "cross"
    status, domains = server.get("/v1/domains")
    assert status == 200
    kitchen = {d["name"]: d for d in domains}["kitchen"]
    assert kitchen["summary"]["items"] == 60 and kitchen["description"] == SCRIPT_TITLE
    status, boards = server.get("/v1/leaderboard/kitchen")
    assert status == 200 and len(boards) == 1
    assert {row["subject"] for row in boards[0]["rows"]} == {"kitchen-x", "kitchen@v1", "popularity:kitchen"}
    assert server.get("/v1/leaderboard/kitchen?protocol=full") == (200, [])
    status, missing = server.get("/v1/leaderboard/nowhere")
    assert status == 404 and missing == {"error": "unknown domain 'nowhere'"}


BAD_REQUESTS = [
    ({"subject": "nowhere", "history": ["a"]}, 404, "unknown subject 'nowhere'"),
    ({"subject": "toys@v9", "history": ["a"]}, 404, "toys@v9"),
    ({"subject": "kitchen-x", "history": []}, 422, "history: List should have at least 1 item"),
    ({"subject": "kitchen-x", "history": ["  "]}, 422, "history.0: String should have at least 1 character"),
    ({"subject": "kitchen-x", "history": ["x"] * 201}, 422, "history: List should have at most 200 items"),
    ({"subject": "kitchen-x", "history": ["a"], "candidates": ["kitchen-00001", "nonsense id", "zzz"]},
     422, "unknown candidates (no item id or title of domain 'kitchen'): 'nonsense id', 'zzz'"),
    ({"subject": "kitchen-x", "history": "kitchen-00001"}, 422, "history: Input should be a valid list"),
    ({"subject": "kitchen-x", "history": [1, 2]}, 422, "history.0: Input should be a valid string"),
    ({"subject": 7, "history": ["a"]}, 422, "subject: Input should be a valid string"),
    ({"subject": "kitchen-x", "history": ["a"], "top_k": "5"}, 422, "top_k: Input should be a valid integer"),
    ({"subject": "kitchen-x", "history": ["a"], "top_k": 0}, 422, "top_k: Input should be greater than or equal to 1"),
    ({"subject": "kitchen-x", "history": ["a"], "top_k": -3}, 422, "top_k: Input should be greater than or equal to 1"),
    ({"subject": "kitchen-x", "history": ["a"], "exclude_history": "yes"}, 422, "exclude_history"),
    ({"subject": "kitchen-x", "history": ["a"], "topk": 3}, 422, "topk: Extra inputs are not permitted"),
    ({"history": ["a"]}, 422, "subject: Field required"),
    ({"subject": "kitchen@v1", "history": ["a"]}, 422, "whole-catalogue ranking needs a dual model"),
    ([], 422, "Input should be a valid dictionary"),
]


@pytest.mark.parametrize("document,status,message", BAD_REQUESTS)
def test_bad_requests_get_a_json_error_naming_the_problem(server, document, status, message):
    got, body = server.post("/v1/recommend", document)
    assert got == status, body
    assert message in body["error"], body


def test_malformed_and_oversized_bodies(server):
    status, body, kind = server.request("POST", "/v1/recommend", b'{"subject": "kitchen-x", "history": [')
    assert status == 422 and kind.startswith("application/json")
    assert json.loads(body)["error"].startswith("invalid request: the body is not valid JSON")
    megabyte = json.dumps({"subject": "kitchen-x", "history": ["t" * 1000] * 1050}).encode()
    assert len(megabyte) > 1_000_000
    status, body, _ = server.request("POST", "/v1/recommend", megabyte)
    assert status == 413
    assert json.loads(body) == {"error": f"request body is {len(megabyte)} bytes or more; the limit "
                                         "is 262144 bytes"}
    # Streamed in chunks, without a declared length: refused once past the limit.
    import http.client

    host, port = server.base.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=120)
    chunks = [megabyte[start:start + 65536] for start in range(0, len(megabyte), 65536)]
    connection.request("POST", "/v1/recommend", body=iter(chunks), encode_chunked=True,
                       headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
    response = connection.getresponse()
    assert response.status == 413
    assert json.loads(response.read())["error"].endswith("the limit is 262144 bytes")
    connection.close()
    # The server keeps serving after every bad request.
    status, answer = server.post("/v1/recommend", {"subject": "kitchen-x", "history": ["kitchen-00001"]})
    assert status == 200 and len(answer["items"]) == 10


def test_a_model_that_fails_to_load_is_503_for_that_subject_only(server):
    for _ in range(2):  # the failure is remembered, and answered again without a reload
        status, body = server.post("/v1/recommend", {"subject": "tools@v2", "history": ["a"]})
        assert status == 503, body
        assert body["error"].startswith("tools@v2 cannot be loaded: ")
    ok, answer = server.post("/v1/recommend", {"subject": "tools@v1", "history": ["a"], "top_k": 2})
    assert ok == 200 and answer["version"] == "tools@v1"
    subjects = {row["subject"]: row for row in server.get("/v1/subjects")[1]}
    assert subjects["tools@v2"]["load_error"].startswith("tools@v2 cannot be loaded")
    assert subjects["tools@v2"]["loaded"] is False


def test_loaded_models_are_bounded_by_max_models(server):
    """The server runs with --max-models 3: a fourth subject evicts the least recently used."""
    for subject in ("toys", "kitchen-x", "tools@v1"):
        assert server.post("/v1/recommend", {"subject": subject, "history": ["a"]})[0] == 200
    assert server.post("/v1/recommend", {"subject": "kitchen@v1", "history": ["a"],
                                         "candidates": ["kitchen-00001", "kitchen-00002"]})[0] == 200
    loaded = {row["subject"] for row in server.get("/v1/subjects")[1] if row["loaded"]}
    assert loaded == {"kitchen-x", "tools@v1", "kitchen@v1"}
    status, ready = server.get("/readyz")
    assert status == 200 and set(ready["loaded"]) == loaded


def test_a_slow_load_does_not_hold_up_loaded_subjects(served_registry):
    """While one subject's load is stuck, another loaded subject is answered, and a
    second request for the stuck subject waits for the same load instead of starting one."""
    import asyncio
    import threading

    from xcross_registry.registry import Registry
    from xcross_registry.server.models import BatchingConfig, ModelCache
    from xcross_registry.serving import Query

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XREG_HOME", str(served_registry))
        plugins.reset()
        cache = ModelCache(Registry(), 3, BatchingConfig())
        gate, loads = threading.Event(), []
        original = cache._load

        def gated_load(subject):
            loads.append(subject.name)
            if subject.name == "toys@v1":
                assert gate.wait(300)
            return original(subject)

        cache._load = gated_load

        async def scenario():
            await cache.get("kitchen-x")
            stuck = [asyncio.create_task(cache.get("toys")), asyncio.create_task(cache.get("toys@v1"))]
            while "toys@v1" not in cache.loading:
                await asyncio.sleep(0.01)
            served = await cache.get("kitchen-x")
            answer = await served.batcher.submit(Query(["kitchen-00003"], top=3))
            assert len(answer) == 3 and not any(task.done() for task in stuck)
            gate.set()
            first, second = await asyncio.gather(*stuck)
            assert first is second and loads == ["kitchen-x", "toys@v1"]

        try:
            asyncio.run(scenario())
        finally:
            gate.set()
            cache.shutdown()
            plugins.reset()


def _html(server, path: str) -> str:
    status, body, kind = server.request("GET", path)
    assert status == 200 and kind.startswith("text/html"), (path, status)
    return body.decode()


def test_browser_pages_show_lineage_boards_and_escape_text(server):
    index = _html(server, "/")
    for text in ("kitchen-x", "toys@v1", "tools@v2", "kitchen@v1", "/try/kitchen-x", "/domains/kitchen"):
        assert text in index
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; co" in index
    assert "<script>" not in index
    domain = _html(server, "/domains/kitchen")
    assert 'id="board-plot"' in domain and 'id="efficiency-plot"' in domain
    assert "popularity:kitchen" in domain
    composition = _html(server, "/compositions/kitchen-x")
    assert "toys@v1" in composition and 'id="integration-plot"' in composition
    for plot in ("/plots/board/kitchen.png", "/plots/efficiency/kitchen.png",
                 "/plots/integration/kitchen-x.png"):
        status, body, kind = server.request("GET", plot)
        assert status == 200 and kind == "image/png" and body[:8] == b"\x89PNG\r\n\x1a\n", plot
    status, body, _ = server.request("GET", "/domains/nowhere")
    assert status == 404 and "unknown domain &#39;nowhere&#39;" in body.decode()


def test_try_form_posts_a_history_and_lists_the_ranked_titles(server, library):
    import html

    from xcross_registry import serving

    model = library["kitchen-x"]
    history = _titles(model, [2, 9])
    assert "<textarea" in _html(server, "/try/kitchen-x")
    form = urllib.parse.urlencode({"history": "\n".join(history), "top_k": "4"}).encode()
    status, body, _ = server.request("POST", "/try/kitchen-x", form, "application/x-www-form-urlencoded")
    assert status == 200
    page = body.decode()
    expected = serving.recommend(model, history, top=4)
    listed = page[page.index('<ol id="ranked">'):page.index("</ol>")]
    assert [html.unescape(t.split("</span>")[0]) for t in listed.split('<span class="title">')[1:]] == [
        r.title for r in expected]
    status, body, _ = server.request("POST", "/try/kitchen-x", b"history=&top_k=4",
                                     "application/x-www-form-urlencoded")
    assert status == 422 and "at least 1 item" in body.decode()


def test_serve_refuses_unknown_preload_and_a_busy_port(served_registry):
    env = {"XREG_HOME": str(served_registry)}
    from conftest import run_subprocess

    result = run_subprocess(xreg_command("serve", "--preload", "nowhere"), env=env)
    assert result.returncode == 1 and result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "nowhere" in result.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        result = run_subprocess(xreg_command("serve", "--port", str(port)), env=env)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: cannot listen on 127.0.0.1:{port}: ")


def test_other_commands_do_not_import_the_server(tmp_path):
    from conftest import run_subprocess

    probe = ("import sys; sys.argv = ['xreg', 'domains']\n"
             "from xcross_registry.cli import main\n"
             "try:\n    main()\nexcept SystemExit:\n    pass\n"
             "print('LOADED=' + ','.join(m for m in ('fastapi', 'uvicorn', 'jinja2') if m in sys.modules))")
    result = run_subprocess([sys.executable, "-c", probe], env={"XREG_HOME": str(tmp_path)})
    assert "LOADED=\n" in result.stdout, result.stdout + result.stderr
