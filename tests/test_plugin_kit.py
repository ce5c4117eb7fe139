"""The plugin authors' kit: root exports, the data contract checks, plugin helpers,
the test kit, the allowlist and name messages, and relative locations."""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import pytest

from conftest import make_plugin_distribution, run_subprocess
from xcross_registry import plugins
from xcross_registry.data import MISSING_TITLE
from xcross_registry.errors import DataError, PluginError

# A plugin whose data file maps one to one onto DomainData, so a test can write any
# (wrong) output a loader might produce.  It registers three domain types: "rawjson"
# (two templates), "notemplates" (none) and "badtemplate" (a layout that cannot render).
RAW_PLUGIN = '''
import json
from pathlib import Path

from xcross_registry import DomainData, DomainType, Item, PromptTemplate, UserSequence, hookimpl


def load(location):
    raw = json.loads(Path(location).read_text())
    return DomainData(items=[Item(i, t) for i, t in raw["items"]],
                      **{split: [UserSequence(u, tuple(s)) for u, s in raw[split]]
                         for split in ("train", "valid", "test")})


@hookimpl
def register_domains(register):
    register(DomainType(name="rawjson", load=load, description="items and splits as JSON",
                        templates=[PromptTemplate(name="rawjson", description="plain"),
                                   PromptTemplate(name="terse", cross="{history} | {candidate}",
                                                  query="{history}")]))
    register(DomainType(name="notemplates", load=load, templates=[]))
    register(DomainType(name="badtemplate", load=load,
                        templates=[PromptTemplate(name="bad", cross="{history} by {author}: {candidate}")]))
'''


def _good() -> dict:
    return {"items": [[f"i{k}", f"item number {k}"] for k in range(40)],
            "train": [["u1", [0, 1, 2]], ["u2", [3, 4]]],
            "valid": [["v1", [5, 6, 7]]],
            "test": [["t1", [8, 9]], ["t2", [1, 2, 3]]]}


@pytest.fixture
def raw_plugin(tmp_path, monkeypatch, xreg_home):
    site = make_plugin_distribution(tmp_path / "site", "xreg-rawjson", "xreg_rawjson", RAW_PLUGIN,
                                    entry_point="rawjson")
    monkeypatch.syspath_prepend(str(site))
    plugins.reset()

    def write(document: dict | str, name: str = "data.json") -> Path:
        path = tmp_path / name
        path.write_text(document if isinstance(document, str) else json.dumps(document))
        return path

    return write


def _refused(xreg, xreg_home, args: list[str]) -> str:
    """Run a command that must fail: one `error:` line, exit 1, nothing registered."""
    result = xreg(*args)
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 1, result
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert xreg("domains", "--json").json() == []
    artifacts = xreg_home / "artifacts"
    assert not artifacts.exists() or not [p for p in artifacts.rglob("*") if p.is_file()]
    return lines[0]


# ---------------------------------------------------------------- the public API

def test_root_exports_the_plugin_api_without_torch():
    probe = ("import sys\n"
             "from xcross_registry import hookimpl, DomainType, DomainData, Item, UserSequence, "
             "PromptTemplate, DataError\n"
             "import xcross_registry.plugin_helpers\n"
             "heavy = [m for m in ('torch', 'transformers', 'peft') if m in sys.modules]\n"
             "print('HEAVY=' + ','.join(heavy))\n")
    result = run_subprocess([sys.executable, "-c", probe])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "HEAVY="


def test_builtin_plugins_keep_their_fingerprints():
    """The built-in plugins moved to plugin_helpers; their output must not move (the value
    was computed by the code before the move)."""
    import xreg_synthetic

    data = xreg_synthetic.load("tools?users=120&items=60&max_len=8")
    assert data.fingerprint() == "a9e4b80f423e03aa42b0f2382a5c71a87a2833548003677ab67bf8eb88a38fcb"


# ---------------------------------------------------------------- the data contract

@pytest.mark.parametrize("damage, message", [
    (lambda d: d["train"][0][1].append(99),
     "plugin 'rawjson' loaded {path} but split 'train', user 'u1': item index 99 is outside the "
     "catalogue of 40 items (0..39)"),
    (lambda d: d["valid"].__setitem__(0, ["v1", [5]]),
     "split 'valid', user 'v1' has 1 item(s); a sequence needs at least 2"),
    (lambda d: d.__setitem__("train", []), "split 'train' has no users"),
    (lambda d: d.__setitem__("test", []), "split 'test' has no users"),
    (lambda d: d["test"].append(["u2", [4, 5]]),
     "split 'test', user 'u2' is also in split 'train'; splits must be disjoint by user"),
    (lambda d: d["train"].append(["u1", [4, 5]]), "split 'train', user 'u1' appears twice"),
    (lambda d: d["items"][3].__setitem__(1, None),
     "item 3 ('i3') has a title of type NoneType (None), not a string"),
    (lambda d: d["items"][4].__setitem__(1, 7.5), "item 4 ('i4') has a title of type float"),
    (lambda d: d["train"][1].__setitem__(1, [3, 4.0]),
     "split 'train', user 'u2': item index 4.0 is a float, not an int"),
    (lambda d: d.__setitem__("items", []), "the catalogue (items) is empty"),
])
def test_invalid_loader_output_is_refused_with_one_line(xreg, xreg_home, raw_plugin, damage, message):
    document = _good()
    damage(document)
    path = raw_plugin(document)
    line = _refused(xreg, xreg_home, ["add-domain", "d", "--plugin", "rawjson", "--data", str(path)])
    assert message.format(path=path) in line, line


def test_nan_title_is_refused(xreg, xreg_home, raw_plugin):
    text = json.dumps(_good()).replace('"item number 5"', "NaN")
    line = _refused(xreg, xreg_home, ["add-domain", "d", "--plugin", "rawjson", "--data",
                                      str(raw_plugin(text))])
    assert "item 5 ('i5') has a title of type float (nan), not a string" in line


def test_template_problems_are_refused(xreg, xreg_home, raw_plugin):
    path = str(raw_plugin(_good()))
    line = _refused(xreg, xreg_home, ["add-domain", "d", "--plugin", "notemplates", "--data", path])
    assert line == ("error: plugin 'notemplates': registers no prompt template; give at least "
                    "one PromptTemplate")
    line = _refused(xreg, xreg_home, ["add-domain", "d", "--plugin", "badtemplate", "--data", path])
    assert line == ("error: plugin 'badtemplate': template bad@1, part 'cross' ('{history} by "
                    "{author}: {candidate}'): unknown field {author}; this part may use only "
                    "{candidate} and {history}")


def test_valid_output_registers_and_validation_holds_on_reload(xreg, raw_plugin):
    path = raw_plugin(_good())
    result = xreg("add-domain", "d", "--plugin", "rawjson", "--data", str(path), "--json")
    assert result.exit_code == 0, result.stderr
    assert result.json()["summary"]["users"] == {"train": 2, "valid": 1, "test": 2}
    assert result.json()["plugin_version"] == "1.0" and result.json()["data_version"] == 1


@pytest.mark.parametrize("file", ["train.json", "test.json"])
def test_amazon_split_file_without_users_is_refused(xreg, xreg_home, tmp_path, file):
    from test_amazon_plugin import _write_recformer

    folder = _write_recformer(tmp_path / "Toys")
    (folder / file).write_text("{}")
    line = _refused(xreg, xreg_home, ["add-domain", "toys", "--plugin", "amazon", "--data", str(folder)])
    assert line == f"error: {folder / file}: holds no users"


def test_amazon_valid_only_split_empty_is_accepted(xreg, tmp_path):
    """valid may be empty (?valid=0): the contract requires only train and test users."""
    from test_amazon_plugin import _write_recformer

    folder = _write_recformer(tmp_path / "Toys")
    result = xreg("add-domain", "toys", "--plugin", "amazon", "--data", f"{folder}?valid=0", "--json")
    assert result.exit_code == 0, result.stderr
    assert result.json()["summary"]["users"] == {"train": 10, "valid": 0, "test": 2}


# ---------------------------------------------------------------- names and the allowlist

def test_plugin_names_are_explained(xreg, tiny_plugin, monkeypatch):
    result = xreg("add-domain", "d", "--plugin", "xreg_tinyjson", "--data", str(tiny_plugin))
    assert result.exit_code == 1
    assert result.stderr.strip() == ("error: 'xreg_tinyjson' is the module of plugin 'tinyjson'; "
                                     "--plugin takes a domain type name: tinyjson")

    monkeypatch.setenv("XREG_LOAD_PLUGINS", "synthetic,amazn")
    plugins.reset()
    result = xreg("add-domain", "d", "--plugin", "tinyjson", "--data", str(tiny_plugin))
    assert result.exit_code == 1
    assert result.stderr.strip() == ("error: plugin 'tinyjson' is installed but not allowed by "
                                     "XREG_LOAD_PLUGINS='synthetic,amazn'; add tinyjson to it "
                                     "(it names 'amazn', which match no installed plugin)")
    result = xreg("add-domain", "d", "--plugin", "nosuch", "--data", str(tiny_plugin))
    assert result.stderr.startswith("error: unknown plugin 'nosuch' (domain types available: "
                                    "synthetic); installed but not allowed by XREG_LOAD_PLUGINS: ")
    assert "tinyjson" in result.stderr and "amazon" in result.stderr
    listed = xreg("plugins", "--json")
    assert listed.exit_code == 0
    assert [p["name"] for p in listed.json()] == ["synthetic"]
    assert ("warning: XREG_LOAD_PLUGINS names 'amazn', which matches no installed plugin"
            in listed.stderr)
    assert "note: installed but not allowed by XREG_LOAD_PLUGINS: amazon" in listed.stderr


def test_plugins_lists_templates_and_descriptions(xreg, raw_plugin):
    listed = {p["name"]: p for p in xreg("plugins", "--json").json()}
    details = {d["name"]: d for d in listed["rawjson"]["domain_type_details"]}
    assert details["rawjson"]["description"] == "items and splits as JSON"
    assert details["rawjson"]["templates"] == [{"key": "rawjson@1", "description": "plain"},
                                               {"key": "terse@1", "description": ""}]
    assert details["notemplates"]["templates"] == []
    table = xreg("plugins")
    assert table.exit_code == 0
    assert "rawjson@1: plain; terse@1" in table.stdout
    assert "synthetic@1" in table.stdout


# ---------------------------------------------------------------- locations

def test_relative_locations_with_options_are_stored_absolute(xreg, tmp_path, monkeypatch):
    from test_amazon_plugin import _write_recformer

    _write_recformer(tmp_path / "work" / "Toys")
    monkeypatch.chdir(tmp_path / "work")
    added = xreg("add-domain", "toys", "--plugin", "amazon", "--data", "Toys?valid=0.5", "--json")
    assert added.exit_code == 0, added.stderr
    assert added.json()["data_location"] == f"{tmp_path / 'work' / 'Toys'}?valid=0.5"
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    from xcross_registry.registry import Registry

    assert len(Registry().domain_data("toys").valid) == 5  # re-read from another folder


def test_synthetic_recipes_are_kept_even_beside_a_folder_of_that_name(xreg, tmp_path, monkeypatch):
    (tmp_path / "toys").mkdir()
    monkeypatch.chdir(tmp_path)
    added = xreg("add-domain", "toys", "--plugin", "synthetic", "--data", "toys?users=50", "--json")
    assert added.exit_code == 0, added.stderr
    assert added.json()["data_location"] == "toys?users=50"


# ---------------------------------------------------------------- plugin_helpers

def test_parse_location_types_and_refusals(tmp_path):
    from xcross_registry.plugin_helpers import fraction, non_negative_int, parse_location

    spec = {"seed": int, "test": fraction, "users": non_negative_int, "name": str}
    parsed = parse_location(f"{tmp_path}?seed=-3&test=0.25&users=12&name=a b", spec)
    assert parsed.folder == tmp_path
    assert parsed.options == {"seed": -3, "test": 0.25, "users": 12, "name": "a b"}
    assert parse_location(str(tmp_path), spec).options == {}
    odd = tmp_path / "what?seed=1"
    odd.mkdir()
    assert parse_location(str(odd), spec).path == str(odd)  # a real name with '?' wins
    for suffix, message in [("?colour=red", "unknown option 'colour' (known: seed, test, users, name)"),
                            ("?seed=1&seed=2", "option 'seed' given twice"),
                            ("?seed=x", "option seed='x' is not a valid int"),
                            ("?test=1", "option test must be a fraction in [0, 1), got '1'"),
                            ("?users=-1", "option users must be a non-negative integer, got '-1'"),
                            ("?seed", "options must look like ?key=value&key=value")]:
        with pytest.raises(DataError) as error:
            parse_location(f"{tmp_path}/d{suffix}", spec)
        assert str(error.value) == f"{tmp_path}/d{suffix}: {message}"


def test_absolute_location(tmp_path, monkeypatch):
    from xcross_registry.plugin_helpers import absolute_location

    (tmp_path / "data").mkdir()
    monkeypatch.chdir(tmp_path)
    assert absolute_location("data?seed=1&x=2") == f"{tmp_path / 'data'}?seed=1&x=2"
    assert absolute_location("data") == str(tmp_path / "data")
    assert absolute_location("missing?seed=1") == "missing?seed=1"
    assert absolute_location("recipe") == "recipe"


def test_split_users_is_seeded_disjoint_and_stable():
    from xcross_registry.plugin_helpers import split_users

    users = [f"user{k}" for k in range(100)]
    split = split_users(users, seed=3, valid=0.1, test=0.2)
    assert (len(split.train), len(split.valid), len(split.test)) == (72, 8, 20)
    assert set(split.train) | set(split.valid) | set(split.test) == set(users)
    assert not set(split.train) & set(split.test) and not set(split.valid) & set(split.test)
    assert split_users(list(reversed(users)), seed=3) == split_users(users, seed=3)
    assert split_users(users, seed=4).test != split.test
    # a user keeps their place relative to the others when users are added
    more = split_users(users + [f"new{k}" for k in range(10)], seed=3, valid=0, test=0.5)
    order = [u for u in more.test + more.train if u in set(users)]
    assert order == split_users(users, seed=3, valid=0, test=0.5).test + \
        split_users(users, seed=3, valid=0, test=0.5).train


def test_json_readers_name_file_and_line(tmp_path):
    from xcross_registry.plugin_helpers import iter_json_lines, read_json_object

    plain = tmp_path / "events.jsonl"
    plain.write_text('{"a": 1}\n\n{"a": 2}\n{"a": \n')
    with pytest.raises(DataError) as error:
        list(iter_json_lines(plain))
    assert str(error.value).startswith(f"{plain}: line 4 is not valid JSON")
    plain.write_text('{"a": 1}\n[1]\n')
    with pytest.raises(DataError, match=r"line 2 is not a JSON object"):
        list(iter_json_lines(plain))
    packed = tmp_path / "events.jsonl.gz"
    with gzip.open(packed, "wt") as stream:
        stream.write('{"a": 1}\n{"a": 2}\n')
    assert [(n, r["a"]) for n, r in iter_json_lines(packed)] == [(1, 1), (2, 2)]
    whole = tmp_path / "meta.json"
    whole.write_text('{"x": [1, 2}')
    with pytest.raises(DataError, match=r"meta.json: not valid JSON \(line 1, column 12"):
        read_json_object(whole)
    whole.write_text("[]")
    with pytest.raises(DataError, match="expected a JSON object, found list"):
        read_json_object(whole)
    with pytest.raises(DataError, match="missing file"):
        read_json_object(tmp_path / "absent.json")


def test_title_text():
    from xcross_registry.plugin_helpers import title_text

    assert title_text("Kite") == "Kite"
    assert [title_text(v) for v in (None, float("nan"), 3, "  ", "NaN")] == [MISSING_TITLE] * 5


# ---------------------------------------------------------------- the test kit

@pytest.mark.slow
def test_check_domain_type_on_the_builtin_synthetic_plugin():
    import xreg_synthetic

    from xcross_registry.testing import check_domain_type, domain_types

    types = domain_types(xreg_synthetic)
    report = check_domain_type(types["synthetic"], "toys?users=20&items=60&max_len=6")
    assert report.users == {"train": 14, "valid": 2, "test": 4}
    assert report.templates == ["synthetic@1"]
    assert report.rendered["synthetic@1"].startswith("Bought: ")
    assert set(report.scores) == {"cross", "dual"}
    assert [len(row) for row in report.scores["dual"]] == [8] * 4


def test_check_domain_type_catches_contract_breaks(tmp_path):
    from xcross_registry import DomainData, DomainType, Item, PromptTemplate, UserSequence
    from xcross_registry.testing import check_domain_type

    items = [Item(f"i{k}", f"thing {k}") for k in range(12)]
    calls = []

    def flaky(location: str) -> DomainData:  # a loader that is not deterministic
        calls.append(location)
        return DomainData(items=items, train=[UserSequence("a", (0, 1, len(calls)))],
                          valid=[], test=[UserSequence("b", (2, 3))])

    with pytest.raises(DataError, match="is non-deterministic: it loaded here twice with different results"):
        check_domain_type(DomainType("flaky", flaky, [PromptTemplate("p")]), "here")

    def short(location: str) -> DomainData:
        return DomainData(items=items, train=[UserSequence("a", (0,))], valid=[],
                          test=[UserSequence("b", (2, 3))])

    with pytest.raises(DataError, match="split 'train', user 'a' has 1 item"):
        check_domain_type(DomainType("short", short, [PromptTemplate("p")]), "here")
    with pytest.raises(PluginError, match="registers no prompt template"):
        check_domain_type(DomainType("none", short, []), "here")


def test_domain_types_reports_a_broken_hook():
    import types

    from xcross_registry import hookimpl
    from xcross_registry.testing import domain_types

    module = types.ModuleType("xreg_broken_hook")

    @hookimpl
    def register_domains(register):
        register("not a domain type")

    module.register_domains = register_domains
    with pytest.raises(PluginError, match="registered str, not a DomainType"):
        domain_types(module)
