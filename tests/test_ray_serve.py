"""The service on Ray Serve over a two-node Ray cluster on 127.0.0.1: two replicas,
subjects multiplexed, answers equal to the library's.  Ray's start-up is slow on two
cores (about 12 s for the cluster, then the replicas load torch), hence one test."""

from __future__ import annotations

import json
import os
import socket
import time
import urllib.error
import urllib.request

import pytest

# Ray resolves "127.0.0.1" to the machine's outward address unless clusters are
# limited to this host; this test's cluster must stay on the loopback interface.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install -e '.[ray]')")
pytest.importorskip("ray.serve", reason="the ray extra is not installed (pip install -e '.[ray]')")

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _post(url: str, document: dict, subject: str | None = None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    if subject:
        headers["serve_multiplexed_model_id"] = subject
    request = urllib.request.Request(url, data=json.dumps(document).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_two_replicas_on_two_nodes_answer_as_the_library(xreg_home, tiny_base, monkeypatch):
    from ray.cluster_utils import Cluster

    from xcross_registry import adapters, serving
    from xcross_registry.registry import Registry
    from xcross_registry.scorer import ScorerConfig
    from xcross_registry.server.ray_serve import RayServeConfig, deploy, undeploy
    from xcross_registry.training import TrainingConfig

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    registry = Registry()
    quick = TrainingConfig(epochs=1, max_users=16, batch_size=8, negatives=3, valid_users=10)
    for domain in ("toys", "tools"):
        registry.add_domain(domain, "synthetic", f"{domain}?users=40&items=60&max_len=6")
        adapters.train_adapter(registry, domain, base_model=tiny_base, training_config=quick,
                               scorer_config=ScorerConfig(mode="dual", max_length=64))

    began = time.monotonic()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "node_ip_address": "127.0.0.1",
                                                            "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
        ray.init(address=cluster.address)
        assert len([node for node in ray.nodes() if node["Alive"]]) == 2
        port = _free_port()
        url = deploy(RayServeConfig(replicas=2, max_models=1, port=port, cpus_per_replica=0.5))
        print(f"Ray cluster and deployment ready in {time.monotonic() - began:.1f} s")
        from ray import serve

        replicas = serve.status().applications["xreg"].deployments["Recommender"].replica_states
        assert replicas.get("RUNNING") == 2

        for subject in ("toys", "tools", "toys"):  # max_models=1: a replica swaps subjects
            model = serving.load_model(registry, subject)
            history = [model.data.items[i].title for i in model.data.test[0].history]
            status, answer = _post(f"{url}/v1/recommend", {"subject": subject, "history": history,
                                                            "top_k": 5}, subject=f"{subject}@v1")
            assert status == 200, answer
            expected = serving.recommend(model, history, top=5)
            assert answer["subject"] == f"{subject}@v1" and answer["digest"] == model.digest
            # The same response as xreg serve's: each history entry and what it matched.
            assert [(h["entry"], h["matched"]) for h in answer["history"]] == [(t, "title") for t in history]
            assert [i["item_id"] for i in answer["items"]] == [r.item_id for r in expected]
            assert [i["score"] for i in answer["items"]] == pytest.approx([r.score for r in expected], rel=1e-6)
        status, answer = _post(f"{url}/v1/recommend", {"subject": "nope", "history": ["x"]})
        assert status == 404 and "unknown subject 'nope'" in answer["error"]
        undeploy()
    finally:
        ray.shutdown()
        cluster.shutdown()
