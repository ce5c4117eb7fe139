"""Progress of long work on a terminal, and silence everywhere else.

Training, evaluation, encoding a catalogue and the demo take minutes on a CPU; a
person at a terminal should see that they move.  Output that a program reads (a
pipe, a log file, ``--json``) must not fill up with bars.  So every display here
draws on stderr only when stderr is a terminal and nothing asked for silence
(:func:`silence`, which the CLI's ``--json`` sets), and costs nothing otherwise.

Library calls take ``progress=AUTO`` (that rule), ``None`` (silent) or their own
callback, so Python users get the same bars as the CLI without asking.
"""

from __future__ import annotations

import contextlib
import sys
from typing import TYPE_CHECKING, Callable, Iterator, Union

if TYPE_CHECKING:  # pragma: no cover
    from .training import TrainingProgress

AUTO = "auto"
TrainingCallback = Callable[["TrainingProgress"], None]
TrainingProgressArg = Union[TrainingCallback, str, None]

_silenced = False


def silence(quiet: bool = True) -> None:
    """Turn the automatic displays off (``--json``: stdout and stderr stay machine-clean)
    or back on."""
    global _silenced
    _silenced = quiet


def shows() -> bool:
    """Whether an automatic display draws now: stderr is a terminal and not silenced."""
    isatty = getattr(sys.stderr, "isatty", None)
    return not _silenced and bool(isatty and isatty())


def _bar(*columns):
    from rich.console import Console
    from rich.progress import Progress

    return Progress(*columns, console=Console(stderr=True), transient=False)


@contextlib.contextmanager
def task(description: str) -> Iterator[Callable[[int, int], None]]:
    """A bar for the block when :func:`shows`; yields ``update(done, total)`` (a no-op
    when nothing is drawn).  The bar appears with the first update."""
    if not shows():
        yield lambda done, total: None
        return
    from rich.progress import (BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    bar = _bar(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn())
    handle = None

    def update(done: int, total: int) -> None:
        nonlocal handle
        if handle is None:
            bar.start()
            handle = bar.add_task(description, total=total)
        bar.update(handle, completed=done, total=total)

    try:
        yield update
    finally:
        bar.stop()


@contextlib.contextmanager
def training_display(progress: TrainingProgressArg = AUTO,
                     label: str = "training") -> Iterator[TrainingCallback | None]:
    """The callback a training run reports to: ``progress`` itself when it is one,
    ``None`` for silence, and for :data:`AUTO` a bar on a terminal that names what
    trains (``label``: "toys adapter", "tools-x") with its epoch, loss, examples/s,
    elapsed and remaining time, and the last validation.

    The bar counts optimiser steps over the whole run, so its clocks run on from one
    epoch to the next, and it appears with the first report: nothing is drawn before
    the first step has a loss to show, and a run that fails its checks prints only its
    error."""
    if progress != AUTO:
        yield progress  # type: ignore[misc]
        return
    if not shows():
        yield None
        return
    from rich.progress import BarColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    bar = _bar(TextColumn("{task.description}"), TextColumn("epoch {task.fields[epoch]}"), BarColumn(),
               TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[rate]:.1f} ex/s"),
               TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[valid]}"))
    handle = None
    last_validation = ""

    def update(report: "TrainingProgress") -> None:
        nonlocal handle, last_validation
        if report.phase == "valid" and report.metrics:
            last_validation = "valid " + " ".join(f"{k} {v:.3f}" for k, v in report.metrics.items())
        fields = {"epoch": f"{report.epoch}/{report.epochs}", "loss": report.loss,
                  "rate": report.sequences_per_second, "valid": last_validation}
        done, total = report.overall_step, max(report.overall_steps, 1)
        if handle is None:  # the task starts with the first real report's values
            bar.start()
            handle = bar.add_task(label, total=total, completed=done, **fields)
        else:
            bar.update(handle, completed=done, total=total, **fields)

    try:
        yield update
    finally:
        bar.stop()
