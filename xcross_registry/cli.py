"""``xreg``: a thin command-line skin over :mod:`xcross_registry.registry`.

Commands parse arguments, call the library and print.  ``--json`` prints exactly one
JSON document on stdout.  Any :class:`~xcross_registry.errors.XregError` becomes one
line on stderr and exit code 1.  torch, transformers and peft are imported only inside
the commands that need them, so registry commands start fast.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Optional

import typer

from .errors import XregError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Registry of domain LoRA adapters and X-Cross compositions.")

JSON_OPTION = typer.Option(False, "--json", help="Print one JSON document on stdout.")


def _registry():
    from .registry import Registry

    return Registry()


def _emit_json(document: Any) -> None:
    sys.stdout.write(json.dumps(document, indent=2, default=str) + "\n")


def _console():
    from rich.console import Console

    return Console()


def _table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    from rich.table import Table

    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*("" if value is None else str(value) for value in row))
    _console().print(table)


@app.command()
def init() -> None:
    """Create the registry (or upgrade its schema) under $XREG_HOME."""
    from . import database, settings

    registry = _registry()
    revision = database.current_revision(registry.sessions.kw["bind"])
    removed = registry.store.clean_staging()
    print(f"registry ready at {registry.url} (schema {revision}); artifacts in "
          f"{settings.artifacts_root()}" + (f"; cleaned {removed} leftovers" if removed else ""))


@app.command()
def plugins(as_json: bool = JSON_OPTION) -> None:
    """List installed plugins, the domain types they add, and any that failed."""
    from .plugins import get_plugins

    infos = [info.as_dict() for info in get_plugins().plugins.values()]
    if as_json:
        _emit_json(infos)
        return
    _table("plugins", ["name", "module", "version", "domain types", "error"],
           [[i["name"], i["module"], i["version"], ", ".join(i["domain_types"]), i["error"]]
            for i in infos])


@app.command("add-domain")
def add_domain(
    name: str,
    plugin: str = typer.Option(..., "--plugin", help="Domain type (plugin) that reads the data."),
    data: str = typer.Option(..., "--data", help="Where the data is (plugin-specific)."),
    description: str = typer.Option("", "--description"),
    as_json: bool = JSON_OPTION,
) -> None:
    """Register a domain after its plugin has loaded and validated the data."""
    from .registry import as_dict

    row = _registry().add_domain(name, plugin, data, description)
    if as_json:
        _emit_json(as_dict(row))
    else:
        _print_domain(as_dict(row))


@app.command()
def domains(as_json: bool = JSON_OPTION) -> None:
    """List registered domains."""
    from .registry import as_dict

    rows = [as_dict(row) for row in _registry().domains()]
    if as_json:
        _emit_json(rows)
        return
    _table("domains", ["name", "plugin", "items", "users (train/valid/test)", "fingerprint"],
           [[d["name"], d["plugin"], d["summary"].get("items"), _users(d["summary"]),
             d["data_fingerprint"][:12]] for d in rows])


@app.command()
def show(name: str, as_json: bool = JSON_OPTION) -> None:
    """Show a domain: its data summary, adapters and dependents."""
    from .registry import as_dict

    registry = _registry()
    document = as_dict(registry.domain(name))
    document["adapters"] = [as_dict(a) for a in registry.adapters(name)]
    document["used_by"] = registry.dependents(name)["compositions"]
    if as_json:
        _emit_json(document)
    else:
        _print_domain(document)


@app.command()
def remove(name: str, force: bool = typer.Option(
        False, "--force", help="Also remove the adapters, compositions and results using it.")) -> None:
    """Remove a domain (refused while adapters or compositions depend on it)."""
    deps = _registry().remove_domain(name, force=force)
    gone = deps["adapters"] + deps["compositions"]
    print(f"removed domain {name}" + (f" and {', '.join(gone)}" if gone else ""))


@app.command()
def adapters(domain: Optional[str] = typer.Argument(None), as_json: bool = JSON_OPTION) -> None:
    """List adapter versions (of one domain, or all)."""
    from .registry import as_dict

    rows = [as_dict(row) for row in _registry().adapters(domain)]
    if as_json:
        _emit_json(rows)
        return
    _table("adapters", ["adapter", "base model", "trainable", "status", "digest"],
           [[f"{a['domain']}@v{a['version']}", a["base_model"], a["trainable_parameters"],
             a["status"], a["artifact_digest"][:12]] for a in rows])


def _users(summary: dict) -> str:
    users = summary.get("users", {})
    return "/".join(str(users.get(split, 0)) for split in ("train", "valid", "test"))


def _print_domain(d: dict) -> None:
    summary = d["summary"]
    lengths = summary.get("sequence_length", {})
    console = _console()
    console.print(f"[bold]{d['name']}[/bold] ({d['plugin']}) from {d['data_location']}")
    if d.get("description"):
        console.print(d["description"])
    console.print(f"items {summary.get('items')}, users train/valid/test {_users(summary)}, "
                  f"interactions {summary.get('interactions')}, sequence length "
                  f"{lengths.get('min')}-{lengths.get('max')} (mean {lengths.get('mean')})")
    console.print(f"fingerprint {d['data_fingerprint']}")
    for adapter in d.get("adapters", []):
        console.print(f"adapter v{adapter['version']}: {adapter['trainable_parameters']} "
                      f"trainable parameters, {adapter['status']}")
    if d.get("used_by"):
        console.print(f"used by: {', '.join(d['used_by'])}")


def main() -> None:
    """Console-script entry point: run the app, turning our errors into one line."""
    try:
        app(standalone_mode=False)
    except XregError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Abort):
            print("error: aborted", file=sys.stderr)
            sys.exit(1)
        raise
