"""Checks on the numbers and paths a user gives, shared by every command that takes them.

A learning rate of ``inf`` or ``nan`` passes ``lr > 0`` or fails it silently in the
wrong place, and a seed of -1 or 2**32 fails deep inside numpy after a model has
loaded; these checks run when a config is built, before any model loads, and say in
one line what is wrong.  Torch-free: registry-side configs use them too.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from .errors import ValidationError

SEED_LIMIT = 2**32  # numpy's legacy seeding (used by accelerate's set_seed) takes [0, 2**32)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def finite_positive(name: str, value: Any) -> None:
    """``value`` must be a finite number above zero (a learning rate, a time cap)."""
    if not _is_number(value) or not math.isfinite(value) or not value > 0:
        raise ValidationError(f"{name} must be a finite number above 0, not {value!r}")


def finite_in_range(name: str, value: Any, low: float, high: float, *, high_open: bool = False) -> None:
    """``value`` must be a finite number in [low, high] (or [low, high) with ``high_open``)."""
    above = value >= high if high_open else value > high
    if not _is_number(value) or not math.isfinite(value) or value < low or above:
        interval = f"[{low:g}, {high:g}{')' if high_open else ']'}"
        raise ValidationError(f"{name} must be a finite number in {interval}, not {value!r}")


def check_seed(name: str, value: Any) -> None:
    """A seed every random generator here accepts: an integer in [0, 2**32)."""
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < SEED_LIMIT:
        raise ValidationError(f"{name} must be an integer from 0 to {SEED_LIMIT - 1}, not {value!r}")


# What matplotlib writes (FigureCanvasBase.get_supported_filetypes), listed here so that
# a command checks its --plot path before any work without importing matplotlib.
PLOT_SUFFIXES = (".png", ".pdf", ".svg", ".svgz", ".jpg", ".jpeg", ".tif", ".tiff", ".webp",
                 ".eps", ".ps", ".pgf")


def check_plot_path(path: Any, option: str = "--plot") -> Path:
    """A file a plot may be written to: a known image suffix, in a folder that exists and
    is writable, and not itself a folder (matplotlib would write ``DIR.png`` beside it)."""
    target = Path(path)
    if target.is_dir():
        raise ValidationError(f"{option} {path} is a folder; give a file name such as "
                              f"{target / 'plot.png'}")
    if target.suffix.lower() not in PLOT_SUFFIXES:
        raise ValidationError(f"{option} {path}: unknown image format "
                              f"{target.suffix or '(no suffix)'}; use one of {', '.join(PLOT_SUFFIXES)}")
    folder = target.parent
    if not folder.is_dir():
        raise ValidationError(f"{option} {path}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise ValidationError(f"{option} {path}: the folder {folder} is not writable")
    return target
