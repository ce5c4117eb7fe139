"""Checks on the numbers a user gives, shared by every config that takes them.

A learning rate of ``inf`` or ``nan`` passes ``lr > 0`` or fails it silently in the
wrong place, and a seed of -1 or 2**32 fails deep inside numpy after a model has
loaded; these checks run when a config is built, before any model loads, and say in
one line what is wrong.  Torch-free: registry-side configs use them too.
"""

from __future__ import annotations

import math
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
