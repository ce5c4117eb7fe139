"""The hooks a plugin may implement.

Each hook receives a ``register`` callback, the pattern of ``llm`` and ``tox``: a plugin
calls it once per thing it contributes, so one plugin can contribute several domain
types and adding a hook argument later does not break existing plugins.

A plugin is a module with functions decorated by :data:`hookimpl`::

    from xcross_registry import hookimpl, DomainType, PromptTemplate

    @hookimpl
    def register_domains(register):
        register(DomainType(name="books", load=load_books,
                            templates=[PromptTemplate(name="books", version=1)]))

and one entry point in the group ``xcross_registry`` that names that module.  The
data contract, the helpers and the test kit are described in docs/plugins.md.
"""

from __future__ import annotations

from typing import Callable

import pluggy

PROJECT_NAME = "xcross_registry"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def register_domains(register: Callable[..., None]) -> None:
    """Contribute domain types: call ``register(domain_type)`` with a
    :class:`xcross_registry.data.DomainType` for each one."""
