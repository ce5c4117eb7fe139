"""One training run that ends in the registry: the skeleton shared by adapters and compositions.

``train_adapter`` and ``compose`` differ in what they build and what they store, not in
how a run goes: the time cap counts from the call's start, SIGTERM unwinds the run as
:class:`TrainingInterrupted` (so staging is cleaned and nothing half-registered stays),
progress is displayed, :func:`~xcross_registry.training.train_scorer` trains, and under a
multi-process launch only the main process stages artifacts and registers the row while
every process gets its key back.  :func:`train_and_register` is that skeleton; the
caller supplies the model (``prepare``) and the registration (``register``), and gets a
:class:`FinishedRun` that stores the run in the one shape both kinds share.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from .errors import ArtifactError, XregError
from .progress import AUTO, TrainingProgressArg, training_display

if TYPE_CHECKING:  # pragma: no cover
    from .data import DomainData
    from .registry import Registry
    from .scorer import Scorer
    from .templates import PromptTemplate
    from .training import Deadline, TrainingConfig, TrainingResult


class TrainingInterrupted(XregError):
    """A training run was stopped by a signal; nothing was registered."""


@dataclass(frozen=True)
class TrainingJob:
    """What a run trains: a fresh scorer, the domain data and the prompt template."""

    scorer: "Scorer"
    data: "DomainData"
    template: "PromptTemplate"


@dataclass(frozen=True)
class FinishedRun:
    """A finished run as the registrar sees it, with the stored forms of its record."""

    job: TrainingJob
    config: "TrainingConfig"
    result: "TrainingResult"
    wall_seconds: float

    def training_config(self, **extra: Any) -> dict[str, Any]:
        """What the row stores as ``training_config`` (adapters and compositions alike):
        the training options, the prompt template, the run record, plus ``extra``."""
        return {"training": self.config.to_dict(), "template": self.job.template.key,
                "run": self.result.run_record(self.wall_seconds), **extra}

    def metrics(self) -> dict[str, Any]:
        """What the row stores as ``metrics``: what training measured."""
        result = self.result
        return {"validation": result.best_metrics, "best_epoch": result.best_epoch,
                "train_users": result.train_users, "seconds": round(result.seconds, 1),
                "sequences_per_second": round(result.sequences_per_second, 2)}


# register(staging folder, finished run) -> the registered model's key (label or name)
Registrar = Callable[[Path, FinishedRun], str]


@contextlib.contextmanager
def signals_interrupt(what: str = "training") -> Iterator[None]:
    """Turn SIGTERM into :class:`TrainingInterrupted`, so a killed run unwinds and
    cleans its staging folder.  The CLI holds this for a whole command (``what``:
    "command"; model loading included); a run holds it again for itself."""
    def interrupt(signum, _frame):
        raise TrainingInterrupted(f"{what} stopped by signal {signum}; nothing was registered")

    with _sigterm_handler(interrupt):
        yield


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Let SIGTERM wait while a finished run stores its files and commits its row (a
    second or two): the run is then complete and the command ends as it would have a
    moment later.  Stopping half-way through would leave nothing registered either, but
    would throw away a finished training for a signal that came too late to save time."""
    received: list[int] = []
    with _sigterm_handler(lambda signum, _frame: received.append(signum)):
        yield


@contextlib.contextmanager
def _sigterm_handler(handler) -> Iterator[None]:
    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# Room beyond the trained weights' bytes (twice: staged, then stored) for the head,
# configs, manifests and what PEFT saves besides the LoRA weights.
STORE_MARGIN_BYTES = 64 * 2**20


def check_room_to_store(registry: "Registry", weight_bytes: int = 0) -> None:
    """Refuse a run whose result could not be stored, before it trains: the artifact
    store must be writable and, once the model is built (``weight_bytes``), its disk
    must have room for the trained weights."""
    from .garbage import format_bytes

    staging = registry.store.staging
    try:
        staging.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=staging).close()
    except OSError as exc:
        raise ArtifactError(f"cannot write to the artifact store {registry.store.root}: "
                            f"{exc.strerror or exc} (check XREG_HOME); nothing was trained") from None
    if weight_bytes:
        needed, free = weight_bytes + STORE_MARGIN_BYTES, shutil.disk_usage(staging).free
        if free < needed:
            raise ArtifactError(f"the artifact store {registry.store.root} has {format_bytes(free)} "
                                f"free; this run needs about {format_bytes(needed)} to store its "
                                "model; nothing was trained")


def train_run(registry: "Registry", prepare: Callable[[], TrainingJob], training_config: "TrainingConfig", *,
              progress: TrainingProgressArg = AUTO, should_stop: Callable[[], bool] | None = None,
              deadline: "Deadline | None" = None, label: str = "training") -> FinishedRun:
    """Build a model with ``prepare`` and train it; nothing is stored, but a run whose
    result could not be stored (a read-only store, a full disk) is refused before it
    trains.  SIGTERM unwinds the run as :class:`TrainingInterrupted`, model loading
    included.  ``deadline`` bounds the run (default: ``training_config.max_minutes``
    from this call's start, so checking and building count too; the CLI passes one from
    the command's start).  ``label`` names what trains on the progress bar."""
    from .training import Deadline, train_scorer

    started = time.perf_counter()
    deadline = deadline or Deadline.for_config(training_config)
    with signals_interrupt():
        check_room_to_store(registry)  # a read-only XREG_HOME fails now, not after training
        job = prepare()  # a SIGTERM while the model loads unwinds too
        check_room_to_store(registry, 2 * sum(p.numel() * p.element_size()
                                              for p in job.scorer.parameters() if p.requires_grad))
        with training_display(progress, label) as report:
            result = train_scorer(job.scorer, job.data, job.template, training_config, progress=report,
                                  should_stop=should_stop, deadline=deadline)
    return FinishedRun(job, training_config, result, time.perf_counter() - started)


def register_run(registry: "Registry", register: Registrar, run: FinishedRun, *, staging: str = "train") -> str:
    """Register a finished run with ``register``, in the main process only, inside a
    staging folder that is removed afterwards whatever happens (a SIGTERM then waits
    until the row is committed, see :func:`signals_deferred`); every process returns
    the key the main process registered."""
    from .training import is_main_process, wait_for_main

    key = None
    if is_main_process():
        with registry.store.staging_folder(staging) as folder, signals_deferred():
            key = register(folder, run)
    return wait_for_main(key)


def train_and_register(registry: "Registry", prepare: Callable[[], TrainingJob], register: Registrar,
                       training_config: "TrainingConfig", *, staging: str = "train",
                       progress: TrainingProgressArg = AUTO,
                       should_stop: Callable[[], bool] | None = None,
                       deadline: "Deadline | None" = None, label: str = "training") -> str:
    """Build a model with ``prepare``, train it, and register it with ``register``
    (:func:`train_run`, then :func:`register_run`); returns the registered key."""
    run = train_run(registry, prepare, training_config, progress=progress, should_stop=should_stop,
                    deadline=deadline, label=label)
    return register_run(registry, register, run, staging=staging)
