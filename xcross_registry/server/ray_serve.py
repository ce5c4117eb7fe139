"""The service on Ray Serve: replicas across a Ray cluster, models multiplexed by subject.

``xreg serve`` is one process; past one machine a team runs N of them behind a load
balancer (README), or this deployment on a Ray cluster, which adds what a load balancer
does not know: Ray Serve routes each request to a replica that already holds its
subject (model multiplexing: the subject is the multiplexed model id, sent in the
``serve_multiplexed_model_id`` header), and each replica keeps at most ``max_models``
subjects loaded, evicting the least recently used, as ``--max-models`` does in one
process.  ``POST /v1/recommend`` takes and answers the same JSON as ``xreg serve``.

Every replica reads the same registry: the deploying process's ``XREG_*`` settings (a
PostgreSQL URL and an object store, for replicas on several machines) are passed to the
replicas' environment.  The ``ray`` extra installs Ray Serve.

No ``from __future__ import annotations`` here: Ray ships the deployment class to its
replicas by value, and FastAPI must find the request model in the annotation itself.
"""

import asyncio
import os
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from ..errors import NotFoundError, ValidationError, XregError
from .api import RankedItem, RecommendRequest, RecommendResponse, match_report

# Environment the replicas need to find the registry, its artifacts and the model files.
FORWARDED_ENVIRONMENT = ("XREG_HOME", "XREG_DATABASE_URL", "XREG_ARTIFACTS", "XREG_LOAD_PLUGINS",
                         "HF_HUB_OFFLINE", "OMP_NUM_THREADS", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID",
                         "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
APPLICATION = "xreg"


@dataclass
class RayServeConfig:
    """What ``xreg serve-ray`` deploys: ``replicas`` copies (one CPU each) answering on
    ``host:port`` of every node, each holding at most ``max_models`` subjects."""

    replicas: int = 2
    max_models: int = 4
    host: str = "127.0.0.1"
    port: int = 8000
    runtime: str = "torch"
    ann_min_items: int = 100_000
    cpus_per_replica: float = 1.0

    def __post_init__(self) -> None:
        from ..runtimes import runtime

        runtime(self.runtime)
        for name in ("replicas", "max_models", "ann_min_items"):
            if getattr(self, name) < 1:
                raise ValidationError(f"--{name.replace('_', '-')} must be at least 1, not {getattr(self, name)}")


def _ray():
    try:
        import ray
        from ray import serve
    except ImportError as exc:
        raise ValidationError("serve-ray needs Ray Serve: pip install 'xcross-registry[ray]'") from exc
    return ray, serve


def build_application(config: RayServeConfig) -> Any:
    """The bound Ray Serve application of ``config`` (deploy it with ``serve.run``)."""
    _, serve = _ray()
    app = FastAPI(title="xcross-registry on Ray Serve")

    @serve.deployment(num_replicas=config.replicas,
                      ray_actor_options={"num_cpus": config.cpus_per_replica, "runtime_env": {"env_vars": {
                          name: os.environ[name] for name in FORWARDED_ENVIRONMENT if name in os.environ}}})
    @serve.ingress(app)
    class Recommender:
        def __init__(self) -> None:
            from ..registry import Registry
            from .models import SubjectNames

            self.registry = Registry()
            self.names = SubjectNames(self.registry)

        @serve.multiplexed(max_num_models_per_replica=config.max_models)
        async def model(self, subject: str):
            return await asyncio.to_thread(self._load, subject)

        def _load(self, subject: str):
            from ..ann import AnnConfig
            from ..runtimes import use_runtime
            from ..serving import catalogue, load_model

            model = load_model(self.registry, subject)
            if model.scorer.mode.ranks_catalogue:
                catalogue(model, AnnConfig(min_items=config.ann_min_items))
                use_runtime(model, config.runtime)
            return model

        @app.post("/v1/recommend", response_model=RecommendResponse)
        async def recommend(self, body: RecommendRequest):
            from ..serving import Query, recommend_many

            try:
                subject = await self.names.resolve(body.subject)
                subject.check_serves()
                routed = serve.get_multiplexed_model_id()
                if routed and routed not in (body.subject, subject.name):
                    raise ValidationError(f"the request names {body.subject!r} but was routed for {routed!r}")
                model = await self.model(subject.name)
                query = Query(body.history, body.candidates, body.top_k, body.exclude_history)
                ranked = (await asyncio.to_thread(recommend_many, model, [query]))[0]
            except NotFoundError as exc:
                return JSONResponse({"error": str(exc)}, status_code=404)
            except XregError as exc:
                return JSONResponse({"error": str(exc)}, status_code=422)
            return RecommendResponse(subject=subject.name, kind=model.kind, version=model.version,
                                     digest=model.digest, domain=model.domain,
                                     history=match_report(model, body.history),
                                     items=[RankedItem(**r.as_dict()) for r in ranked])

        @app.get("/healthz")
        async def healthz(self) -> dict[str, str]:
            return {"status": "ok"}

    return Recommender.bind()


def deploy(config: RayServeConfig, address: str | None = None) -> str:
    """Connect to the Ray cluster at ``address`` (default: the one ``RAY_ADDRESS`` or a
    running ``ray start`` names), start Serve's HTTP proxy on ``host:port`` and deploy;
    return the service's URL."""
    ray, serve = _ray()
    if not ray.is_initialized():
        ray.init(address=address or "auto")
    serve.start(http_options={"host": config.host, "port": config.port})
    serve.run(build_application(config), name=APPLICATION, route_prefix="/")
    return f"http://{config.host}:{config.port}"


def undeploy() -> None:
    """Remove the deployment and Serve's actors from the cluster (the cluster stays)."""
    _, serve = _ray()
    serve.shutdown()
