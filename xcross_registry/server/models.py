"""Loaded subjects for the service: an LRU bounded by count, each with a micro-batcher.

Loading a composition takes seconds (base model, stored sources, integrators) and a
dual model's first load also encodes the catalogue (minutes for 10k items on a busy
CPU), so loads run as background tasks on a loader thread pool, one per subject: a
slow load never holds up requests for subjects that are already loaded, concurrent
first requests for one subject share a single load, and a request waits for a load
at most ``load_wait_s`` before it is answered "still loading" (HTTP 503 with
``Retry-After``) while the load goes on.  Each load keeps a :class:`LoadProgress`
(catalogue items encoded of N) that ``/v1/subjects`` and the pages show.  Scoring runs
on one compute thread; the torch ops inside it use the machine's cores.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Sequence

from ..ann import AnnConfig
from ..errors import NotFoundError, XregError
from ..registry import Registry
from ..runtimes import use_runtime
from ..serving import Query, Recommendation, catalogue, load_model, recommend_many
from ..subjects import LoadedSubject, Subject, resolve_subject

# A subject whose load failed is answered 503 at once for this long, then retried.
FAILED_LOAD_RETRY_S = 30.0


# A request waits this long for a load it started or found under way, then is answered
# 503 "still loading" (the load goes on).
LOAD_WAIT_S = 10.0
PROGRESS_LOG_EVERY_S = 5.0
# A name's registry record is reused this long before it is looked up again.
NAME_CACHE_S = 1.0


class SubjectUnavailable(Exception):
    """A subject exists but its model cannot be loaded (HTTP 503 for that subject only)."""

    retry_after: int | None = None


@dataclass
class LoadProgress:
    """How far a subject's load is: reading the model, then (a catalogue ranker)
    encoding its catalogue, ``done`` of ``total`` items.  Written by the loader thread,
    read by requests."""

    subject: str
    started: float  # time.monotonic() when the load began
    stage: str = "reading the model"
    done: int = 0
    total: int = 0

    def describe(self) -> str:
        if self.stage == "encoding the catalogue" and self.total:
            return f"encoding the catalogue: {self.done:,} of {self.total:,} items"
        return self.stage

    def retry_after(self) -> int:
        """Seconds a client had best wait: what the encoding rate so far leaves, within
        1 to 30 s (2 s while there is no rate to go by)."""
        elapsed = time.monotonic() - self.started
        if not (self.done and self.total and elapsed > 0):
            return 2
        return max(1, min(30, round((self.total - self.done) * elapsed / self.done)))

    def as_dict(self) -> dict:
        return {"stage": self.stage, "items_encoded": self.done, "items": self.total,
                "seconds": round(time.monotonic() - self.started, 1)}


class SubjectLoading(SubjectUnavailable):
    """The subject's load is under way and did not finish within the wait (HTTP 503
    with ``Retry-After``)."""

    def __init__(self, progress: LoadProgress) -> None:
        super().__init__(f"{progress.subject} is loading ({progress.describe()}); "
                         "try again shortly")
        self.progress = progress
        self.retry_after = progress.retry_after()


@dataclass
class BatchingConfig:
    """How requests are grouped: up to ``max_batch`` that arrive within ``wait_s`` of the
    first one are scored together.  ``max_batch=1`` scores each request alone.  The wait
    applies only while the model is busy (queries were queued when its last batch ended):
    a lone client is never held back for companions that will not come."""

    max_batch: int = 32
    wait_s: float = 0.005


class MicroBatcher:
    """Collects the queries for one loaded model and scores them in batches.

    While a batch is being scored, new queries queue up; the next batch takes them all
    (up to ``max_batch``), so under load batches grow by themselves.  A query that finds
    the batcher idle is scored at once: waiting ``wait_s`` for companions only pays when
    others are already queued, and on an idle service it is pure latency (``waits``
    counts the batches that did wait)."""

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
        self.waits = 0

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
        busy = False  # were queries queued when the last batch was answered?
        while True:
            if not self._pending:
                if self._closed:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                if not self._pending:
                    continue
            if busy and len(self._pending) < self._config.max_batch and self._config.wait_s > 0:
                self.waits += 1
                await asyncio.sleep(self._config.wait_s)  # let the queued ones' companions join
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
            busy = bool(self._pending)

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


class SubjectNames:
    """Subject names resolved to their registry records, each record reused until it is
    ``max_age_s`` old (0: looked up on every request).  The lookup is a few database
    queries, several milliseconds of a request that scores in tens; a new version or a
    removal is seen within ``max_age_s``.  A bad name is never cached, so one registered
    a moment later is found at once."""

    def __init__(self, registry: Registry, max_age_s: float = NAME_CACHE_S) -> None:
        self.registry = registry
        self.max_age_s = max_age_s
        self._records: dict[str, tuple[float, Subject]] = {}

    async def resolve(self, name: str) -> Subject:
        """The record of ``name`` (NotFoundError/ValidationError for a bad name)."""
        cached = self._records.get(name)
        if cached is not None and time.monotonic() - cached[0] < self.max_age_s:
            return cached[1]
        try:
            subject = await asyncio.get_running_loop().run_in_executor(
                None, lambda: resolve_subject(self.registry, name))
        except NotFoundError as exc:
            raise NotFoundError(f"unknown subject {name!r}: {exc}") from None
        self._records[name] = (time.monotonic(), subject)
        return subject


class ModelCache:
    """Subjects loaded on first use (or preloaded), at most ``max_models`` at a time.

    ``log`` receives a line when a load starts, as it encodes (every few seconds) and
    when it ends: the server log of ``xreg serve``.  ``runtime`` encodes request
    histories and ``ann`` decides which catalogues get an approximate index; names are
    resolved through a :class:`SubjectNames` of ``name_cache_s``."""

    def __init__(self, registry: Registry, max_models: int, batching: BatchingConfig,
                 runtime: str = "torch", ann: AnnConfig | None = None,
                 load_wait_s: float = LOAD_WAIT_S, name_cache_s: float = NAME_CACHE_S,
                 log: Callable[[str], None] | None = None) -> None:
        self.registry = registry
        self.max_models = max_models
        self.batching = batching
        self.runtime = runtime
        self.ann = ann or AnnConfig()
        self.load_wait_s = load_wait_s
        self._names = SubjectNames(registry, name_cache_s)
        self._log = log or (lambda line: None)
        self._loaded: OrderedDict[str, Served] = OrderedDict()
        self._loads: dict[str, asyncio.Task] = {}
        self._failed: dict[str, tuple[float, str]] = {}
        self.loading: dict[str, LoadProgress] = {}
        self._loader = ThreadPoolExecutor(max_workers=2, thread_name_prefix="xreg-load")
        self._compute = ThreadPoolExecutor(max_workers=1, thread_name_prefix="xreg-score")

    def loaded(self) -> list[str]:
        return list(self._loaded)

    def batching_stats(self) -> dict[str, dict[str, int]]:
        """Per loaded subject: requests scored, the batches they were scored in, and how
        many of those batches waited for companions."""
        return {name: {"requests": served.batcher.queries, "batches": served.batcher.batches,
                       "waits": served.batcher.waits}
                for name, served in self._loaded.items()}

    def failures(self) -> dict[str, str]:
        return {name: message for name, (_, message) in self._failed.items()}

    def state(self, name: str) -> dict | None:
        """Where subject ``name`` stands: ``{"status": "loaded" | "loading" | "failed", ...}``
        with a load's progress or a failure's message; ``None`` when it was never asked for."""
        if name in self._loaded:
            return {"status": "loaded"}
        if name in self.loading:
            return {"status": "loading", "progress": self.loading[name].as_dict(),
                    "describe": self.loading[name].describe()}
        if name in self._failed:
            return {"status": "failed", "error": self._failed[name][1]}
        return None

    async def resolve(self, name: str) -> Subject:
        """The registry's record of ``name`` (see :class:`SubjectNames`)."""
        return await self._names.resolve(name)

    async def get(self, name: str, wait_s: float | None = None, patient: bool = False) -> Served:
        """The served model of subject ``name``, loading it if needed; a load that takes
        longer than ``wait_s`` (default ``load_wait_s``) raises :class:`SubjectLoading`
        and goes on, unless ``patient`` (``--preload``: wait however long it takes)."""
        subject = await self.resolve(name)
        subject.check_serves()
        key = subject.name
        if key in self._loaded:
            self._loaded.move_to_end(key)
            return self._loaded[key]
        load = self._loads.get(key)
        if load is None:
            failed = self._failed.get(key)
            if failed is not None and time.monotonic() - failed[0] < FAILED_LOAD_RETRY_S:
                raise SubjectUnavailable(failed[1])
            self.loading[key] = LoadProgress(key, time.monotonic())
            load = self._loads[key] = asyncio.create_task(self._load_and_keep(subject))
        try:
            limit = None if patient else self.load_wait_s if wait_s is None else wait_s
            return await asyncio.wait_for(asyncio.shield(load), limit)
        except asyncio.TimeoutError:
            raise SubjectLoading(self.loading[key]) from None

    async def _load_and_keep(self, subject: Subject) -> Served:
        key = subject.name
        progress = self.loading[key]
        self._log(f"loading {key}")
        try:
            model = await asyncio.get_running_loop().run_in_executor(
                self._loader, self._load, subject, progress)
        except NotFoundError:
            raise
        except (XregError, OSError, RuntimeError, ValueError) as exc:
            message = f"{key} cannot be loaded: {exc}"
            self._failed[key] = (time.monotonic(), message)
            self._log(message)
            raise SubjectUnavailable(message) from exc
        finally:
            self.loading.pop(key, None)
            self._loads.pop(key, None)
        self._failed.pop(key, None)
        self._log(f"{key} loaded in {time.monotonic() - progress.started:.1f} s")
        served = Served(subject, model, MicroBatcher(model, self._compute, self.batching))
        self._loaded[key] = served
        while len(self._loaded) > self.max_models:
            _, evicted = self._loaded.popitem(last=False)
            evicted.batcher.close()  # in-flight requests still get their answers
        return served

    def _load(self, subject: Subject, progress: LoadProgress) -> LoadedSubject:
        model = load_model(self.registry, subject.name)
        if model.scorer.mode.ranks_catalogue:
            # Built (or read from the cache) now, not by a request: the catalogue's
            # embeddings, prior and index, and the runtime that encodes histories.
            progress.stage, progress.total = "encoding the catalogue", len(model.data.items)
            logged = [time.monotonic()]

            def encoded(done: int, total: int) -> None:
                progress.done = done
                now = time.monotonic()
                if now - logged[0] >= PROGRESS_LOG_EVERY_S or done == total:
                    logged[0] = now
                    self._log(f"{subject.name}: encoded {done:,} of {total:,} catalogue items")

            catalogue(model, self.ann, progress=encoded)
            use_runtime(model, self.runtime)
        return model

    def shutdown(self) -> None:
        for load in self._loads.values():
            load.cancel()
        self._loader.shutdown(wait=False, cancel_futures=True)
        self._compute.shutdown(wait=False, cancel_futures=True)
