"""The plugin contract's holes, each closed: one error line, a non-zero exit, and the
registry as it was.  Plugins are installed the way pip lays them out (a module plus a
``.dist-info`` with an entry point) on ``sys.path`` of this process."""

from __future__ import annotations

import importlib
import json
import sys
from importlib.metadata import version as installed_version

import pytest

from conftest import make_plugin_distribution
from xcross_registry import PLUGIN_API_VERSION, plugins

HEADER = '''
from xcross_registry import DomainData, DomainType, Item, PromptTemplate, UserSequence, hookimpl

def data(items=None):
    items = items or [Item(f"i{k}", f"thing {k}") for k in range(8)]
    return DomainData(items=items, train=[UserSequence("a", (0, 1, 2))], valid=[],
                      test=[UserSequence("b", (3, 4))])
'''


def register(name: str, load: str = "lambda location: data()", templates: str = 'PromptTemplate("p")') -> str:
    return f'''
@hookimpl
def register_domains(register):
    register(DomainType(name={name!r}, load={load}, templates=[{templates}]))
'''


@pytest.fixture
def install(tmp_path, monkeypatch, xreg_home):
    """install(module, source, dist=None, entry_point=None): a plugin on sys.path."""
    def add(module: str, source: str, dist: str | None = None, entry_point: str | None = None) -> None:
        make_plugin_distribution(tmp_path / "site", dist or module.replace("_", "-"), module,
                                 HEADER + source, entry_point=entry_point)
        monkeypatch.syspath_prepend(str(tmp_path / "site"))
        monkeypatch.delitem(sys.modules, module, raising=False)  # another test's source
        importlib.invalidate_caches()
        plugins.reset()

    return add


def refused(xreg, args: list[str], line: str) -> None:
    """``xreg ARGS`` fails with exactly ``line`` (one line, exit 1) and registers nothing."""
    result = xreg(*args)
    assert (result.exit_code, result.stderr) == (1, f"error: {line}\n")
    assert json.loads(xreg("domains", "--json").stdout) == []


def listed(xreg) -> dict[str, dict]:
    result = xreg("plugins", "--json")
    assert result.exit_code == 0, result.stderr
    return {p["name"]: p for p in result.json()}


@pytest.mark.parametrize("items, line", [
    ('[Item("1", "a"), Item("2", "b"), Item("1", "c")] + [Item(f"x{k}", "y") for k in range(5)]',
     "items 0 and 2 both have the id '1'; item ids must be unique, or --history and --candidates "
     "cannot name each item"),
    ('[Item("A7", "a"), Item(" a7", "b")] + [Item(f"x{k}", "y") for k in range(6)]',
     "items 0 and 1 both have the id ' a7' (as 'A7': ids are matched ignoring case and spaces); "
     "item ids must be unique, or --history and --candidates cannot name each item"),
    ('[Item("1", "a", {"brand": 3})] + [Item(f"x{k}", "y") for k in range(7)]',
     "item 0 ('1') has field 'brand' = 3 (str -> int); fields map strings to strings"),
])
def test_item_ids_unique_and_fields_strings(xreg, install, items, line):
    install("xreg_dupes", register("dupes", load=f"lambda location: data({items})"))
    refused(xreg, ["add-domain", "d", "--plugin", "dupes", "--data", "here"],
            f"plugin 'dupes' loaded here but {line}")


def test_a_domain_type_name_clash_refuses_both_claimants(xreg, install):
    install("aaa_hijack", register("amazon"), dist="aaa-hijack")
    rows = listed(xreg)
    ours = f"plugin 'amazon' (package xcross-registry {installed_version('xcross-registry')})"
    assert rows["aaa_hijack"]["domain_types"] == [] and rows["amazon"]["domain_types"] == []
    assert rows["aaa_hijack"]["error"] == f"domain type 'amazon' is also registered by {ours}; neither is loaded"
    assert rows["amazon"]["error"] == ("domain type 'amazon' is also registered by plugin 'aaa_hijack' "
                                       "(package aaa-hijack 1.0); neither is loaded")
    refused(xreg, ["add-domain", "d", "--plugin", "amazon", "--data", "here"],
            f"domain type 'amazon' is registered by plugin 'aaa_hijack' (package aaa-hijack 1.0) and "
            f"{ours}; none of them is loaded: uninstall one, or leave one out with XREG_LOAD_PLUGINS")


@pytest.mark.parametrize("source, error", [
    ("@hookimpl\ndef register_domains(register):\n    pass\n",
     "registered no domain types (did you forget @hookimpl?)"),
    ("def register_domains(register):\n    register(DomainType(name='quiet', load=data, "
     "templates=[PromptTemplate('p')]))\n", "registered no domain types (did you forget @hookimpl?)"),
    ("@hookimpl\ndef register_domains(register):\n    return DomainType(name='quiet', load=data, "
     "templates=[PromptTemplate('p')])\n",
     "its register_domains returned a DomainType instead of calling register(...) with it"),
])
def test_a_plugin_that_registers_nothing_is_an_error_row(xreg, install, source, error):
    install("xreg_quiet", source, entry_point="quiet")
    assert listed(xreg)["quiet"]["error"] == error
    refused(xreg, ["add-domain", "d", "--plugin", "quiet", "--data", "here"],
            f"plugin 'quiet' is installed but {error}")


def test_a_non_deterministic_loader_is_refused_at_registration(xreg, install):
    install("xreg_flaky", "import itertools\nCALLS = itertools.count()\n"
            + register("flaky", load='lambda location: data([Item(f"i{k}", f"thing {k} {next(CALLS)}") '
                                     'for k in range(8)])'))
    result = xreg("add-domain", "d", "--plugin", "flaky", "--data", "here")
    assert result.exit_code == 1 and result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: plugin 'flaky' is non-deterministic: it loaded here twice "
                                    "with different results (fingerprints ")
    assert result.stderr.endswith("; a loader must return the same data for the same location (seed "
                                  "every random choice from its options)\n")
    assert json.loads(xreg("domains", "--json").stdout) == []


@pytest.mark.parametrize("raised, shown", [("SystemExit(3)", "SystemExit: 3"),
                                           ("KeyboardInterrupt()", "KeyboardInterrupt")])
def test_a_loader_that_exits_is_one_error_line(xreg, install, raised, shown):
    install("xreg_quits", f"def quit(location):\n    raise {raised}\n" + register("quits", load="quit"))
    refused(xreg, ["add-domain", "d", "--plugin", "quits", "--data", "here"],
            f"plugin 'quits' failed to load here: {shown}")


@pytest.mark.parametrize("template, line", [
    ('PromptTemplate("t", item="{title")',
     "template t@1, part 'item' ('{title'): not a valid format string (expected '}' before end of "
     "string); write a field as {name} and a literal brace as {{ or }}"),
    ('PromptTemplate("t", cross="History: {history}")',
     "template t@1, part 'cross' ('History: {history}'): must contain {candidate} exactly once, "
     "written as is (the item being scored)"),
    ('PromptTemplate("t", document="{history} {candidate}")',
     "template t@1, part 'document' ('{history} {candidate}'): unknown field {history}; this part "
     "may use only {candidate}"),
    ('PromptTemplate("t", item="{title.upper}")',
     "template t@1, part 'item' ('{title.upper}'): field {title.upper} is not a plain name such as {title}"),
    ('PromptTemplate("t", version=0)', "template t@0, version 0: must be a positive integer"),
])
def test_template_errors_name_template_part_and_rule(xreg, install, template, line):
    install("xreg_tpl", register("tpl", templates=template))
    refused(xreg, ["add-domain", "d", "--plugin", "tpl", "--data", "here"], f"plugin 'tpl': {line}")


def test_a_plugin_needing_a_newer_api_is_an_error_row(xreg, install):
    major, minor = PLUGIN_API_VERSION
    install("xreg_future", f"REQUIRES_PLUGIN_API = ({major}, {minor + 1})\n" + register("future"))
    install("xreg_present", f"REQUIRES_PLUGIN_API = ({major}, {minor})\n" + register("present"))
    rows = listed(xreg)
    assert rows["xreg_future"]["error"] == (f"needs plugin API {major}.{minor + 1}, this xcross-registry "
                                            f"offers {major}.{minor} (see CHANGELOG.md)")
    assert rows["xreg_present"]["error"] is None and rows["xreg_present"]["domain_types"] == ["present"]


def test_a_hook_that_raises_still_says_failed_to_load(xreg, install):
    install("xreg_boom", "@hookimpl\ndef register_domains(register):\n    raise ValueError('boom')\n",
            entry_point="boom")
    assert listed(xreg)["boom"]["error"] == "ValueError: boom"
    refused(xreg, ["add-domain", "d", "--plugin", "boom", "--data", "here"],
            "plugin 'boom' failed to load: ValueError: boom")
