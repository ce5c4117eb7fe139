"""Tables of classes by name, which built-ins and plugins extend alike: scoring modes,
composition methods, baselines and split strategies each keep one (``SCORING_MODES``,
``COMPOSITION_METHODS``, ``BASELINES``, ``SPLIT_STRATEGIES``) and register into it here.

Torch-free, like every module a plugin imports at load time.
"""

from __future__ import annotations

from typing import TypeVar

from .errors import ValidationError

Named = TypeVar("Named", bound=type)


def add_named_class(table: dict[str, type], cls: Named, what: str) -> Named:
    """Put ``cls`` into ``table`` under ``cls.name`` and return it (so callers can be
    class decorators).  A name is taken once: a second class under it would silently
    change what stored records of that name mean, so it is refused, naming the first."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name.strip():
        raise ValidationError(f"{what} class {cls.__name__} needs a non-empty name")
    if name in table:
        raise ValidationError(f"{what} {name!r} is already registered ({table[name].__qualname__})")
    table[name] = cls
    return cls
