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
        self.log: Path | None = None

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
    log = tmp_path_factory.mktemp("serve-log") / "server.log"
    # --load-wait: a first load on a busy machine is waited for, not answered 503
    # (test_a_loading_model_is_503_with_retry_after covers that answer).
    with running_server(["--preload", "kitchen-x", "--max-models", "3", "--batch-wait-ms", "100",
                         "--load-wait", "300"], env, log) as base:
        client = Client(base)
        client.log = log
        yield client


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


def test_a_lone_client_is_not_held_back_for_companions(server, library):
    """Requests one after another find the batcher idle: each is its own batch, scored at
    once, and none waits --batch-wait-ms for companions that are not coming."""
    model = library["kitchen-x"]

    def stats() -> dict:
        return {row["subject"]: row["batching"] for row in server.get("/v1/subjects")[1]}["kitchen-x"]

    assert server.post("/v1/recommend", {"subject": "kitchen-x", "history": _titles(model, [1])})[0] == 200
    before = stats()
    for start in range(3):
        status, answer = server.post("/v1/recommend", {"subject": "kitchen-x",
                                                       "history": _titles(model, [start, start + 1])})
        assert status == 200, answer
    after = stats()
    assert {key: after[key] - before[key] for key in after} == {"requests": 3, "batches": 3, "waits": 0}


def test_subject_names_are_looked_up_again_once_the_name_cache_is_stale(served_registry, monkeypatch):
    """A name's registry record is reused for --name-cache seconds (a request then costs no
    database query), looked up on every request at 0, and an unknown name is never cached."""
    import asyncio

    from xcross_registry.errors import NotFoundError
    from xcross_registry.registry import Registry
    from xcross_registry.server import models

    monkeypatch.setenv("XREG_HOME", str(served_registry))
    plugins.reset()
    lookups: list[str] = []

    def counting_resolve(registry, name, **options):
        lookups.append(name)
        return resolved(registry, name, **options)

    resolved = models.resolve_subject
    monkeypatch.setattr(models, "resolve_subject", counting_resolve)

    async def resolve_twice(names, name):
        return await names.resolve(name), await names.resolve(name)

    for max_age_s, expected in ((3600.0, ["toys"]), (0.0, ["toys", "toys"])):
        lookups.clear()
        names = models.SubjectNames(Registry(), max_age_s)
        first, second = asyncio.run(resolve_twice(names, "toys"))
        assert first.name == second.name == "toys@v1" and lookups == expected
        lookups.clear()
        for _ in range(2):
            with pytest.raises(NotFoundError, match="unknown subject 'no-such-model'"):
                asyncio.run(names.resolve("no-such-model"))
        assert lookups == ["no-such-model", "no-such-model"]
    plugins.reset()


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
    assert server.get("/v1/leaderboard/kitchen?split=valid") == (200, [])
    status, boards = server.get("/v1/leaderboard/kitchen?candidates=" + boards[0]["candidates_digest"][:8])
    assert status == 200 and len(boards) == 1
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

        def gated_load(subject, progress):
            loads.append(subject.name)
            if subject.name == "toys@v1":
                assert gate.wait(300)
            return original(subject, progress)

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
    for plot in ("/plots/board/kitchen.svg", "/plots/efficiency/kitchen.svg",
                 "/plots/integration/kitchen-x.svg", "/plots/board/kitchen.svg?protocol=sampled"):
        status, body, kind = server.request("GET", plot)
        assert status == 200 and kind == "image/svg+xml" and b"<svg" in body[:1000], plot
    status, body, _ = server.request("GET", "/domains/nowhere")
    assert status == 404 and "unknown domain &#39;nowhere&#39;" in body.decode()


def test_try_form_answers_a_history_in_its_url(server, library):
    """The form submits by GET: a result is a URL that can be shared."""
    import html

    from xcross_registry import serving

    model = library["kitchen-x"]
    history = _titles(model, [2, 9])
    assert "<textarea" in _html(server, "/try/kitchen-x")
    query = urllib.parse.urlencode({"history": "\n".join(history), "top_k": "4"})
    page = _html(server, f"/try/kitchen-x?{query}")
    expected = serving.recommend(model, history, top=4)
    listed = page[page.index('<ol id="ranked">'):page.index("</ol>")]
    assert [html.unescape(t.split("</span>")[0]) for t in listed.split('<span class="title">')[1:]] == [
        r.title for r in expected]
    for query, problem in (("history=&top_k=4", "History: give 1 to 200 item titles or ids"),
                           ("history=a&top_k=0", "How many: a whole number from 1 to 1000.")):
        status, body, _ = server.request("GET", f"/try/kitchen-x?{query}")
        assert status == 422 and problem in body.decode()
        assert "<h1>Try" in body.decode()  # the page keeps its heading and form after an error


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


def test_recommend_reports_what_each_history_entry_matched(server, library):
    """By id, by title (any case), by the catalogue's cut title (the entry's first words),
    or not at all (free text); the report is what the model scored."""
    from xcross_registry import serving

    model = library["kitchen-x"]
    items = model.data.items
    titles = [item.title for item in items]
    unique = [i for i in range(len(items)) if titles.count(titles[i]) == 1]
    by_id, by_title, by_prefix = (items[i] for i in unique[:3])
    history = [by_id.id, by_title.title.upper(), by_prefix.title + " with a tail the catalogue cut off",
               "a free-text item"]
    status, answer = server.post("/v1/recommend", {"subject": "kitchen-x", "history": history, "top_k": 5})
    assert status == 200, answer
    assert answer["history"] == [
        {"entry": history[0], "matched": "id", "item_id": by_id.id, "title": by_id.title},
        {"entry": history[1], "matched": "title", "item_id": by_title.id, "title": by_title.title},
        {"entry": history[2], "matched": "title prefix", "item_id": by_prefix.id, "title": by_prefix.title},
        {"entry": history[3], "matched": None, "item_id": None, "title": "a free-text item"}]
    # The long entry is scored as the catalogue item it matched, and left out of the ranking.
    _same(answer, serving.recommend(model, [by_id.id, by_title.title, by_prefix.title, history[3]], top=5))
    assert by_prefix.id not in {item["item_id"] for item in answer["items"]}


@pytest.mark.parametrize("path,message", [
    ("/v1/leaderboard/kitchen?protocol=nope", "query.protocol: Input should be 'sampled', 'sampled-pop' or 'full'"),
    ("/v1/leaderboard/kitchen?split=nope", "query.split: Input should be 'train', 'valid' or 'test'"),
    ("/v1/compare/kitchen?first=kitchen-x&second=kitchen@v1&protocol=nope", "query.protocol"),
    ("/v1/compare/kitchen?first=kitchen-x&second=nobody", "no sampled evaluation of 'nobody' on 'kitchen'"),
    ("/v1/domains/kitchen/items?limit=0", "query.limit: Input should be greater than or equal to 1"),
])
def test_unknown_protocols_splits_and_subjects_are_422(server, path, message):
    status, body = server.get(path)
    assert status == 422 and message in body["error"], body


def test_pages_refuse_unknown_board_parameters_with_422(server):
    for path, message in (("/domains/kitchen?protocol=nope", "unknown evaluation protocol &#39;nope&#39;"),
                          ("/domains/kitchen?split=nope", "unknown split &#39;nope&#39;"),
                          ("/domains/kitchen?sort=nope", "cannot sort a board by &#39;nope&#39;"),
                          ("/compare?domain=kitchen&a=kitchen-x&b=nobody", "no sampled evaluation")):
        status, body, kind = server.request("GET", path)
        assert status == 422 and kind.startswith("text/html") and message in body.decode(), path


def test_compare_api_and_page_give_the_paired_differences(server, served_registry, monkeypatch):
    from xcross_registry.evaluation import compare
    from xcross_registry.registry import Registry

    monkeypatch.setenv("XREG_HOME", str(served_registry))
    expected = compare(Registry(), "kitchen", "kitchen-x", "popularity:kitchen")
    status, answer = server.get("/v1/compare/kitchen?first=kitchen-x&second=popularity:kitchen")
    assert status == 200 and answer["users"] == expected["users"] == 20
    for name, d in expected["differences"].items():
        assert answer["differences"][name]["difference"] == pytest.approx(d["difference"])
        assert answer["differences"][name]["verdict"] in ("better", "worse", "no clear difference")
    page = _html(server, "/compare?domain=kitchen&a=kitchen-x&b=popularity%3Akitchen")
    assert f"{expected['differences']['ndcg@10']['difference']:+.4f}" in page


def test_boards_sort_by_a_get_parameter(server):
    import re

    def subjects(page: str) -> list[str]:
        table = page[page.index('<table class="board">'):]
        table = table[:table.index("</table>")]
        return re.findall(r'<tr><td><a href="[^"]+">([^<]+)</a>', table)

    ascending = subjects(_html(server, "/domains/kitchen?sort=trainable&order=asc"))
    descending = subjects(_html(server, "/domains/kitchen?sort=trainable&order=desc"))
    assert ascending == ["popularity:kitchen", "kitchen-x", "kitchen@v1"]
    assert descending == ["kitchen@v1", "kitchen-x", "popularity:kitchen"]


def test_model_pages_show_runs_lineage_and_links(server):
    adapter = _html(server, "/adapters/toys@v1")
    assert 'href="/compositions/kitchen-x"' in adapter  # used by
    assert 'href="/runs/toys@v1"' in adapter and "xreg export toys@v1 DIR" in adapter
    assert 'href="/domains/toys"' in adapter
    run = _html(server, "/runs/toys@v1")
    assert "stop reason" in run and "completed" in run and "examples seen" in run
    versions = _html(server, "/domains/tools")
    assert 'href="/adapters/tools@v1"' in versions and 'href="/adapters/tools@v2"' in versions
    assert 'href="/compositions/kitchen-x"' in versions  # used by: a composition on its adapter
    baseline = _html(server, "/baselines/popularity:kitchen")
    assert "Model-free" in baseline and 'id="results"' in baseline
    assert 'href="/domains/kitchen?protocol=sampled&amp;split=test&amp;candidates=' in baseline
    search = _html(server, "/search?q=kitchen")
    for link in ('href="/compositions/kitchen-x"', 'href="/adapters/kitchen@v1"',
                 'href="/baselines/popularity:kitchen"', 'href="/domains/kitchen"'):
        assert link in search, link
    items = _html(server, "/domains/kitchen/items?q=kitchen-00001")
    assert "kitchen-00001" in items and 'href="/try/kitchen-x?history=' in items
    status, body, _ = server.request("GET", "/adapters/toys@v9")
    assert status == 404 and "toys@v9" in body.decode()


def test_openapi_types_every_answer_and_docs_are_served_offline(server):
    import re

    status, schema = server.get("/openapi.json")
    assert status == 200

    def answer(path: str, code: str = "200", method: str = "get") -> str:
        return json.dumps(schema["paths"][path][method]["responses"][code]["content"]["application/json"])

    assert "SubjectInfo" in answer("/v1/subjects") and "DomainInfo" in answer("/v1/domains")
    assert "Board" in answer("/v1/leaderboard/{domain}") and "Comparison" in answer("/v1/compare/{domain}")
    assert "Readiness" in answer("/readyz", "503") and "ErrorResponse" in answer("/v1/recommend", "503", "post")
    components = schema["components"]["schemas"]
    assert {"loading", "loaded", "load_error"} <= set(components["SubjectInfo"]["properties"])
    assert {"history", "items"} <= set(components["RecommendResponse"]["properties"])
    assert "head" in schema["paths"]["/healthz"] and "head" in schema["paths"]["/readyz"]
    for path in ("/healthz", "/readyz"):
        assert server.request("HEAD", path)[0] == 200
    status, body, kind = server.request("GET", "/docs")
    page = body.decode()
    assert status == 200 and kind.startswith("text/html") and "/openapi.json" in page
    assert not re.search(r'(src|href|url)\s*[=:]\s*["\']https?://', page), "the docs page loads from elsewhere"
    for asset in re.findall(r'["\'](/static/docs/[^"\']+)["\']', page):
        assert server.request("GET", asset)[0] == 200, asset
    assert server.request("GET", "/static/docs/swagger-ui-bundle.js")[0] == 200


def test_the_server_log_shows_loads_and_their_progress(server):
    log = server.log.read_text().splitlines()
    preload = [line for line in log if "kitchen-x" in line]
    assert preload[0] == "xreg serve: loading kitchen-x"
    assert "xreg serve: kitchen-x: encoded 60 of 60 catalogue items" in preload  # a fresh registry
    assert any(line.startswith("xreg serve: kitchen-x loaded in ") for line in preload)


def test_a_loading_model_is_503_with_retry_after_and_shows_its_progress(served_registry, tmp_path):
    """While a load is under way (the real load, held at its end by a gate), requests
    get 503 with Retry-After at once, /v1/subjects and the pages show the progress, and
    the first request after the load is answered."""
    import shutil
    import threading

    import uvicorn

    from xcross_registry.registry import Registry
    from xcross_registry.server import ServerConfig, create_app

    home = tmp_path / "home"
    shutil.copytree(served_registry, home, ignore=shutil.ignore_patterns("cache"))  # encode anew
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XREG_HOME", str(home))
        plugins.reset()
        app = create_app(ServerConfig(load_wait_s=0.2), Registry())
        cache, gate = app.state.cache, threading.Event()
        load = cache._load

        def held_load(subject, progress):
            model = load(subject, progress)
            assert gate.wait(120)
            return model

        cache._load = held_load
        listening = socket.socket()  # bound here, so parallel test workers never race for a port
        listening.bind(("127.0.0.1", 0))
        port = listening.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [listening]})
        thread.start()
        client = Client(f"http://127.0.0.1:{port}")
        try:
            deadline = time.monotonic() + 60
            while not server.started:
                assert time.monotonic() < deadline and thread.is_alive()
                time.sleep(0.05)
            request = urllib.request.Request(client.base + "/v1/recommend", method="POST",
                                             data=json.dumps({"subject": "toys", "history": ["a"]}).encode(),
                                             headers={"Content-Type": "application/json"})
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(request, timeout=60)
            assert refused.value.code == 503
            assert 1 <= int(refused.value.headers["Retry-After"]) <= 30
            assert json.loads(refused.value.read())["error"].startswith("toys@v1 is loading (")
            while True:  # the real encoding reports its progress
                loading = {row["subject"]: row["loading"] for row in client.get("/v1/subjects")[1]}["toys@v1"]
                if loading and loading["items_encoded"] == 60:
                    break
                assert time.monotonic() < deadline, loading
                time.sleep(0.1)
            assert loading["stage"] == "encoding the catalogue" and loading["items"] == 60
            status, body, _ = client.request("GET", "/try/toys@v1?history=a")
            page = body.decode()
            assert status == 503 and 'http-equiv="refresh"' in page
            assert "toys@v1 is loading (encoding the catalogue: 60 of 60 items)" in page
            assert "loading: encoding the catalogue: 60 of 60 items" in _html(client, "/adapters/toys@v1")
            gate.set()
            while True:
                status, answer = client.post("/v1/recommend", {"subject": "toys", "history": ["a"], "top_k": 3})
                if status == 200:
                    break
                assert status == 503 and time.monotonic() < deadline, answer
                time.sleep(0.1)
            assert len(answer["items"]) == 3
            assert {row["subject"]: row for row in client.get("/v1/subjects")[1]}["toys@v1"]["loading"] is None
        finally:
            gate.set()
            server.should_exit = True
            thread.join(60)
            plugins.reset()
    assert not thread.is_alive()
