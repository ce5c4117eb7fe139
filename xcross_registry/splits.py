"""Split strategies: how a domain's users and interactions become train / valid / test.

A table of classes, like scoring modes and composition methods.  A domain is
registered with one (``xreg add-domain ... --split NAME[?key=value&...]``); the
registry stores its canonical text and applies it every time the data is loaded:

* ``user`` (the default): the loader's own splits, disjoint by user, as the Recformer
  and X-Cross papers evaluate (a test user is unseen in training).  The data is kept
  exactly as the plugin made it, so its fingerprint is the one it always had.
* ``leave-one-out`` (SASRec, BERT4Rec, S3-Rec, P5, TIGER): every user's last item is
  the test target, the one before it the validation target, the rest training.
* ``temporal?valid=Q1&test=Q2``: a global time cut, as in production.  Interactions
  before the ``valid`` quantile of all timestamps are training; a user's first
  interaction in [valid cut, test cut) is their validation target (history: what came
  before the valid cut), their first at or after the test cut their test target
  (history: everything before the test cut).  Needs timestamps from the plugin.

Strategies other than ``user`` pool the users of all the loader's splits (each
sequence is a user's whole history), order them by user id, and re-split them; the
result no longer keeps users apart (``disjoint_users`` False), and its
:attr:`~xcross_registry.data.DomainData.split_strategy` puts the strategy into the
fingerprint.  Fractions (``--fraction``) select among the training sequences under
every strategy; every test user is still tested.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

from .data import DEFAULT_SPLIT_STRATEGY, MIN_SEQUENCE_LENGTH, DomainData, UserSequence
from .errors import DataError, ValidationError
from .named_tables import add_named_class

Converter = Any  # a plugin_helpers option converter: text -> value, ValueError when bad


@dataclass(frozen=True)
class SplitSpec:
    """A strategy and its options, all of them (defaults filled in), as stored."""

    name: str
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def text(self) -> str:
        """The canonical form (``temporal?test=0.9&valid=0.8``): stored with the domain
        and hashed into the fingerprint, so one split has one text."""
        if not self.options:
            return self.name
        return self.name + "?" + "&".join(f"{key}={value}" for key, value in self.options)

    @property
    def settings(self) -> dict[str, Any]:
        return dict(self.options)


class SplitStrategy:
    """Makes the splits of a domain from a loader's output.

    ``options`` maps each option to its converter (``plugin_helpers`` style) and
    ``defaults`` gives every option's value when not given; :meth:`check` refuses
    option values that do not fit together.  ``needs_times``: every sequence must carry
    timestamps.  ``disjoint_users``: whether the result keeps users apart."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    options: ClassVar[Mapping[str, Converter]] = {}
    defaults: ClassVar[Mapping[str, Any]] = {}
    needs_times: ClassVar[bool] = False
    disjoint_users: ClassVar[bool] = False

    def check(self, settings: dict[str, Any]) -> None:
        """Refuse settings that do not fit together (ValidationError)."""

    def split(self, data: DomainData, settings: dict[str, Any]) -> DomainData:
        raise NotImplementedError


def quantile(text: str) -> float:
    """An option converter: a quantile strictly between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < 1:  # NaN fails too
        raise ValueError("must be a quantile strictly between 0 and 1")
    return value


class UserDisjoint(SplitStrategy):
    """The loader's splits as they are (see the module docstring)."""

    name = DEFAULT_SPLIT_STRATEGY
    description = "the plugin's own splits, disjoint by user (Recformer / X-Cross)"
    disjoint_users = True

    def split(self, data: DomainData, settings: dict[str, Any]) -> DomainData:
        return data


class LeaveOneOut(SplitStrategy):
    """Last item: test target; the one before: validation target; the rest: training.

    As SASRec's code does it: a user with fewer than 3 items is training only (nothing
    is left to validate on), and a training sequence needs 2 items to teach anything."""

    name = "leave-one-out"
    description = "per user: last item test, second to last validation, the rest training (SASRec, P5)"

    def split(self, data: DomainData, settings: dict[str, Any]) -> DomainData:
        train, valid, test = [], [], []
        for seq in pooled_users(data):
            if len(seq.items) >= 3:
                test.append(seq)
                valid.append(_prefix(seq, len(seq.items) - 1))
                kept = _prefix(seq, len(seq.items) - 2)
            else:
                kept = seq
            if len(kept.items) >= MIN_SEQUENCE_LENGTH:
                train.append(kept)
        if not test:
            raise DataError("split leave-one-out: no user has 3 or more items, so nobody can be "
                            "validated and tested")
        return DomainData(items=data.items, train=train, valid=valid, test=test)


class Temporal(SplitStrategy):
    """A global time cut at two quantiles of all timestamps (see the module docstring)."""

    name = "temporal"
    description = "a global time cut: before the valid quantile training, then validation, then test"
    needs_times = True
    options = {"valid": quantile, "test": quantile}
    defaults = {"valid": 0.8, "test": 0.9}

    def check(self, settings: dict[str, Any]) -> None:
        if not settings["valid"] < settings["test"]:
            raise ValidationError(f"split temporal: the valid cut ({settings['valid']}) must come "
                                  f"before the test cut ({settings['test']})")

    def split(self, data: DomainData, settings: dict[str, Any]) -> DomainData:
        users = pooled_users(data)
        everything = sorted(t for seq in users for t in seq.times)
        valid_cut, test_cut = (everything[int(settings[key] * (len(everything) - 1))]
                               for key in ("valid", "test"))
        train, valid, test = [], [], []
        for seq in users:
            before_valid = sum(t < valid_cut for t in seq.times)
            before_test = sum(t < test_cut for t in seq.times)
            if before_valid >= MIN_SEQUENCE_LENGTH:
                train.append(_prefix(seq, before_valid))
            # The first interaction of a window is the target; the history is what came
            # before the window began.
            if before_valid >= 1 and before_valid < before_test:
                valid.append(_target_after(seq, before_valid, before_valid))
            if before_test >= 1 and before_test < len(seq.items):
                test.append(_target_after(seq, before_test, before_test))
        if not test or not train:
            raise DataError(f"split temporal (valid cut {valid_cut!r}, test cut {test_cut!r}) "
                            f"leaves {len(train)} training and {len(test)} test users; move the "
                            "cuts (?valid=Q&test=Q)")
        return DomainData(items=data.items, train=train, valid=valid, test=test)


def _prefix(seq: UserSequence, length: int) -> UserSequence:
    return UserSequence(seq.user, tuple(seq.items[:length]),
                        None if seq.times is None else tuple(seq.times[:length]))


def _target_after(seq: UserSequence, history: int, target: int) -> UserSequence:
    """The first ``history`` items, then item ``target`` as the one to predict."""
    keep = [*range(history), target]
    return UserSequence(seq.user, tuple(seq.items[i] for i in keep),
                        None if seq.times is None else tuple(seq.times[i] for i in keep))


def pooled_users(data: DomainData) -> list[UserSequence]:
    """Every user of every split (a user's whole sequence), ordered by user id: the same
    input for a strategy whatever user split the loader made."""
    return sorted((seq for split in (data.train, data.valid, data.test) for seq in split),
                  key=lambda seq: seq.user)


SPLIT_STRATEGIES: dict[str, type[SplitStrategy]] = {}


def register_split_strategy(cls: type[SplitStrategy]) -> type[SplitStrategy]:
    """Add a strategy class to :data:`SPLIT_STRATEGIES` (usable as a decorator)."""
    return add_named_class(SPLIT_STRATEGIES, cls, "split strategy")


for _strategy in (UserDisjoint, LeaveOneOut, Temporal):
    register_split_strategy(_strategy)


def parse_split(text: str) -> SplitSpec:
    """``NAME[?key=value&...]`` checked and completed with the strategy's defaults;
    one :class:`ValidationError` line for an unknown strategy or a bad option."""
    from .plugin_helpers import parse_location

    if not isinstance(text, str) or not text.strip():
        raise ValidationError("--split needs a strategy name: " + ", ".join(SPLIT_STRATEGIES))
    name = text.partition("?")[0].strip()
    cls = SPLIT_STRATEGIES.get(name)
    if cls is None:
        raise ValidationError(f"unknown split strategy {name!r}; expected one of "
                              f"{', '.join(SPLIT_STRATEGIES)}")
    try:
        given = parse_location(text.strip(), cls.options, is_path=False).options
    except DataError as error:
        raise ValidationError(f"split {error}") from None
    settings = {**cls.defaults, **given}
    cls().check(settings)
    return SplitSpec(name, tuple(sorted(settings.items())))


def apply_split(data: DomainData, text: str, plugin: str) -> DomainData:
    """The splits of strategy ``text`` made from ``data`` (a loader's checked output),
    marked with the strategy's canonical text unless it is the default.

    A strategy that needs timestamps refuses data without them, naming the plugin and
    the first user without times."""
    spec = parse_split(text)
    strategy = SPLIT_STRATEGIES[spec.name]()
    if strategy.needs_times:
        missing = next((seq for split in (data.train, data.valid, data.test) for seq in split
                        if seq.times is None), None)
        if missing is not None:
            raise DataError(f"split {spec.name} needs timestamps, but plugin {plugin!r} gave none "
                            f"(user {missing.user!r} has no times); use --split "
                            f"{DEFAULT_SPLIT_STRATEGY} or leave-one-out, or data with times")
    result = strategy.split(data, spec.settings)
    if spec.name != DEFAULT_SPLIT_STRATEGY:
        result.split_strategy = spec.text
    return result


def disjoint_users(text: str) -> bool:
    """Whether strategy ``text`` keeps every user in one split."""
    return SPLIT_STRATEGIES[parse_split(text).name].disjoint_users
