"""Data shown in a terminal cannot drive it: control characters and escape sequences in
descriptions, titles and plugin errors are printed escaped (``\\x1b``), by every
command that shows them; ``--json`` keeps the data exact."""

from __future__ import annotations

import json

from xcross_registry.safe_text import terminal_safe

CLEAR = "\x1b[2J"
TITLE_SEQUENCE = "\x1b]0;pwned\x07"
RED = "\x1b[31mred\x1b[0m"


def test_terminal_safe_escapes_controls_and_keeps_text():
    assert terminal_safe(f"{CLEAR}a{TITLE_SEQUENCE}b\rc\u009b2J") == \
        "\\x1b[2Ja\\x1b]0;pwned\\x07b\\x0dc\\x9b2J"
    assert terminal_safe("tab\tand\nnewline, café, 東京, \\x1b") == "tab\tand\nnewline, café, 東京, \\x1b"
    assert terminal_safe("\u202eevil") == "\\u202eevil"  # a bidi override reorders what is shown
    assert terminal_safe({"a": [RED, 3], "b": None}) == {"a": ["\\x1b[31mred\\x1b[0m", 3], "b": None}


def test_listing_and_show_print_data_escaped(xreg, tiny_plugin):
    raw = json.loads(tiny_plugin.read_text())
    raw["items"][0] = f"{CLEAR}ball {RED}"
    raw["items"][1] = f"kite{TITLE_SEQUENCE}"
    tiny_plugin.write_text(json.dumps(raw))
    added = xreg("add-domain", "toys", "--plugin", "tinyjson", "--data", str(tiny_plugin),
                 "--description", f"{CLEAR}desc {RED}")
    assert added.exit_code == 0, added.stderr
    outputs = {
        "domains": xreg("domains"),
        "items": xreg("items", "toys", "--limit", "3"),
        "search": xreg("items", "toys", "--search", f"ball{CLEAR}"),
        "show": xreg("show", "toys"),
    }
    for command, result in outputs.items():
        assert result.exit_code == 0, (command, result.stderr)
        assert "\x1b" not in result.stdout + result.stderr and "\x07" not in result.stdout, command
    assert "\\x1b[2Jdesc \\x1b[31mred\\x1b[0m" in outputs["show"].stdout
    assert "\\x1b[2Jdesc" in outputs["domains"].stdout
    assert "\\x1b[2Jball \\x1b[31mred\\x1b[0m" in outputs["items"].stdout
    assert "kite\\x1b]0;pwned\\x07" in outputs["items"].stdout
    exact = xreg("items", "toys", "--limit", "2", "--json").json()  # --json: the data as it is
    assert [item["title"] for item in exact] == [f"{CLEAR}ball {RED}", f"kite{TITLE_SEQUENCE}"]


def test_a_plugin_error_is_printed_escaped(xreg, tiny_plugin):
    missing = f"{tiny_plugin}{CLEAR}"
    result = xreg("add-domain", "toys", "--plugin", "tinyjson", "--data", missing)
    assert result.exit_code == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: ") and "\\x1b[2J" in line and "\x1b" not in line
