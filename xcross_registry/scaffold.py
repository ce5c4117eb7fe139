"""``xreg new-plugin NAME``: write a ready-to-install domain plugin package.

The package works as written: its loader reads a small data set that is written
beside it (``sample_data/``), its test runs the plugin through
:func:`xcross_registry.testing.check_domain_type`, and ``pip install`` makes ``NAME``
a domain type of ``xreg add-domain --plugin NAME``.  An author then replaces the
loader's file reading with their own format, keeping the rest.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from string import Template

from .errors import ValidationError

NAME_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,39}")
SAMPLE_ITEMS = 60
SAMPLE_USERS = 48


@dataclass(frozen=True)
class PluginNames:
    """The three names of a plugin (docs/plugins.md): the scaffold makes the entry point
    and the domain type the same word, so there is only one to remember."""

    domain_type: str  # --plugin NAME, and the entry-point name (XREG_LOAD_PLUGINS)
    module: str  # the importable package, xreg_NAME
    distribution: str  # what pip installs, xreg-NAME

    @classmethod
    def for_name(cls, name: str) -> "PluginNames":
        if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
            raise ValidationError(f"invalid plugin name {name!r}: use 1-40 lowercase letters, digits "
                                  "or '_', starting with a letter (it becomes a Python module name)")
        return cls(domain_type=name, module=f"xreg_{name}", distribution=f"xreg-{name.replace('_', '-')}")


PYPROJECT = Template('''\
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "$distribution"
version = "0.1.0"
description = "xcross-registry domain plugin: the '$name' domain type"
readme = "README.md"
requires-python = ">=3.10"
dependencies = ["xcross-registry>=0.2"]

[project.optional-dependencies]
test = ["pytest>=8"]

# The entry point makes the plugin visible to xreg. Its name ($name, left) is what
# XREG_LOAD_PLUGINS lists; the module ($module, right) holds the hook.
[project.entry-points.xcross_registry]
$name = "$module"

[tool.setuptools]
packages = ["$module"]
''')

MODULE = Template('''\
"""The '$name' domain type for xcross-registry.

Data location (``xreg add-domain ... --plugin $name --data LOCATION``)::

    FOLDER[?seed=0&valid=0.1&test=0.2&min_len=3]

FOLDER holds two JSON-lines files (plain or gzipped):

* ``items.jsonl``: one object per item, ``{"id": "...", "title": "...", ...}``; other
  string fields can be used by the prompt template.
* ``events.jsonl``: one object per interaction, ``{"user": "...", "item": "...",
  "time": 1700000000}``.

A user's sequence is their items ordered by ``time`` (ties keep file order), with those
times (so ``add-domain --split temporal`` works). Users with
fewer than ``min_len`` events are dropped. Users go to test / valid / train by a hash of
``seed`` and their id, so splits are reproducible (the data contract is in
xcross-registry's docs/plugins.md). Replace :func:`read_catalogue` and
:func:`read_sequences` to read your own format.
"""

from __future__ import annotations

from pathlib import Path

from xcross_registry import (DataError, DomainData, DomainType, Item, PromptTemplate,
                             UserSequence, hookimpl)
from xcross_registry.plugin_helpers import fraction, iter_json_lines, parse_location, split_users

# The plugin contract this module is written for (docs/plugins.md, "Versions of the
# contract"): xreg lists the plugin as an error where the installed library lacks it.
REQUIRES_PLUGIN_API = (2, 0)

OPTIONS = {"seed": int, "valid": fraction, "test": fraction, "min_len": int}

TEMPLATE = PromptTemplate(
    name="$name",
    version=1,  # bump when the wording changes: adapters record name@version
    item="{title}",
    separator="; ",
    cross="History: {history}. Candidate: {candidate}",
    query="History: {history}",
    document="{candidate}",
    description="Item titles, oldest first, candidate last.",
)


def read_catalogue(path: Path) -> list[Item]:
    """Items in file order; ids must be unique strings, titles strings."""
    items: list[Item] = []
    seen: set[str] = set()
    for lineno, record in iter_json_lines(path):
        item_id, title = record.get("id"), record.get("title")
        if not isinstance(item_id, str) or not isinstance(title, str):
            raise DataError(f"{path}: line {lineno} needs string id and title")
        if item_id in seen:
            raise DataError(f"{path}: line {lineno} repeats item id {item_id!r}")
        seen.add(item_id)
        extra = {key: value for key, value in record.items()
                 if key not in ("id", "title") and isinstance(value, str)}
        items.append(Item(id=item_id, title=title, fields=extra))
    return items


def read_sequences(path: Path, index: dict[str, int]) -> dict[str, list[tuple[int, int]]]:
    """user -> (time, item index) ordered by time."""
    events: dict[str, list[tuple[int, int]]] = {}
    for lineno, record in iter_json_lines(path):
        user, item, time = record.get("user"), record.get("item"), record.get("time")
        if not isinstance(user, str) or not isinstance(item, str) or type(time) is not int:
            raise DataError(f"{path}: line {lineno} needs string user and item and an integer time")
        if item not in index:
            raise DataError(f"{path}: line {lineno} names item {item!r}, which items.jsonl lacks")
        events.setdefault(user, []).append((time, index[item]))
    return {user: sorted(pairs, key=lambda pair: pair[0]) for user, pairs in events.items()}


def load(location: str) -> DomainData:
    """Load a domain from ``FOLDER[?options]`` (see the module docstring)."""
    parsed = parse_location(location, OPTIONS)
    folder, options = parsed.folder, parsed.options
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder")
    min_len = options.get("min_len", 3)
    if min_len < 2:
        raise DataError(f"{location}: min_len must be at least 2, got {min_len}")
    items = read_catalogue(folder / "items.jsonl")
    sequences = read_sequences(folder / "events.jsonl", {item.id: i for i, item in enumerate(items)})
    kept = sorted(user for user, seq in sequences.items() if len(seq) >= min_len)
    split = split_users(kept, seed=options.get("seed", 0), valid=options.get("valid", 0.1),
                        test=options.get("test", 0.2))

    def users(chosen: list[str]) -> list[UserSequence]:
        # with their times, so `add-domain --split temporal` can cut on them
        return [UserSequence(user=user, items=tuple(item for _, item in sequences[user]),
                             times=tuple(time for time, _ in sequences[user]))
                for user in sorted(chosen)]

    return DomainData(items=items, train=users(split.train), valid=users(split.valid),
                      test=users(split.test))


@hookimpl
def register_domains(register) -> None:
    register(DomainType(name="$name", load=load, templates=[TEMPLATE],
                        description="$name domains from items.jsonl + events.jsonl"))
''')

TEST = Template('''\
"""The plugin's own tests: the xcross-registry test kit on the shipped sample data."""

from pathlib import Path

import pytest

import $module
from xcross_registry import DataError
from xcross_registry.testing import check_domain_type, domain_types

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data"


def test_sample_data_passes_the_test_kit():
    domain_type = domain_types($module)["$name"]
    report = check_domain_type(domain_type, str(SAMPLE))
    assert report.summary["items"] == $items
    assert report.users["train"] > 0 and report.users["test"] > 0
    assert report.templates == ["$name@1"]


def test_options_change_the_split():
    default = $module.load(str(SAMPLE))
    larger_test = $module.load(f"{SAMPLE}?test=0.5&seed=1")
    assert len(larger_test.test) > len(default.test)


@pytest.mark.parametrize("suffix, message", [
    ("?colour=red", "unknown option 'colour'"),
    ("?test=2", "option test must be a fraction"),
    ("?min_len=1", "min_len must be at least 2"),
])
def test_bad_options_are_one_data_error(suffix, message):
    with pytest.raises(DataError, match=message):
        $module.load(str(SAMPLE) + suffix)


def test_missing_folder_names_it(tmp_path):
    with pytest.raises(DataError, match="no such folder"):
        $module.load(str(tmp_path / "nowhere"))
''')

README = Template('''\
# $distribution

A domain plugin for xcross-registry (`xreg`): the `$name` domain type.

    pip install -e ".[test]"        # beside an installed xcross-registry
    python -m pytest -q             # the test kit on sample_data/
    xreg plugins                    # lists '$name' with its template $name@1
    xreg add-domain $name-demo --plugin $name --data "sample_data?seed=0&test=0.2"
    xreg train-adapter $name-demo

Names: the entry point and the domain type are both `$name` (what `--plugin` and
`XREG_LOAD_PLUGINS` take); the module is `$module`; pip installs `$distribution`.

Data: `FOLDER[?seed=0&valid=0.1&test=0.2&min_len=3]` where FOLDER holds
`items.jsonl` and `events.jsonl` (see `$module/__init__.py`). Replace
`read_catalogue` and `read_sequences` with your format; keep the output contract
(xcross-registry's `docs/plugins.md`) and run the tests.

Bump the package version when the loader's output changes: the registry records it
with each domain, and `xreg add-domain NAME --plugin $name --data LOCATION --refresh`
moves a registered domain to the new output.
''')


def sample_data(name: str, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """A small deterministic catalogue and event log in the scaffold's format: enough
    users and items for the registry's sampled evaluation (1 + 29 candidates)."""
    rng = random.Random(f"{name}:{seed}")
    colours = ("red", "blue", "green", "black", "white", "amber")
    kinds = ("lamp", "chair", "table", "shelf", "rug", "clock", "vase", "mirror", "stool", "desk")
    items = [{"id": f"{name}-{i:03d}", "title": f"{colours[i % 6].title()} {kinds[i % 10]} no. {i}",
              "colour": colours[i % 6]} for i in range(SAMPLE_ITEMS)]
    events = []
    for u in range(SAMPLE_USERS):
        favourite = colours[u % 6]  # each user mostly picks one colour: a learnable signal
        liked = [item["id"] for item in items if item["colour"] == favourite]
        others = [item["id"] for item in items if item["colour"] != favourite]
        length = rng.randint(4, 8)
        chosen = rng.sample(liked, k=min(length - 1, len(liked))) + rng.sample(others, k=1)
        rng.shuffle(chosen)
        events += [{"user": f"user{u:03d}", "item": item, "time": 1_700_000_000 + 3600 * step}
                   for step, item in enumerate(chosen)]
    return items, events


def write_plugin(name: str, directory: str | Path | None = None) -> Path:
    """Write the package for domain type ``name`` into ``directory`` (default
    ``./xreg-NAME``), which must not exist or be empty.  Returns the folder."""
    names = PluginNames.for_name(name)
    root = Path(directory if directory is not None else names.distribution)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise ValidationError(f"{root} exists and is not an empty folder; choose another --dir")
    values = {"name": names.domain_type, "module": names.module,
              "distribution": names.distribution, "items": SAMPLE_ITEMS}
    items, events = sample_data(name)
    files = {
        "pyproject.toml": PYPROJECT.substitute(values),
        "README.md": README.substitute(values),
        f"{names.module}/__init__.py": MODULE.substitute(values),
        f"tests/test_{names.module}.py": TEST.substitute(values),
        "sample_data/items.jsonl": "".join(json.dumps(item) + "\n" for item in items),
        "sample_data/events.jsonl": "".join(json.dumps(event) + "\n" for event in events),
    }
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root
