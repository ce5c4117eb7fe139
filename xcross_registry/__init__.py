"""xcross-registry: integrate the LoRA adapters you have for other domains into
recommendations for a new one (X-Cross, SIGIR 2025).

The package root is the public plugin API (docs/plugins.md)::

    from xcross_registry import hookimpl, DomainType, DomainData, Item, UserSequence, PromptTemplate, DataError

Kept import-light on purpose: registry commands and plugins must start without torch,
so nothing imported here pulls in torch, transformers or peft.
"""

from .data import DomainData, DomainType, Item, UserSequence
from .errors import DataError
from .hookspecs import hookimpl
from .templates import PromptTemplate

__version__ = "0.1.0"

__all__ = ["DataError", "DomainData", "DomainType", "Item", "PromptTemplate", "UserSequence",
           "__version__", "hookimpl"]
