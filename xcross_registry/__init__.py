"""xcross-registry: integrate the LoRA adapters you have for other domains into
recommendations for a new one (X-Cross, SIGIR 2025).

The package root is the public plugin API (docs/plugins.md)::

    from xcross_registry import hookimpl, DomainType, DomainData, Item, UserSequence, PromptTemplate, DataError

Kept import-light on purpose: registry commands and plugins must start without torch,
so nothing imported here pulls in torch, transformers or peft.
"""

# The plugin contract's version (docs/plugins.md, "Versions of the contract"): MAJOR
# changes when a plugin that worked may be refused, MINOR when something is added.
# Every change is recorded in CHANGELOG.md.  A plugin that needs at least 2.1 says
# ``REQUIRES_PLUGIN_API = (2, 1)`` in its module; `xreg plugins` then lists it as an
# error wherever the installed library does not offer that.
PLUGIN_API_VERSION = (2, 0)

from .data import DomainData, DomainType, Item, UserSequence  # noqa: E402
from .errors import DataError  # noqa: E402
from .hookspecs import hookimpl  # noqa: E402
from .templates import PromptTemplate  # noqa: E402

__version__ = "0.2.0"

__all__ = ["DataError", "DomainData", "DomainType", "Item", "PLUGIN_API_VERSION", "PromptTemplate",
           "UserSequence", "__version__", "hookimpl"]
