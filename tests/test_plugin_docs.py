"""docs/plugins.md is executed: its complete plugin is installed as a distribution,
registered through the CLI, and checked with its own "Testing a plugin" example."""

from __future__ import annotations

import importlib
import json
import random
import re
from pathlib import Path

from conftest import REPO, make_plugin_distribution
from xcross_registry import plugins

DOC = REPO / "docs" / "plugins.md"


def _blocks(language: str, after: str) -> list[str]:
    """The ```language code blocks of the docs after the heading ``after``."""
    text = DOC.read_text()
    start = text.index(after)
    return re.findall(rf"```{language}\n(.*?)```", text[start:], flags=re.S)


def _write_books(folder: Path) -> Path:
    """Data in the format the docs' plugin reads."""
    rng = random.Random(0)
    folder.mkdir(parents=True)
    titles = {f"b{k:02d}": f"Book {k}: the {rng.choice(['red', 'blue', 'green'])} tale" for k in range(50)}
    users = {f"reader{u}": rng.sample(sorted(titles), rng.randint(3, 6)) for u in range(30)}
    (folder / "books.json").write_text(json.dumps({"items": titles, "users": users}))
    return folder


def test_docs_plugin_installs_registers_and_passes_the_test_kit(xreg, tmp_path, monkeypatch):
    source = _blocks("python", "## A complete minimal plugin")[0]
    entry = re.search(r'^(\w+) = "(\w+)"$', _blocks("toml", "## A complete minimal plugin")[0], re.M)
    name, module = entry.group(1), entry.group(2)
    site = make_plugin_distribution(tmp_path / "site", "xreg-books", module, source, entry_point=name)
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    plugins.reset()
    _write_books(tmp_path / "work" / "shelf")
    monkeypatch.chdir(tmp_path / "work")

    listed = {p["name"]: p for p in xreg("plugins", "--json").json()}
    assert listed["books"]["error"] is None
    assert listed["books"]["domain_type_details"][0]["templates"][0]["key"] == "books@1"
    added = xreg("add-domain", "shelf", "--plugin", "books", "--data", "shelf?seed=1", "--json")
    assert added.exit_code == 0, added.stderr
    document = added.json()
    assert document["data_location"] == f"{tmp_path / 'work' / 'shelf'}?seed=1"
    assert document["summary"]["items"] == 50 and document["summary"]["users"]["test"] == 6

    bad = xreg("add-domain", "other", "--plugin", "books", "--data", "shelf?colour=red")
    assert bad.exit_code == 1
    assert bad.stderr.strip() == (f"error: {tmp_path / 'work' / 'shelf'}?colour=red: unknown option "
                                  "'colour' (known: seed, test)")

    # The "Testing a plugin" example, run as written against data in tests/data.
    _write_books(tmp_path / "work" / "tests" / "data")
    namespace: dict = {}
    exec(compile(_blocks("python", "## Testing a plugin")[0], str(DOC), "exec"), namespace)
    namespace["test_books"](tmp_path)


def _signature(function) -> str:
    """``name(param: annotation = default, ...) -> return`` as the reference writes it."""
    import inspect

    signature = inspect.signature(function)
    parts, keyword_only = [], False
    for parameter in signature.parameters.values():
        if parameter.kind is parameter.KEYWORD_ONLY and not keyword_only:
            parts.append("*")
            keyword_only = True
        text = f"{parameter.name}: {parameter.annotation}"
        if parameter.default is not parameter.empty:
            text += f" = {parameter.default!r}"
        parts.append(text)
    return f"{function.__name__}({', '.join(parts)}) -> {signature.return_annotation}"


def test_the_reference_lists_every_hook_and_helper_with_its_signature():
    import inspect

    from xcross_registry import hookspecs, plugin_helpers, testing

    reference = DOC.read_text().split("## Hook and helper reference", 1)[1].split("\n## ", 1)[0]
    helpers = [value for name, value in vars(plugin_helpers).items()
               if inspect.isfunction(value) and value.__module__ == plugin_helpers.__name__
               and not name.startswith("_")]
    documented = [hookspecs.register_domains, testing.domain_types, testing.check_domain_type, *helpers]
    missing = [_signature(f) for f in documented if _signature(f) not in reference.replace("`", "")]
    assert missing == []
