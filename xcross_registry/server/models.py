"""Loaded subjects for the service: an LRU bounded by count, each with a micro-batcher.

Loading a composition takes seconds (base model, stored sources, integrators) and a
dual model's first load also encodes the catalogue, so loads run on a loader thread
pool, one at a time per subject (an asyncio lock per name): a slow load never holds
up requests for subjects that are already loaded, and concurrent first requests for
one subject share a single load.  Scoring runs on one compute thread; the torch ops
inside it use the machine's cores.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Sequence

from ..errors import NotFoundError, XregError
from ..registry import Registry
from ..ann import AnnConfig
from ..runtimes import use_runtime
from ..serving import Query, Recommendation, catalogue, load_model, recommend_many
from ..subjects import LoadedSubject, Subject, resolve_subject

# A subject whose load failed is answered 503 at once for this long, then retried.
FAILED_LOAD_RETRY_S = 30.0


class SubjectUnavailable(Exception):
    """A subject exists but its model cannot be loaded (HTTP 503 for that subject only)."""


@dataclass
class BatchingConfig:
    """How requests are grouped: up to ``max_batch`` that arrive within ``wait_s`` of the
    first one are scored together.  ``max_batch=1`` scores each request alone."""

    max_batch: int = 32
    wait_s: float = 0.005


class MicroBatcher:
    """Collects the queries for one loaded model and scores them in batches.

    While a batch is being scored, new queries queue up; the next batch takes them all
    (up to ``max_batch``), so under load batches grow by themselves and the wait bound
    only matters when the service is nearly idle."""

    def __init__(self, model: LoadedSubject, compute: ThreadPoolExecutor, config: BatchingConfig) -> None:
        self.model = model
        self._compute = compute
        self._config = config
        self._pending: list[tuple[Query, asyncio.Future]] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._closed = False
        self.batches = 0
        self.queries = 0

    async def submit(self, query: Query) -> list[Recommendation]:
        future = asyncio.get_running_loop().create_future()
        self._pending.append((query, future))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())
        self._wakeup.set()
        return await future

    def close(self) -> None:
        """Stop the batching task once the queued queries are answered (the model was
        evicted; a request still holding this batcher starts it again)."""
        self._closed = True
        self._wakeup.set()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                if self._closed:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                if not self._pending:
                    continue
            if len(self._pending) < self._config.max_batch and self._config.wait_s > 0:
                await asyncio.sleep(self._config.wait_s)  # let requests arriving together join
            batch = self._pending[:self._config.max_batch]
            del self._pending[:len(batch)]
            answers = await loop.run_in_executor(self._compute, self._score, [q for q, _ in batch])
            self.batches += 1
            self.queries += len(batch)
            for (_, future), answer in zip(batch, answers):
                if future.done():  # the client went away
                    continue
                if isinstance(answer, BaseException):
                    future.set_exception(answer)
                else:
                    future.set_result(answer)

    def _score(self, queries: Sequence[Query]) -> list:
        """The batch's answers; when it fails, each query alone, so that one query's
        problem is its own error and not its batch-mates'."""
        try:
            return recommend_many(self.model, queries)
        except Exception as exc:
            if len(queries) == 1:
                return [exc]
        answers: list = []
        for query in queries:
            try:
                answers.append(recommend_many(self.model, [query])[0])
            except Exception as exc:
                answers.append(exc)
        return answers


@dataclass
class Served:
    """A loaded model and its batcher."""

    subject: Subject
    model: LoadedSubject
    batcher: MicroBatcher


class ModelCache:
    """Subjects loaded on first use (or preloaded), at most ``max_models`` at a time."""

    def __init__(self, registry: Registry, max_models: int, batching: BatchingConfig,
                 runtime: str = "torch", ann: AnnConfig | None = None) -> None:
        self.registry = registry
        self.max_models = max_models
        self.batching = batching
        self.runtime = runtime
        self.ann = ann or AnnConfig()
        self._loaded: OrderedDict[str, Served] = OrderedDict()
        self._locks: dict[str, asyncio.Lock] = {}
        self._failed: dict[str, tuple[float, str]] = {}
        self.loading: set[str] = set()
        self._loader = ThreadPoolExecutor(max_workers=2, thread_name_prefix="xreg-load")
        self._compute = ThreadPoolExecutor(max_workers=1, thread_name_prefix="xreg-score")

    def loaded(self) -> list[str]:
        return list(self._loaded)

    def batching_stats(self) -> dict[str, dict[str, int]]:
        """Per loaded subject: requests scored and the batches they were scored in."""
        return {name: {"requests": served.batcher.queries, "batches": served.batcher.batches}
                for name, served in self._loaded.items()}

    def failures(self) -> dict[str, str]:
        return {name: message for name, (_, message) in self._failed.items()}

    async def resolve(self, name: str) -> Subject:
        """The registry's record of ``name`` (NotFoundError/ValidationError for a bad name)."""
        try:
            return await asyncio.get_running_loop().run_in_executor(
                None, lambda: resolve_subject(self.registry, name))
        except NotFoundError as exc:
            raise NotFoundError(f"unknown subject {name!r}: {exc}") from None

    async def get(self, name: str) -> Served:
        """The served model of subject ``name``, loading it if needed."""
        subject = await self.resolve(name)
        subject.check_serves()
        key = subject.name
        if key in self._loaded:
            self._loaded.move_to_end(key)
            return self._loaded[key]
        async with self._locks.setdefault(key, asyncio.Lock()):
            if key in self._loaded:  # loaded by the request we waited for
                self._loaded.move_to_end(key)
                return self._loaded[key]
            failed = self._failed.get(key)
            if failed is not None and time.monotonic() - failed[0] < FAILED_LOAD_RETRY_S:
                raise SubjectUnavailable(failed[1])
            self.loading.add(key)
            try:
                model = await asyncio.get_running_loop().run_in_executor(
                    self._loader, self._load, subject)
            except NotFoundError:
                raise
            except (XregError, OSError, RuntimeError, ValueError) as exc:
                message = f"{key} cannot be loaded: {exc}"
                self._failed[key] = (time.monotonic(), message)
                raise SubjectUnavailable(message) from exc
            finally:
                self.loading.discard(key)
            self._failed.pop(key, None)
            served = Served(subject, model, MicroBatcher(model, self._compute, self.batching))
            self._loaded[key] = served
            while len(self._loaded) > self.max_models:
                _, evicted = self._loaded.popitem(last=False)
                evicted.batcher.close()  # in-flight requests still get their answers
            return served

    def _load(self, subject: Subject) -> LoadedSubject:
        model = load_model(self.registry, subject.name)
        if model.scorer.mode.ranks_catalogue:
            # Built (or read from the cache) now, not by a request: the catalogue's
            # embeddings, prior and index, and the runtime that encodes histories.
            catalogue(model, self.ann)
            use_runtime(model, self.runtime)
        return model

    def shutdown(self) -> None:
        self._loader.shutdown(wait=False, cancel_futures=True)
        self._compute.shutdown(wait=False, cancel_futures=True)
