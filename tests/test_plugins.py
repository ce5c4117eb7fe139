"""Plugin discovery: entry points, the allowlist, and plugins that break."""

from __future__ import annotations

import json
import os

import pytest

from conftest import TINY_PLUGIN, make_plugin_distribution, run_subprocess, xreg_command

BROKEN_AT_IMPORT = "raise RuntimeError('this plugin is broken on purpose')\n"

RAISES_IN_HOOK = '''
from xcross_registry.hookspecs import hookimpl

@hookimpl
def register_domains(register):
    raise ValueError("hook exploded")
'''


def _env(site, home, **extra):
    return {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
            "XREG_HOME": str(home), **extra}


@pytest.mark.slow
def test_broken_plugins_are_listed_and_do_not_break_commands(tmp_path):
    site = tmp_path / "site"
    make_plugin_distribution(site, "xreg-broken", "xreg_broken", BROKEN_AT_IMPORT)
    make_plugin_distribution(site, "xreg-hookfail", "xreg_hookfail", RAISES_IN_HOOK)
    make_plugin_distribution(site, "xreg-tinyjson", "xreg_tinyjson", TINY_PLUGIN,
                             entry_point="tinyjson")
    env = _env(site, tmp_path / "home")

    domains = run_subprocess(xreg_command("domains", "--json"), env=env)
    assert domains.returncode == 0, domains.stderr
    assert json.loads(domains.stdout) == []

    listed = run_subprocess(xreg_command("plugins", "--json"), env=env)
    assert listed.returncode == 0, listed.stderr
    by_name = {p["name"]: p for p in json.loads(listed.stdout)}
    assert "RuntimeError: this plugin is broken on purpose" in by_name["xreg_broken"]["error"]
    assert "ValueError: hook exploded" in by_name["xreg_hookfail"]["error"]
    assert by_name["xreg_hookfail"]["domain_types"] == []
    assert by_name["tinyjson"]["error"] is None
    assert by_name["tinyjson"]["domain_types"] == ["tinyjson"]
    assert by_name["amazon"]["domain_types"] == ["amazon"]

    data = tmp_path / "d.json"
    data.write_text(json.dumps({"items": ["a", "b", "c"], "train": [[0, 1]], "valid": [[1, 2]],
                                "test": [[2, 0]]}))
    added = run_subprocess(xreg_command("add-domain", "d", "--plugin", "tinyjson", "--data",
                                        str(data), "--json"), env=env)
    assert added.returncode == 0, added.stderr
    failing = run_subprocess(xreg_command("add-domain", "e", "--plugin", "xreg_broken", "--data",
                                          str(data)), env=env)
    assert failing.returncode == 1
    assert failing.stderr.strip() == ("error: plugin 'xreg_broken' failed to load: "
                                      "RuntimeError: this plugin is broken on purpose")


@pytest.mark.slow
def test_allowlist_limits_loaded_plugins(tmp_path):
    site = make_plugin_distribution(tmp_path / "site", "xreg-broken", "xreg_broken",
                                    BROKEN_AT_IMPORT)
    only_amazon = run_subprocess(xreg_command("plugins", "--json"),
                                 env=_env(site, tmp_path / "home", XREG_LOAD_PLUGINS="amazon"))
    assert [p["name"] for p in json.loads(only_amazon.stdout)] == ["amazon"]
    none = run_subprocess(xreg_command("plugins", "--json"),
                          env=_env(site, tmp_path / "home", XREG_LOAD_PLUGINS=""))
    assert json.loads(none.stdout) == []


def test_loader_that_raises_is_reported_as_the_plugins_error(xreg, tmp_path, monkeypatch):
    source = TINY_PLUGIN.replace('    path = Path(location)',
                                 '    raise KeyError("bad key")\n    path = Path(location)')
    site = make_plugin_distribution(tmp_path / "site2", "xreg-badloader", "xreg_badloader",
                                    source.replace('"tinyjson"', '"badloader"'),
                                    entry_point="badloader")
    monkeypatch.syspath_prepend(str(site))
    from xcross_registry import plugins

    plugins.reset()
    result = xreg("add-domain", "x", "--plugin", "badloader", "--data", "anything")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: plugin 'badloader' failed to load anything: KeyError")
    assert xreg("domains", "--json").json() == []


def test_builtin_plugins_register_through_entry_points():
    from importlib.metadata import entry_points

    names = {ep.name: ep.value for ep in entry_points(group="xcross_registry")}
    assert names["amazon"] == "xreg_amazon" and names["synthetic"] == "xreg_synthetic"
