"""The project's exception types.

Every failure a user can cause (a bad name, a malformed file, a corrupt weight file,
a mismatched adapter) is raised as an :class:`XregError` subclass.  The CLI turns any
of them into one readable line on stderr and a non-zero exit; anything else is a bug.
"""


class XregError(Exception):
    """Base class of every error that is the user's input rather than our bug."""


class ValidationError(XregError):
    """A name, option or value given by the user is not acceptable."""


class NotFoundError(XregError):
    """A named domain, adapter, composition, plugin or template does not exist."""


class ConflictError(XregError):
    """The operation would break the registry: a duplicate name, a dependent row."""


class DataError(XregError):
    """A domain's data files are missing or malformed; the message names the file."""


class ArtifactError(XregError):
    """An artifact is missing, or its bytes no longer match the digest it was stored under."""


class PluginError(XregError):
    """A plugin failed to load or raised inside a hook."""


class ModelError(XregError):
    """A base model or adapter cannot be loaded, or does not fit the model it is used with."""


class DatabaseError(XregError):
    """The registry database cannot be used: a bad URL, a missing driver, a corrupt or
    read-only file, or a schema written by a newer xcross-registry.  Messages show the
    URL with its password masked."""


class XregWarning(UserWarning):
    """Something the user asked for was adjusted rather than refused (an ignored
    ``--bf16``, say); the CLI prints it as one ``warning: ...`` line."""


def refuse_unknown_fields(cls: type, values: dict, what: str) -> dict:
    """``values`` for ``cls(**values)``, refusing keys that are not fields of the dataclass
    ``cls``: a stored or user-given config with a misspelt key must fail by name, not
    raise a TypeError from the constructor (or be silently dropped)."""
    unknown = sorted(set(values) - set(cls.__dataclass_fields__))
    if unknown:
        raise ValidationError(f"unknown {what} field(s): {', '.join(unknown)}")
    return values
