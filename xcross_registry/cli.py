"""``xreg``: a thin command-line skin over :mod:`xcross_registry.registry`.

Commands parse arguments, call the library and print.  ``--json`` prints exactly one
JSON document on stdout.  Any :class:`~xcross_registry.errors.XregError` becomes one
line on stderr and exit code 1.  torch, transformers and peft are imported only inside
the commands that need them, so registry commands start fast.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import inspect
import json
import os
import sys
from typing import Any, Optional

import typer

from .errors import ValidationError, XregError
from .safe_text import mask_urls_in, terminal_safe

# Plain click help and errors (rich_markup_mode=None): a usage error is click's usage
# line plus one "Error:" line, flags show as flags, and no rich traceback is ever drawn.
app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  pretty_exceptions_enable=False,
                  context_settings={"help_option_names": ["-h", "--help"]},
                  help="Registry of domain LoRA adapters and X-Cross compositions.")

def _json_silences_progress(as_json: bool) -> bool:
    """--json output is for programs: no progress bars on stderr either."""
    from .progress import silence

    silence(as_json)
    return as_json


JSON_OPTION = typer.Option(False, "--json", callback=_json_silences_progress,
                           help="Print one JSON document on stdout.")
WIDE_OPTION = typer.Option(False, "--wide", help="Every leaderboard column (mode, prior, trainable "
                           "parameters, examples seen, all metrics); by default the board fits 80 "
                           "columns.")


# The metrics a table shows (evaluations store more: hit@5, ndcg@5, ...).
SHOWN_METRICS = ("hit@1", "hit@3", "hit@10", "hit@20", "ndcg@10", "ndcg@20", "recall@10",
                 "recall@20", "mrr")


def _print_version(requested: bool) -> None:
    if requested:
        from . import __version__

        print(f"xreg (xcross-registry) {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                       help="Print the version and exit.")) -> None:
    """Registry of domain LoRA adapters and X-Cross compositions."""


def _registry():
    from .registry import Registry

    return Registry()


def _emit_json(document: Any) -> None:
    sys.stdout.write(json.dumps(document, indent=2, default=str) + "\n")


def _console():
    """The console for results.  Names, titles, descriptions and plugin errors are data:
    with markup and emoji codes off, ``[bold]``, ``[/x]`` or ``:smile:`` in them print
    as typed and can never fail to render (styles are given as rich Text instead)."""
    from rich.console import Console

    console = Console(markup=False, emoji=False)
    if not console.is_terminal:
        console.width = 200  # piped output: keep table cells whole instead of cutting them
    return console


def _bold(head: str, rest: str):
    """``head`` in bold followed by ``rest``, both taken literally."""
    from rich.text import Text

    return Text.assemble((head, "bold"), rest)


def _table(title: str, columns: list[str], rows: list[list[Any]], empty: str | None = None) -> None:
    """A table of data; with no rows and an ``empty`` hint, the hint instead of an empty
    frame.  Cells wrap (a long word folds) rather than being cut at the terminal's width."""
    from rich.table import Table

    if not rows and empty is not None:
        print(empty)
        return
    table = Table(title=terminal_safe(title))
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:  # cells are data: titles, descriptions, plugin errors
        table.add_row(*("" if value is None else terminal_safe(str(value)) for value in row))
    _console().print(table)


@app.command()
def init() -> None:
    """Create the registry (or upgrade its schema) under $XREG_HOME."""
    from . import database

    registry = _registry()
    revision = database.current_revision(registry.sessions.kw["bind"])
    removed = registry.store.clean_staging()
    print(f"registry ready at {registry.display_url} (schema {revision}); artifacts in "
          f"{registry.store.location}" + (f"; cleaned {removed} leftovers" if removed else ""))


@app.command()
def plugins(as_json: bool = JSON_OPTION) -> None:
    """List installed plugins, the domain types they add (with description and prompt
    templates), and any that failed or that XREG_LOAD_PLUGINS leaves out."""
    from .plugins import get_plugins

    loaded = get_plugins()
    infos = [info.as_dict(loaded.domain_types) for info in loaded.plugins.values()]
    for warning in loaded.warnings():
        print(f"warning: {terminal_safe(str(warning))}", file=sys.stderr)
    if loaded.not_allowed:
        print("note: installed but not allowed by XREG_LOAD_PLUGINS: "
              + ", ".join(sorted(loaded.not_allowed)), file=sys.stderr)
    if as_json:
        _emit_json(infos)
        return
    _table("plugins", ["name", "module", "version", "domain types", "error"],
           [[i["name"], i["module"], i["version"], ", ".join(i["domain_types"]), i["error"]]
            for i in infos])
    details = [d for i in infos for d in i["domain_type_details"]]
    _table("domain types (--plugin)", ["domain type", "description", "templates (--template)"],
           [[d["name"], d["description"],
             "; ".join(t["key"] + (f": {t['description']}" if t["description"] else "")
                       for t in d["templates"])] for d in details])


@app.command("new-plugin")
def new_plugin(
    name: str = typer.Argument(..., metavar="NAME", help="Domain type name of the new plugin "
                               "(lowercase letters, digits, '_'); also its entry-point name."),
    directory: Optional[str] = typer.Option(None, "--dir", help="Folder to write the package "
                                            "into (default ./xreg-NAME; must be new or empty)."),
) -> None:
    """Write a ready domain plugin package: pyproject with the entry point, loader, template,
    sample data, a test using xcross_registry.testing, and a README."""
    from .scaffold import PluginNames, write_plugin

    root = write_plugin(name, directory)
    names = PluginNames.for_name(name)
    print(f"wrote plugin package {names.distribution} (module {names.module}, domain type "
          f"{names.domain_type}) to {root}\nnext: pip install -e {root} && (cd {root} && "
          f"python -m pytest -q) && xreg add-domain {name}-demo --plugin {name} "
          f"--data {root / 'sample_data'}")


TEMPLATE = typer.Option(None, "--template", help="Prompt template of the domain type, by name "
                        "or name@version (see xreg plugins; default: the one trained with, "
                        "or the domain type's first).")
MODE = typer.Option("cross", "--mode", help="Scoring mode: cross (prompt with candidate), dual "
                    "(two towers), or one a plugin registered (scoring_modes.SCORING_MODES).")
MAX_LENGTH = typer.Option(128, "--max-length", min=8, help="Token budget of a prompt.")
POPULARITY_PRIOR = typer.Option(False, "--popularity-prior", help="Add a learned item-popularity "
                                "prior, w*log(1+count), to the scores, counted on the training "
                                "users the run uses (adapters and compositions alike).")
BASE_MODEL = typer.Option(None, "--base-model", help="Transformers model name or path "
                          "(default: the bundled all-MiniLM-L6-v2).")
FUSE_WITH = typer.Option(None, "--with", metavar="ID_MODEL", help="Fuse the trained model's scores "
                         "with a stored ID model of the domain (sasrec:DOMAIN@vN), by a weight fitted "
                         "on validation users (late fusion).")

# The training options, declared once: @training_options adds them to train-adapter,
# add-domain (--train) and compose, and hands the command their values as one dict of
# TrainingConfig fields (a dict, not the config itself: building that imports torch,
# which add-domain without --train never needs).
TRAINING_OPTIONS: dict[str, tuple[Any, Any]] = {
    "epochs": (int, typer.Option(2, "--epochs", min=1, help="Passes over the training examples.")),
    "lr": (float, typer.Option(1e-4, "--lr", help="Learning rate of the trained weights (LoRA, "
                                                   "or a composition's integrators).")),
    "head_lr": (float, typer.Option(1e-2, "--head-lr", help="Learning rate of the scorer head.")),
    "prior_lr": (float, typer.Option(0.1, "--prior-lr", help="Learning rate of the popularity "
                                      "prior's weight (with --popularity-prior).")),
    "batch_size": (int, typer.Option(16, "--batch-size", min=1,
                                     help="Training examples per optimiser step.")),
    "negatives": (int, typer.Option(15, "--negatives", min=1,
                                    help="Sampled negatives per training example.")),
    "max_users": (Optional[int], typer.Option(None, "--max-users", min=1,
                                              help="Cap on training users.")),
    "fraction": (float, typer.Option(1.0, "--fraction", help="Share of the training users to use.")),
    "seed": (int, typer.Option(0, "--seed", help="Seed of user selection, negatives and "
                                                 "initialisation.")),
    "valid_users": (int, typer.Option(200, "--valid-users", min=0,
                                      help="Validation users per epoch.")),
    "max_minutes": (Optional[float], typer.Option(
        None, "--max-minutes", help="Wall-clock cap on the whole command (model loading, "
        "training, validation, saving; compose then skips its evaluation); the best validated "
        "epoch is kept and the run is recorded as time-cap.")),
    "max_steps": (Optional[int], typer.Option(
        None, "--max-steps", min=1, help="Train exactly this many optimiser steps, replacing "
        "--epochs (the schedule decays to zero at the last; the same model on a busy machine "
        "as on a quiet one, unlike --max-minutes).")),
    "prefixes_per_user": (int, typer.Option(0, "--prefixes-per-user", min=0, help="Training "
                                            "examples per user and epoch (0: every prefix).")),
    "bf16": (bool, typer.Option(False, "--bf16", help="bf16 autocast where the hardware has bf16 "
                                "arithmetic (CUDA, CPUs with AVX512-BF16 or AMX); elsewhere it "
                                "warns on stderr and trains in float32.")),
    "in_batch_negatives": (bool, typer.Option(False, "--in-batch", help="The batch's other "
                                              "positives are negatives too (free in dual mode; B "
                                              "more prompts per example in cross mode).")),
    "patience": (int, typer.Option(0, "--patience", min=0, help="Stop early (recorded as "
                                   "early-stop) after this many validated epochs without a "
                                   "better NDCG@10 (0: never).")),
}


def training_options(**defaults: Any):
    """Give a command the training options; it receives their values as ``training``.

    ``defaults`` change an option's default for this command (compose trains small
    integrators at a higher learning rate than LoRA)."""
    return option_group(TRAINING_OPTIONS, "training", **defaults)


def option_group(table: dict[str, tuple[Any, Any]], into: str, **defaults: Any):
    """Give a command the options of ``table`` (field -> (annotation, typer option)); it
    receives their values as one dict in its parameter ``into``.  ``defaults`` change an
    option's default for this command."""
    def decorate(command):
        signature = inspect.signature(command)
        added = []
        for field, (annotation, option) in table.items():
            if field in defaults:
                option = copy.copy(option)
                option.default = defaults[field]
            added.append(inspect.Parameter(field, inspect.Parameter.KEYWORD_ONLY, default=option,
                                           annotation=annotation))

        @functools.wraps(command)
        def run(*args: Any, **kwargs: Any) -> Any:
            values = {field: kwargs.pop(field) for field in table}
            return command(*args, **{into: values}, **kwargs)

        own = [p for name, p in signature.parameters.items() if name != into]
        run.__signature__ = signature.replace(parameters=[
            *[p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own], *added])
        run.__annotations__ = {**{k: v for k, v in command.__annotations__.items() if k != into},
                               **{field: annotation for field, (annotation, _) in table.items()}}
        return run

    return decorate


@contextlib.contextmanager
def _training_run(training: dict[str, Any], quiet: bool, label: str):
    """(TrainingConfig, progress display, deadline) for one training command: our
    warnings as one line each, a bar naming ``label`` on stderr unless ``--json``, and
    ``--max-minutes`` counted from the start of the process."""
    started = _command_started()
    from .progress import AUTO, training_display
    from .training import Deadline, TrainingConfig

    config = TrainingConfig(**training)
    with _warnings_as_lines(), training_display(None if quiet else AUTO, label) as progress:
        yield config, progress, Deadline.for_config(config, started)


@contextlib.contextmanager
def _warnings_as_lines():
    """Our own warnings (an ignored ``--bf16``) as one ``warning: ...`` line on stderr."""
    import warnings

    from .errors import XregWarning

    show = warnings.showwarning

    def one_line(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, XregWarning):
            print(f"warning: {terminal_safe(str(message))}", file=sys.stderr)
        else:
            show(message, category, filename, lineno, file, line)

    warnings.showwarning = one_line
    try:
        yield
    finally:
        warnings.showwarning = show


def _command_started() -> float:
    """When this process started, on the ``time.monotonic()`` scale: ``--max-minutes``
    bounds the whole command, interpreter start, imports and model loading included."""
    import time

    try:
        import psutil  # a dependency of accelerate
    except ImportError:
        return time.monotonic()
    return time.monotonic() - max(0.0, time.time() - psutil.Process().create_time())


def _is_main_process() -> bool:
    """False in the non-zero ranks of ``accelerate launch``: they train, but the main
    process alone registers, evaluates and prints."""
    from .training import is_main_process

    return is_main_process()


def _run_summary(run: dict | None) -> str:
    """How a training run went, from its record: what it trained, which epoch's weights
    it kept (saying so when that epoch was cut short) and on how many users it chose."""
    if not run:
        return "run: not recorded"
    best = run["best_epoch"]
    if not best:
        kept = "no epoch kept"
    elif best > run["epochs_completed"]:
        kept = f"kept epoch {best} (stopped part-way through it)"
    else:
        kept = f"kept epoch {best}"
    return (f"run: {run['stop_reason']}; {run['examples_seen']} of {run['planned_examples']} "
            f"examples, {run['optimizer_steps']} of {run['planned_steps']} optimiser steps, "
            f"{run['epochs_completed']} full epochs; {kept}, validated on "
            f"{run['validation_users']} of {run['validation_users_planned']} users; "
            f"{run['examples_per_second']} examples/s, {run['wall_seconds']} s wall, "
            f"{run['processes']} process(es), {run['precision']}")


def _metrics_text(metrics: dict | None) -> str:
    """Measured values as ``hit@1 0.2500, ndcg@10 0.3100`` (not a Python dict)."""
    if not metrics:
        return "none"
    return ", ".join(f"{name} {value:.4f}" if isinstance(value, float) else f"{name} {value}"
                     for name, value in metrics.items())


def _scorer_config(mode: str, max_length: int, popularity_prior: bool):
    from .scorer import ScorerConfig

    return ScorerConfig(mode=mode, max_length=max_length, popularity_prior=popularity_prior)


@app.command("add-domain")
@training_options()
def add_domain(
    name: str = typer.Argument(..., metavar="NAME", help="Name of the new domain."),
    plugin: str = typer.Option(..., "--plugin", help="Domain type (plugin) that reads the data."),
    data: str = typer.Option(..., "--data", help="Where the data is (plugin-specific)."),
    description: str = typer.Option("", "--description", help="Free text shown by show."),
    split: Optional[str] = typer.Option(None, "--split", help="Split strategy: user (the default: "
                                        "the plugin's user-disjoint splits), leave-one-out, or "
                                        "temporal[?valid=0.8&test=0.9] (time quantiles; needs "
                                        "timestamps). A refresh keeps the domain's."),
    adapter: Optional[str] = typer.Option(None, "--adapter", help="Import this PEFT LoRA folder as v1."),
    train: bool = typer.Option(False, "--train", help="Train a LoRA adapter right away (all or "
                               "nothing: a failed training leaves no domain behind)."),
    refresh: bool = typer.Option(False, "--refresh", help="The domain exists: re-read its data "
                                 "(from --data) and register it as the domain's next data version; "
                                 "its adapters and compositions keep their lineage."),
    mode: str = MODE, max_length: int = MAX_LENGTH, popularity_prior: bool = POPULARITY_PRIOR,
    base_model: Optional[str] = BASE_MODEL,
    template: Optional[str] = TEMPLATE, as_json: bool = JSON_OPTION, training: dict = None,
) -> None:
    """Register a domain after its plugin has loaded and validated the data."""
    from . import adapters

    registry = _registry()
    if adapter is not None and train:
        raise ValidationError("--adapter and --train exclude each other")
    if refresh and (adapter is not None or train):
        raise ValidationError("--refresh re-registers data only; import or train afterwards "
                              "(xreg train-adapter)")
    if refresh:
        _refresh_domain(registry, name, plugin, data, split, as_json)
    elif adapter is not None:
        adapters.import_adapter(registry, name, plugin, data, adapter, description=description,
                                base_model=base_model, split=split)
    elif train:
        with _training_run(training, as_json, f"{name} adapter") as (config, progress, deadline):
            adapters.add_trained_domain(registry, name, plugin, data, description=description,
                                        scorer_config=_scorer_config(mode, max_length,
                                                                     popularity_prior),
                                        training_config=config, base_model=base_model,
                                        template=template, progress=progress, deadline=deadline,
                                        split=split)
    else:
        registry.add_domain(name, plugin, data, description, split=split)
    _print_domain(_domain_document(registry, name), as_json)


def _refresh_domain(registry, name: str, plugin: str, data: str, split: str | None,
                    quiet: bool) -> None:
    _, changed = registry.refresh_domain(name, plugin, data, split)
    if not changed and not quiet:
        print(f"domain {name}: data unchanged (fingerprint "
              f"{registry.domain(name).data_fingerprint[:12]}); nothing to refresh", file=sys.stderr)


@app.command("train-adapter")
@training_options()
def train_adapter(
    name: str = typer.Argument(..., metavar="DOMAIN", help="Domain to train on."),
    mode: str = MODE, max_length: int = MAX_LENGTH, popularity_prior: bool = POPULARITY_PRIOR,
    base_model: Optional[str] = BASE_MODEL,
    head_only: bool = typer.Option(False, "--head-only", help="Baseline: train only the head "
                                   "on the frozen base model."),
    template: Optional[str] = TEMPLATE, fuse_with: Optional[str] = FUSE_WITH,
    as_json: bool = JSON_OPTION, training: dict = None,
) -> None:
    """Train a LoRA adapter on a domain and register it as the next version."""
    from .adapters import train_adapter as train
    from .registry import as_dict

    label = f"{name} {'head-only baseline' if head_only else 'adapter'}"
    with _training_run(training, as_json, label) as (config, progress, deadline):
        version = train(_registry(), name,
                        scorer_config=_scorer_config(mode, max_length, popularity_prior),
                        training_config=config, base_model=base_model, head_only=head_only,
                        template=template, fuse_with=fuse_with, progress=progress, deadline=deadline)
    if not _is_main_process():
        return
    if as_json:
        _emit_json(as_dict(version))
        return
    run = version.training_config.get("run") or {}
    print(f"registered {version.label}: {version.trainable_parameters} trainable parameters")
    _table("", ["metric", f"validation, {run.get('validation_users', 0)} users"],
           [[name, f"{value:.4f}"] for name, value in (version.metrics.get("validation") or {}).items()],
           empty="validation: none (no validation users)")
    print(_run_summary(run))


# The options of `xreg train-baseline sasrec`: every SASRecConfig field with its default
# (a test holds them equal).  Users are chosen by the same --fraction, --seed and
# --max-users as a LoRA's, so a SASRec and a LoRA at one fraction and seed share users.
SASREC_OPTIONS: dict[str, tuple[Any, Any]] = {
    "hidden_size": (int, typer.Option(64, "--hidden-size", help="Width of the item embeddings "
                                      "and blocks.")),
    "blocks": (int, typer.Option(2, "--blocks", help="Causal self-attention blocks.")),
    "heads": (int, typer.Option(1, "--heads", help="Attention heads per block (must divide "
                                "--hidden-size).")),
    "max_len": (int, typer.Option(50, "--max-len", help="Most recent history items it reads.")),
    "dropout": (float, typer.Option(0.5, "--dropout", help="Dropout rate, in [0, 1).")),
    "lr": (float, typer.Option(1e-3, "--lr", help="Adam's learning rate.")),
    "epochs": (int, typer.Option(200, "--epochs", help="Most passes over the training users.")),
    "batch_size": (int, typer.Option(128, "--batch-size", help="Training sequences per "
                                     "optimiser step.")),
    "patience": (int, typer.Option(10, "--patience", help="Stop after this many validated epochs "
                                   "without a better NDCG@10 (0: never); the best epoch is kept.")),
    "seed": TRAINING_OPTIONS["seed"],
    "fraction": TRAINING_OPTIONS["fraction"],
    "max_users": TRAINING_OPTIONS["max_users"],
    "valid_users": (int, typer.Option(1000, "--valid-users", help="Validation users per epoch.")),
    "valid_negatives": (int, typer.Option(29, "--valid-negatives", help="Sampled negatives per "
                                          "validation user.")),
}


# The options of `xreg train-baseline item-knn|markov` beyond those they share with
# sasrec (--fraction, --seed, --max-users, --valid-users, --valid-negatives): each
# NeighbourhoodConfig field with its default (a test holds them equal).
NEIGHBOURHOOD_OPTIONS: dict[str, tuple[Any, Any]] = {
    "neighbours": (int, typer.Option(100, "--neighbours", help="item-knn: most similar items "
                                     "kept per item (0: all).")),
    "decay": (float, typer.Option(0.8, "--decay", help="item-knn: weight of the k-th most "
                                  "recent history item is decay**k.")),
    "history": (int, typer.Option(50, "--history", help="item-knn: most recent history items "
                                  "read.")),
    "smoothing": (float, typer.Option(1.0, "--smoothing", help="markov: weight of the popularity "
                                      "back-off in P(next | last item).")),
}
TRAINED_BASELINE_OPTIONS = {**SASREC_OPTIONS, **NEIGHBOURHOOD_OPTIONS}


@app.command("train-baseline")
@option_group(TRAINED_BASELINE_OPTIONS, "settings")
def train_baseline(
    baseline: str = typer.Argument(..., metavar="BASELINE", help="Trained baseline: sasrec, "
                                   "item-knn or markov."),
    domain: str = typer.Argument(..., metavar="DOMAIN", help="Domain whose training users it "
                                 "learns from."),
    as_json: bool = JSON_OPTION, settings: dict = None,
) -> None:
    """Train a baseline (sasrec: an ID-based sequential model; item-knn, markov: neighbourhood
    models) on a domain and register it as BASELINE:DOMAIN@vN, to evaluate, compare and
    show like any model.  Options of another baseline are refused when changed."""
    from .baselines import train_baseline as train
    from .registry import as_dict

    defaults = {field: option.default for field, (_, option) in TRAINED_BASELINE_OPTIONS.items()}
    _print_baseline_model(as_dict(train(_registry(), baseline, domain, settings, defaults)), as_json)


@app.command()
def evaluate(
    name: str = typer.Argument(..., metavar="NAME", help="Composition, adapter (DOMAIN or DOMAIN@vN), "
                               "baseline (popularity:DOMAIN, sasrec:DOMAIN[@vN]), or a domain "
                               "with --baseline."),
    protocol: str = typer.Option("sampled", "--protocol", help="sampled, sampled-pop or full."),
    negatives: Optional[int] = typer.Option(None, "--negatives", help="Sampled negatives per user "
                                            "for sampled and sampled-pop (default 29; 100 is "
                                            "SASRec's protocol); stored as its own protocol "
                                            "label, e.g. sampled:100."),
    split: str = typer.Option("test", "--split", help="test or valid."),
    max_users: Optional[int] = typer.Option(None, "--max-users", min=1,
                                            help="Evaluate a seeded subset of this many users."),
    seed: int = typer.Option(0, "--seed", help="Candidate and bootstrap seed."),
    domain: Optional[str] = typer.Option(None, "--domain", help="Evaluate on another domain (zero-shot)."),
    baseline: Optional[str] = typer.Option(None, "--baseline", help="popularity, sasrec, item-knn, "
                                           "markov (a trained one: its latest version) or head-only."),
    template: Optional[str] = TEMPLATE,
    as_json: bool = JSON_OPTION,
) -> None:
    """Rank the stored candidates, print Hit@1/3/10/20, NDCG@10/20, Recall@10/20 and MRR,
    store the result."""
    from . import evaluation
    from .subjects import baseline_subject

    registry = _registry()
    if baseline is not None:
        name, domain = baseline_subject(registry, baseline, name, domain)
    result = evaluation.evaluate(registry, name, domain=domain, template=template, protocol=protocol,
                                 split=split, max_users=max_users, seed=seed, negatives=negatives)
    if as_json:
        _emit_json(result.as_dict())
        return
    _table(f"{result.subject_name} on {result.domain} ({result.protocol}, {result.split}, "
           f"{result.num_users} users)", ["metric", "mean", "95% interval"],
           [[metric, f"{m['mean']:.4f}", f"[{m['low']:.4f}, {m['high']:.4f}]"]
            for metric, m in result.metrics.items() if metric in SHOWN_METRICS])


@app.command()
@training_options(lr=1e-3)
def compose(
    sources: str = typer.Option(..., "--sources", help="Comma-separated source adapters (DOMAIN or "
                                "DOMAIN@vN), or 'auto': the other domains' adapters ranked by "
                                "zero-shot validation NDCG@10 on the target."),
    target: str = typer.Option(..., "--target", help="Target domain."),
    name: Optional[str] = typer.Option(None, "--name", help="Composition name (default TARGET-x)."),
    method: str = typer.Option("xcross", "--method", help="xcross; the baselines linear-merge, ties, "
                               "dare-linear, dare-ties, svd, learned-merge, lorahub, arrow; one a "
                               "plugin registered; or 'auto': every --candidates trained under the "
                               "same budget, the best on validation users registered."),
    max_sources: Optional[int] = typer.Option(None, "--max-sources", min=2, help="With --sources "
                                              "auto: how many of the ranked sources to compose "
                                              "(default 3)."),
    candidates: Optional[str] = typer.Option(None, "--candidates", help="With --method auto: "
                                             "';'-separated METHOD or METHOD:KEY=VALUE[,KEY=VALUE] "
                                             "(default: every built-in method, X-Cross from both "
                                             "starts)."),
    mode: Optional[str] = typer.Option(None, "--mode", help="Scoring mode (default: the sources')."),
    popularity_prior: bool = POPULARITY_PRIOR,
    settings: list[str] = typer.Option([], "--set", metavar="KEY=VALUE", help="A setting of the "
                                       "method (repeatable; VALUE as JSON, else text), e.g. "
                                       "--set density=0.3 for ties, --set per_layer=true for "
                                       "learned-merge, --set budget=40 for lorahub."),
    beta: Optional[float] = typer.Option(None, "--beta", help="X-Cross: scale of the term that takes "
                                         "the other streams' states (default 1)."),
    gamma: Optional[float] = typer.Option(None, "--gamma", help="X-Cross: scale of the term that "
                                          "moves a stream away from the others' states (default 1)."),
    pooled: bool = typer.Option(False, "--pooled", help="X-Cross: integration scalars per sequence, "
                                "not per token."),
    init: Optional[str] = typer.Option(None, "--init", help="X-Cross: start from the sources' "
                                       "'streams' (default) or from their layer-wise 'mix'."),
    fuse_with: Optional[str] = FUSE_WITH,
    evaluate_after: bool = typer.Option(True, "--evaluate/--no-evaluate",
                                        help="Evaluate on the target test split afterwards."),
    template: Optional[str] = TEMPLATE,
    as_json: bool = JSON_OPTION, training: dict = None,
) -> None:
    """Train a composition (X-Cross by default) of source adapters for a target domain."""
    from . import auto_composition, composer

    given = _method_settings(settings, beta=beta, gamma=gamma, per_token=False if pooled else None,
                             init=init)
    automatic = auto_composition.AUTOMATIC
    chosen = automatic if sources.strip() == automatic else [s for s in sources.split(",") if s.strip()]
    options = {"name": name, "mode": mode, "settings": given or None, "popularity_prior": popularity_prior,
               "fuse_with": fuse_with, "template": template}
    registry = _registry()
    with _training_run(training, as_json, name or f"{target} composition") as (config, progress, deadline):
        if automatic in (chosen, method) or max_sources is not None or candidates is not None:
            row = auto_composition.auto_compose(
                registry, target, sources=chosen, method=method, max_sources=max_sources,
                candidates=candidates.split(";") if candidates is not None else None,
                training_config=config, progress=progress, deadline=deadline, **options)
        else:
            row = composer.compose(registry, chosen, target, method=method, training_config=config,
                                   progress=progress, deadline=deadline, **options)
    if not _is_main_process():
        return
    document = composer.as_dict(row)
    evaluated = _evaluate_new_composition(registry, row) if evaluate_after else None
    if evaluated is not None:
        document["evaluation"] = evaluated
    if as_json:
        _emit_json(document)
    else:
        _print_composition(document)


def _method_settings(pairs: list[str], **named: Any) -> dict[str, Any]:
    """A composition method's settings from ``--set KEY=VALUE`` pairs (VALUE parsed as
    JSON when it is JSON, else kept as text) and the named flags that were given."""
    given: dict[str, Any] = {}
    for pair in pairs:
        key, equals, text = pair.partition("=")
        if not equals or not key.strip():
            raise ValidationError(f"--set needs KEY=VALUE, got {pair!r}")
        try:
            given[key.strip()] = json.loads(text)
        except ValueError:
            given[key.strip()] = text
    for key, value in named.items():
        if value is not None:
            if key in given:
                raise ValidationError(f"setting {key!r} given twice (--set and its own flag)")
            given[key] = value
    return given


@app.command()
def fuse(
    name: str = typer.Argument(..., metavar="NAME", help="A composition or adapter version."),
    fuse_with: str = typer.Option(..., "--with", metavar="ID_MODEL", help="The stored ID model to "
                                  "fuse with (sasrec:DOMAIN@vN)."),
    new_name: Optional[str] = typer.Option(None, "--name", help="The fused composition's name "
                                           "(default NAME-sasrec); a fused adapter is its domain's "
                                           "next version."),
    valid_users: Optional[int] = typer.Option(None, "--valid-users", min=1, help="Cap on the "
                                              "validation users the weight is fitted on (default: "
                                              "the model's own run's)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Register a trained model fused with an ID model as its own row (no retraining)."""
    from .fusing import fuse as fuse_model
    from .subjects import resolve_subject

    registry = _registry()
    made = fuse_model(registry, name, fuse_with, new_name=new_name, valid_users=valid_users)
    fusion = resolve_subject(registry, made).record.fusion
    if as_json:
        _emit_json({"name": made, "fusion": fusion})
        return
    scores = fusion["validation_ndcg@10"]
    print(f"registered {made}: {fusion['with']} weight {fusion['weight']:.4f}, unseen {fusion['unseen']:.4f}; "
          f"validation NDCG@10 on {fusion['users']} users: text {scores['text']:.4f}, "
          f"ids {scores['ids']:.4f}, fused {scores['fused']:.4f}")


def _evaluate_new_composition(registry, row) -> dict | None:
    """The test evaluation after compose, unless the run hit --max-minutes: that cap
    bounds the whole command, so the evaluation is not started."""
    from . import evaluation
    from .records import TrainingRecord

    if TrainingRecord.of(row).stop_reason == "time-cap":
        print(f"note: not evaluated, the --max-minutes cap was reached; run 'xreg evaluate "
              f"{row.name}'", file=sys.stderr)
        return None
    return evaluation.evaluate(registry, row.name).as_dict()


@app.command()
def compositions(as_json: bool = JSON_OPTION) -> None:
    """List compositions with their sources."""
    from . import composer

    rows = [composer.as_dict(row) for row in _registry().compositions()]
    if as_json:
        _emit_json(rows)
        return
    _table("compositions", ["name", "target", "sources", "method", "mode", "trainable"],
           [[c["name"], c["target"], ", ".join(s["adapter"] for s in c["sources"]), c["method"],
             c["mode"], c["trainable_parameters"]] for c in rows],
           empty="no compositions yet; build one with `xreg compose --sources A,B --target T`")


@app.command()
def recommend(
    name: str = typer.Argument(..., metavar="NAME", help="Composition or adapter."),
    history: str = typer.Option(..., "--history", help="Item titles (or ids), oldest first, ';'-separated."),
    candidates: Optional[str] = typer.Option(None, "--candidates", help="File of candidate titles or ids, one a line."),
    top: int = typer.Option(10, "--top", min=1, help="How many items to print."),
    rerank: Optional[str] = typer.Option(None, "--rerank", help="Cross model that re-ranks the retrieved top."),
    rerank_depth: int = typer.Option(50, "--rerank-depth", min=1,
                                     help="How many retrieved items the --rerank model re-scores."),
    template: Optional[str] = TEMPLATE,
    as_json: bool = JSON_OPTION,
) -> None:
    """Rank candidates for a history, or the whole catalogue (dual retrieval + optional re-rank)."""
    from .subjects import check_recommend

    registry = _registry()
    request = check_recommend(registry, name, history, candidates, rerank, template)  # before torch loads
    from . import serving

    model = serving.load_model(registry, name, template=template)
    _note_unmatched_history(model, request.history)
    reranker = (serving.load_model(registry, rerank, domain=model.domain, template=template)
                if rerank else None)
    ranked = serving.recommend(model, request.history, top=top, reranker=reranker,
                               rerank_depth=rerank_depth, candidates=request.candidates)
    if as_json:
        _emit_json([r.as_dict() for r in ranked])
        return
    _table(f"{name} on {model.domain}", ["rank", "item", "title", "score"],
           [[r.rank, r.item_id, r.title, f"{r.score:.4f}"] for r in ranked])


def _note_unmatched_history(model, history: list[str]) -> None:
    """Say so when history items are not in the catalogue: they are scored as free text."""
    unmatched = [entry for entry, item in zip(history, model.match(history)) if not item.id]
    if not unmatched:
        return
    which = "no history item" if len(unmatched) == len(history) else \
        f"{len(unmatched)} of {len(history)} history items ({'; '.join(unmatched)})"
    print(terminal_safe(f"note: {which} matched an item id or title of {model.domain}; scored as free "
                        f"text (`xreg items {model.domain} --search WORDS` finds titles)"), file=sys.stderr)


@app.command("recommend-batch")
def recommend_batch(
    domain: str = typer.Argument(..., metavar="DOMAIN", help="Domain whose users get recommendations."),
    name: str = typer.Argument(..., metavar="SUBJECT", help="Dual composition or adapter that ranks."),
    users: str = typer.Option("all", "--users", help="all, or one split: train, valid, test."),
    out: str = typer.Option(..., "--out", metavar="FILE.parquet", help="Parquet file to write."),
    top: int = typer.Option(10, "--top", min=1, help="Items per user."),
    exact: bool = typer.Option(False, "--exact", help="Score the whole catalogue exactly even where "
                               "it has an approximate index."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Rank the catalogue for every user of a domain into one Parquet file (one process, or
    one share per process under accelerate launch)."""
    from .batch import recommend_batch as run_batch

    report = run_batch(_registry(), domain, name, out, users=users, top=top, exact=exact)
    if not _is_main_process():
        return
    if as_json:
        _emit_json(report.as_dict())
        return
    print(f"wrote {report.rows} rows for {report.users} users to {report.out} "
          f"({report.processes} process(es), {report.seconds:.1f} s)")


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="Port to listen on (0: any free one)."),
    preload: Optional[str] = typer.Option(None, "--preload", metavar="NAME,...",
                                          help="Comma-separated subjects to load at start-up."),
    max_models: int = typer.Option(4, "--max-models", min=1,
                                   help="Loaded models kept at once; the least recently used goes."),
    batch_wait_ms: float = typer.Option(5.0, "--batch-wait-ms", min=0, max=1000,
                                        help="How long a request waits for others to share its batch."),
    max_batch: int = typer.Option(32, "--max-batch", min=1, help="Most requests scored in one batch."),
    no_batching: bool = typer.Option(False, "--no-batching", help="Score every request alone."),
    load_wait: float = typer.Option(10.0, "--load-wait", min=0, max=600, metavar="SECONDS",
                                    help="How long a request waits for its model to load before "
                                    "it is answered 503 with Retry-After (the load goes on)."),
    name_cache: float = typer.Option(1.0, "--name-cache", min=0, max=3600, metavar="SECONDS",
                                     help="How long a subject name's registry record is reused before it "
                                     "is looked up again (a new version or a removal is seen within this "
                                     "time; 0: look up on every request)."),
    token_file: Optional[str] = typer.Option(None, "--token-file", help="File whose first line is "
                                             "a token that /v1 requests must send as 'Authorization: "
                                             "Bearer TOKEN' (default: $XREG_SERVE_TOKEN; none: open)."),
    allowed_host: list[str] = typer.Option([], "--allowed-host", metavar="NAME", help="Also answer "
                                           "requests whose Host header is NAME (repeatable; '*': any); "
                                           "loopback names are always answered."),
    header_timeout: float = typer.Option(10.0, "--header-timeout", help="Seconds a client has to "
                                         "send a request's line and headers (then 408)."),
    body_timeout: float = typer.Option(30.0, "--body-timeout", help="Seconds a client has to "
                                       "send a request's body (then 408)."),
    runtime: str = typer.Option("torch", "--runtime", help="How request histories are encoded: torch "
                                "(exact), folded (LoRA folded into the weights; same rankings to float "
                                "rounding), folded-bf16 (the same with bfloat16 products on CPUs that have "
                                "them: fastest within the accuracy bound), onnx (ONNX Runtime, the onnx "
                                "extra) or onnx-int8 (changes rankings)."),
    ann_min_items: int = typer.Option(100_000, "--ann-min-items", min=1, help="Catalogues of at least "
                                      "this many items are searched through an approximate index (the ann extra)."),
) -> None:
    """Serve recommendations over HTTP (JSON API under /v1) and a registry browser at /."""
    from .ann import AnnConfig
    from .server import BatchingConfig, ServerConfig
    from .server import serve as run_server
    from .server.app import read_token

    batching = (BatchingConfig(max_batch=1, wait_s=0.0) if no_batching
                else BatchingConfig(max_batch=max_batch, wait_s=batch_wait_ms / 1000))
    run_server(ServerConfig(host=host, port=port, max_models=max_models, batching=batching,
                            load_wait_s=load_wait, name_cache_s=name_cache,
                            preload=[n.strip() for n in (preload or "").split(",") if n.strip()],
                            token=read_token(token_file), allowed_hosts=list(allowed_host),
                            header_timeout_s=header_timeout, body_timeout_s=body_timeout,
                            runtime=runtime, ann=AnnConfig(min_items=ann_min_items)))


@app.command("serve-ray")
def serve_ray(
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster to join (default: "
                                          "$RAY_ADDRESS or the cluster `ray start` runs here)."),
    replicas: int = typer.Option(2, "--replicas", min=1, help="Copies of the service (one CPU each)."),
    max_models: int = typer.Option(4, "--max-models", min=1, help="Subjects each replica keeps loaded."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address Serve's HTTP proxy listens on."),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="Port of Serve's HTTP proxy."),
    runtime: str = typer.Option("torch", "--runtime", help="How request histories are encoded: torch, "
                                "folded, folded-bf16, onnx or onnx-int8 (see xreg serve --help)."),
    ann_min_items: int = typer.Option(100_000, "--ann-min-items", min=1,
                                      help="Catalogues of at least this many items use an approximate index."),
) -> None:
    """Deploy the service on a Ray cluster (Ray Serve, subjects multiplexed between replicas)
    and keep it up until interrupted."""
    import time

    from .server.ray_serve import RayServeConfig, deploy, undeploy

    config = RayServeConfig(replicas=replicas, max_models=max_models, host=host, port=port,
                            runtime=runtime, ann_min_items=ann_min_items)
    url = deploy(config, address)
    print(f"xreg serve-ray: {url}/v1/recommend on {replicas} replica(s); Ctrl-C removes the deployment",
          file=sys.stderr, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        undeploy()


@app.command()
def leaderboard(
    domain: str = typer.Argument(..., metavar="DOMAIN", help="Domain whose evaluations to show."),
    protocol: Optional[str] = typer.Option(None, "--protocol", help="Only this protocol."),
    plot: Optional[str] = typer.Option(None, "--plot", help="Also draw the boards to this PNG."),
    by_fraction: bool = typer.Option(False, "--by-fraction", help="Group trained rows by method "
                                     "and target-data fraction, averaged over training seeds."),
    plot_fraction: Optional[str] = typer.Option(None, "--plot-fraction", help="Also draw Hit@1 and "
                                                "NDCG@10 against the fraction to this PNG."),
    wide: bool = WIDE_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Every stored evaluation on a domain, side by side, one board per comparable group."""
    from . import leaderboard as boards_module
    from .checks import check_plot_path

    for path, option in ((plot, "--plot"), (plot_fraction, "--plot-fraction")):
        if path:
            check_plot_path(path, option)
    boards = boards_module.leaderboard(_registry(), domain, protocol)
    if plot and boards:
        _wrote(boards_module.plot(boards, plot))
    if plot_fraction and boards:
        _wrote(boards_module.plot_efficiency(boards, plot_fraction))
    if not boards and not as_json:
        print(f"no evaluations on {domain} yet")
    if by_fraction:
        _print_efficiency(boards, as_json)
    elif as_json:
        _emit_json([board.as_dict() for board in boards])
    else:
        for board in boards:
            _print_board(board, f"{_board_title(board)}, data {board.data_fingerprint[:12]}, "
                                f"candidates {str(board.candidates_digest)[:12]}", wide)


# The board's metrics at 80 terminal columns (the demo's headline pair); --wide adds the rest.
NARROW_METRICS = ("hit@1", "ndcg@10")


def _print_board(board, title: str, wide: bool = False) -> None:
    """One leaderboard table: each subject with its training run in brief.  By default
    the columns fit an 80-column terminal (names wrap); ``--wide`` shows every column."""
    from .leaderboard import COLUMNS

    if wide:
        _table(title, ["subject", "kind", "mode", "prior", "trainable", "fraction",
                       "examples seen (stop)", *COLUMNS],
               [[r["subject"], r["kind"], r["mode"], _prior(r), r["trainable_parameters"], r["fraction"],
                 _seen(r), *(f"{r['metrics'][m]['mean']:.4f}" for m in COLUMNS)] for r in board.rows])
        return
    _table(title, ["subject", "kind", "mode", "prior", "fraction", *NARROW_METRICS],
           [[r["subject"], r["kind"], r["mode"], _prior(r), r["fraction"],
             *(f"{r['metrics'][m]['mean']:.4f}" for m in NARROW_METRICS)] for r in board.rows])


def _prior(row: dict) -> str:
    """Whether a row's scores carried the popularity prior ("" where it does not apply:
    model-free baselines, and rows evaluated before the prior existed)."""
    used = row.get("popularity_prior")
    return "" if used is None else "yes" if used else "no"


def _print_efficiency(boards, as_json: bool) -> None:
    """The boards' trained rows by (method, fraction), averaged over training seeds."""
    from .leaderboard import COLUMNS, efficiency

    groups = [(board, efficiency(board)) for board in boards]
    if as_json:
        _emit_json([{**board.as_dict(), "rows": [p.as_dict() for p in points]}
                    for board, points in groups])
        return
    for board, points in groups:
        _table(f"{_board_title(board)}, by target-data fraction (mean over seeds)",
               ["method", "fraction", "seeds", "trainable", *COLUMNS],
               [[p.method, p.fraction, len(p.seeds), p.trainable_parameters,
                 *(f"{p.metrics[m]['mean']:.4f}" for m in COLUMNS)] for p in points])


def _seen(row: dict) -> str:
    """A leaderboard row's training run in brief: examples seen and why it stopped."""
    run = row.get("run")
    return f"{run['examples_seen']} ({run['stop_reason']})" if run else ""


def _wrote(path) -> None:
    """Say where a plot went (stderr, so --json output stays one document)."""
    print(f"wrote {path}", file=sys.stderr)


def _board_title(board) -> str:
    return f"{board.domain}: {board.protocol}, {board.split}, {board.rows[0]['users']} users"


@app.command()
def demo(
    home: Optional[str] = typer.Option(None, "--home", help="Folder for the demo registry "
                                       "(default: $XREG_HOME/demo-N, a new one each run)."),
    users: int = typer.Option(500, "--users", min=50, help="Users per synthetic source domain."),
    target_users: int = typer.Option(1000, "--target-users", min=50,
                                     help="Users of the synthetic target domain (60% of "
                                     "them test users)."),
    base_model: Optional[str] = typer.Option(None, "--base-model", help="Transformers model name "
                                             "or path (default: the bundled all-MiniLM-L6-v2)."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed of the synthetic world (users, "
                             "tastes, catalogues) and of training; docs/RESULTS.md reports 0, 1 and 2."),
    wide: bool = WIDE_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Run the whole story offline: synthetic domains, source adapters, X-Cross, baselines."""
    from . import leaderboard as boards_module
    from .demo import TARGET, DemoSettings, demo_home, run_demo

    folder = demo_home(home)
    say = (lambda message: None) if as_json else (lambda message: print(message, file=sys.stderr))
    settings = DemoSettings(users=users, target_users=target_users, base_model=base_model, seed=seed)
    result = run_demo(folder, settings, say=say)
    boards = boards_module.leaderboard(result.registry, TARGET)
    if as_json:
        _emit_json({"home": str(folder), "leaderboard": [b.as_dict() for b in boards],
                    "comparisons": result.comparisons, "winner": result.winner})
        return
    for board in boards:
        _print_board(board, f"{TARGET} test split, {board.rows[0]['users']} users ({board.protocol})", wide)
    _table(f"paired differences on the same {result.comparisons[0]['users']} {TARGET} test users",
           ["first − second", "metric", "difference", "95% interval", "verdict"],
           [[f"{c['first']} − {c['second']}", *row] for c in result.comparisons
            for row in _difference_rows(c, ("hit@1", "ndcg@10"))])
    won = result.winner["differences"]["ndcg@10"]
    print(f"winner: {result.winner['first']} by NDCG@10, {won['difference']:+.3f} [{won['low']:+.3f}, "
          f"{won['high']:+.3f}] over the runner-up {result.winner['second']} "
          f"({'an interval above zero' if won['low'] > 0 else 'level: the interval includes zero'})")
    print(f"demo registry: XREG_HOME={folder}")


@app.command()
def compare(
    domain: str = typer.Argument(..., metavar="DOMAIN", help="Domain both were evaluated on."),
    first: str = typer.Argument(..., metavar="FIRST", help="Subject as named on the leaderboard."),
    second: str = typer.Argument(..., metavar="SECOND", help="Subject to subtract from FIRST."),
    protocol: str = typer.Option("sampled", "--protocol", help="sampled, sampled-pop or full "
                                 "(sampled:100 for 100 negatives)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Paired bootstrap of FIRST minus SECOND on the same stored candidates of DOMAIN."""
    from .evaluation import compare as compare_results

    document = compare_results(_registry(), domain, first, second, protocol)
    if as_json:
        _emit_json(document)
        return
    _table(f"{first} − {second} on {domain} ({protocol}, {document['users']} users, paired)",
           ["metric", "difference", "95% interval", "verdict"],
           _difference_rows(document, SHOWN_METRICS))


def _difference_rows(document: dict, metrics) -> list[list[str]]:
    """One row per metric of a paired comparison: difference, interval, verdict."""
    from .evaluation import verdict

    return [[name, f"{d['difference']:+.4f}", f"[{d['low']:+.4f}, {d['high']:+.4f}]", verdict(d)]
            for name, d in document["differences"].items() if name in metrics]


@app.command()
def export(name: str = typer.Argument(..., metavar="ADAPTER", help="DOMAIN or DOMAIN@vN."),
           directory: str = typer.Argument(..., metavar="DIR", help="New or empty folder to write.")
           ) -> None:
    """Write an adapter version as a standard PEFT folder (plus head and model card)."""
    from .adapters import export_adapter

    print(f"exported to {export_adapter(_registry(), name, directory)}")


@app.command()
def domains(as_json: bool = JSON_OPTION) -> None:
    """List registered domains."""
    from .registry import as_dict

    rows = [as_dict(row) for row in _registry().domains()]
    if as_json:
        _emit_json(rows)
        return
    _table("domains", ["name", "plugin", "split", "items", "users (train/valid/test)", "fingerprint",
                       "description"],
           [[d["name"], d["plugin"], d["split"], d["summary"].get("items"), _users(d["summary"]),
             d["data_fingerprint"][:12], d["description"]] for d in rows],
           empty="no domains yet; register one with `xreg add-domain NAME --plugin P --data LOCATION` "
                 "(`xreg plugins` lists the plugins)")


@app.command()
def items(
    domain: str = typer.Argument(..., metavar="DOMAIN", help="Domain whose catalogue to list."),
    search: Optional[str] = typer.Option(None, "--search", help="Only items whose id or title "
                                         "contains every word of TEXT (any case)."),
    limit: int = typer.Option(50, "--limit", min=0, help="Print at most this many (0: all)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """List a domain's item ids and titles, to write a `recommend --history` with."""
    found = _registry().find_items(domain, search)
    shown = found[:limit] if limit else found
    if as_json:
        _emit_json([{"id": item.id, "title": item.title} for item in shown])
        return
    _table(f"{domain} items" + (f" matching {search!r}" if search else ""),
           ["id", "title"], [[item.id, item.title] for item in shown],
           empty=terminal_safe(f"no item of {domain} matches {search!r}; try fewer or shorter words")
           if search else f"{domain} has no items")
    if len(shown) < len(found):
        print(f"the first {len(shown)} of {len(found)} items; --limit 0 lists all")


@app.command()
def show(name: str = typer.Argument(..., metavar="NAME",
                                    help="Domain, adapter (DOMAIN@vN), composition or trained "
                                    "baseline (sasrec:DOMAIN[@vN])."),
         plot: Optional[str] = typer.Option(
             None, "--plot", help="Composition: draw its per-layer integration weights to this PNG."),
         as_json: bool = JSON_OPTION) -> None:
    """Show a domain (data summary, adapters, dependents), an adapter version (base model,
    training run), a composition (sources, parameters) or a trained baseline (settings, run)."""
    from . import composer
    from .baselines import stored_baseline
    from .checks import check_plot_path
    from .registry import as_dict
    from .xcross.integration import plot_integration

    registry = _registry()
    if plot:
        check_plot_path(plot)  # before the model runs to measure the integrators
    if registry.find_composition(name) is not None:
        _note_shadowed_domain(registry, name)
        document = composer.as_dict(registry.composition(name))
        if plot:
            document["integration"] = composer.integration_weights(registry, name)
            _wrote(plot_integration(document["integration"], plot))
        _print_composition(document, as_json)
    elif plot:
        raise ValidationError(f"--plot draws a composition's integrators; {name} is not a composition")
    elif (baseline := stored_baseline(registry, name)) is not None:
        _print_baseline_model(as_dict(baseline), as_json)
    elif "@" in name:
        _print_adapter(as_dict(registry.adapter(name)), as_json)
    else:
        document = _domain_document(registry, name)
        document["used_by"] = registry.dependents(name)["compositions"]
        _print_domain(document, as_json)


def _note_shadowed_domain(registry, name: str) -> None:
    """Names are unique across domains and compositions now; a registry from before may
    hold both, and ``show`` then says which one it shows."""
    if any(domain.name == name for domain in registry.domains()):
        print(f"note: showing composition {name}; a domain has the same name (registered before "
              f"names were unique): `xreg domains` lists it, and `xreg items {name}` or "
              f"`xreg evaluate {name} --baseline popularity` reach it", file=sys.stderr)


@app.command()
def remove(name: str = typer.Argument(..., metavar="DOMAIN", help="Domain to remove."),
           force: bool = typer.Option(
        False, "--force", help="Also remove the adapters, compositions, trained baselines and "
        "results using it.")) -> None:
    """Remove a domain (refused while adapters, compositions or trained baselines depend on it)."""
    deps = _registry().remove_domain(name, force=force)
    gone = deps["adapters"] + deps["compositions"] + deps["baselines"]
    print(f"removed domain {name}" + (f" and {', '.join(gone)}" if gone else ""))


@app.command()
def gc(dry_run: bool = typer.Option(False, "--dry-run", help="Only report what would be removed."),
       grace_minutes: float = typer.Option(
           60.0, "--grace-minutes", min=0, help="Keep unreferenced artifacts younger than this: "
           "a registration still running may be about to reference them."),
       as_json: bool = JSON_OPTION) -> None:
    """Remove stored artifacts that no registry row references, and leftovers of dead runs."""
    from .garbage import collect_garbage, format_bytes

    report = collect_garbage(_registry(), dry_run=dry_run, grace_seconds=grace_minutes * 60)
    if as_json:
        _emit_json(report.as_dict())
        return
    print(f"{'would remove' if dry_run else 'removed'} {len(report.removed)} unreferenced "
          f"artifacts and {len(report.removed_staging)} staging leftovers, "
          f"{'would free' if dry_run else 'freed'} {format_bytes(report.bytes_freed)}; kept "
          f"{report.referenced} referenced and {len(report.kept_recent)} newer than "
          f"{grace_minutes:g} minutes")


@app.command()
def adapters(domain: Optional[str] = typer.Argument(None, metavar="DOMAIN",
                                                    help="Only this domain's versions."),
             as_json: bool = JSON_OPTION) -> None:
    """List adapter versions (of one domain, or all)."""
    from .registry import as_dict

    rows = [as_dict(row) for row in _registry().adapters(domain)]
    if as_json:
        _emit_json(rows)
        return
    _table("adapters", ["adapter", "base model", "trainable", "status", "digest"],
           [[f"{a['domain']}@v{a['version']}", a["base_model"], a["trainable_parameters"],
             a["status"], a["artifact_digest"][:12]] for a in rows],
           empty=f"no adapters{' of ' + domain if domain else ''} yet; train one with "
                 f"`xreg train-adapter {domain or 'DOMAIN'}`")


def _domain_document(registry, name: str) -> dict:
    """A domain's row with its adapter versions, as ``show`` and ``add-domain`` print it."""
    from .registry import as_dict

    document = as_dict(registry.domain(name))
    document["adapters"] = [as_dict(a) for a in registry.adapters(name)]
    return document


def _users(summary: dict) -> str:
    users = summary.get("users", {})
    return "/".join(str(users.get(split, 0)) for split in ("train", "valid", "test"))


def _print_domain(d: dict, as_json: bool = False) -> None:
    if as_json:
        _emit_json(d)
        return
    d = terminal_safe(d)
    summary = d["summary"]
    lengths = summary.get("sequence_length", {})
    console = _console()
    console.print(_bold(d["name"], f" ({d['plugin']}) from {d['data_location']}"))
    if d.get("description"):
        console.print(d["description"])
    console.print(f"items {summary.get('items')}, users train/valid/test {_users(summary)}, "
                  f"interactions {summary.get('interactions')}, sequence length "
                  f"{lengths.get('min')}-{lengths.get('max')} (mean {lengths.get('mean')})")
    console.print(f"fingerprint {d['data_fingerprint']} (split {d.get('split', 'user')}, data "
                  f"version {d.get('data_version', 1)}, plugin version {d.get('plugin_version') or 'unknown'})")
    for adapter in d.get("adapters", []):
        console.print(f"adapter v{adapter['version']}: {adapter['trainable_parameters']} "
                      f"trainable parameters, {adapter['status']}")
        if (adapter.get("training_config") or {}).get("run"):
            console.print("  " + _run_summary(adapter["training_config"]["run"]))
    if d.get("used_by"):
        console.print(f"used by: {', '.join(d['used_by'])}")


def _print_adapter(a: dict, as_json: bool = False) -> None:
    if as_json:
        _emit_json(a)
        return
    a = terminal_safe(a)
    console = _console()
    training = a["training_config"] or {}
    console.print(_bold(f"{a['domain']}@v{a['version']}",
                        f": {a['status']} adapter of {a['domain']} on {a['base_model']}"))
    console.print(f"trainable parameters {a['trainable_parameters']} (LoRA "
                  f"{training.get('lora_parameters')}); prompt template {training.get('template')}")
    console.print(f"data fingerprint {a['data_fingerprint']}; artifact {a['artifact_digest']}")
    if training.get("imported_from"):
        console.print(f"imported from {training['imported_from']}")
    else:
        console.print(f"validation: {_metrics_text((a['metrics'] or {}).get('validation'))}")
        console.print(_run_summary(training.get("run")))
    if training.get("fusion"):
        _print_composition_records({"fusion": training["fusion"]}, "lora")


def _print_baseline_model(b: dict, as_json: bool = False) -> None:
    if as_json:
        _emit_json(b)
        return
    b = terminal_safe(b)
    console = _console()
    settings, run, measured = b["training_config"]["training"], b["training_config"]["run"], b["metrics"]
    console.print(_bold(b["name"], f": {b['kind']} baseline of {b['domain']}, "
                        f"{b['trainable_parameters']} trainable parameters"))
    console.print(f"trained on fraction {settings.get('fraction')} (seed {settings.get('seed')}) of "
                  f"{b['domain']}: {measured.get('train_users')} users in {measured.get('seconds')} s; "
                  f"validation: {_metrics_text(measured.get('validation'))}")
    console.print(f"run: {run.get('stop_reason')}; {run.get('examples_seen')} examples, "
                  f"{run.get('optimizer_steps')} optimiser steps, {run.get('epochs_completed')} "
                  f"epochs completed, best epoch {measured.get('best_epoch')}, "
                  f"{run.get('wall_seconds')} s wall")
    console.print(f"data fingerprint {b['data_fingerprint']}; artifact {b['artifact_digest']}")


def _print_composition(c: dict, as_json: bool = False) -> None:
    if as_json:
        _emit_json(c)
        return
    c = terminal_safe(c)
    console = _console()
    console.print(_bold(c["name"], f": {c['method']} ({c['mode']}) of "
                        f"{', '.join(s['adapter'] for s in c['sources'])} for {c['target']}"))
    parameters = c.get("parameters") or {}
    console.print(f"trainable parameters: integrators {parameters.get('integrator_parameters')}, "
                  f"head {parameters.get('head_parameters')}; one source adapter's LoRA "
                  f"{parameters.get('source_lora_parameters')} (integrators/LoRA "
                  f"{parameters.get('integrators_over_one_adapter')}, head/LoRA "
                  f"{parameters.get('head_over_one_adapter')})")
    training, measured = c["training_config"], c["metrics"]
    console.print(f"trained on fraction {training['training']['fraction']} of {c['target']} "
                  f"({measured.get('train_users')} users) in {measured.get('seconds')} s; "
                  f"validation: {_metrics_text(measured.get('validation'))}")
    console.print(_run_summary(training.get("run")))
    _print_composition_records(c["integrator_config"], c["method"])
    evaluation = c.get("evaluation")
    if evaluation:
        console.print("test: " + ", ".join(f"{k} {v['mean']:.4f}" for k, v in evaluation["metrics"].items()
                                          if k in SHOWN_METRICS))


def _print_composition_records(config: dict, method: str) -> None:
    """What a composition's method chose and learned, as stored with it: its settings, a
    weight search (lorahub), learned merge weights, a fusion, an automatic choice."""
    if config.get(method):
        print(f"settings: {json.dumps(config[method], sort_keys=True)}")
    search = config.get("search")
    if search:
        first, best = search["evaluations"][0], search["evaluations"][search["best"]]
        print(f"weight search: {len(search['evaluations'])} evaluations on {search['users']} validation "
              f"users ({search['optimizer']}); chose {best['weights']} (objective {best['objective']:.4f}; "
              f"equal weights {first['objective']:.4f})")
    integration = config.get("integration")
    if integration and "weights" in integration:
        print(f"learned weights ({', '.join(integration['sources'])}): {integration['weights']}")
    fusion = config.get("fusion")
    if fusion:
        scores = fusion["validation_ndcg@10"]
        print(f"fused with {fusion['with']}: weight {fusion['weight']:.4f}, unseen {fusion['unseen']:.4f}; "
              f"validation NDCG@10 on {fusion['users']} users: text {scores['text']:.4f}, "
              f"ids {scores['ids']:.4f}, fused {scores['fused']:.4f}")
    auto = config.get("auto")
    if auto:
        print(f"chosen automatically on {auto['validation_users']} validation users (NDCG@10):")
        if auto["sources"]:
            _table("sources (zero-shot)", ["adapter", "NDCG@10", "chosen"],
                   [[row["adapter"], f"{row['validation_ndcg@10']:.4f}",
                     "yes" if row["adapter"] in auto["chosen_sources"] else ""] for row in auto["sources"]])
        _table("methods (same budget)", ["candidate", "steps", "NDCG@10", "seconds", "chosen"],
               [[row["candidate"], f"{row['steps']}/{row['planned_steps']}", f"{row['validation_ndcg@10']:.4f}",
                 row["seconds"], "yes" if row["candidate"] == auto["chosen"] else ""]
                for row in auto["candidates"]])


def main() -> None:
    """Console-script entry point: run the app, turning our errors into one line."""
    # Library progress bars and warnings would break the one-line error contract.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    # Deprecation notices that one library raises about another (peft reading a
    # transformers attribute that is being renamed) say nothing a user can act on.
    if not sys.warnoptions:
        import warnings

        for library in ("transformers", "peft", "accelerate"):
            warnings.filterwarnings("ignore", category=FutureWarning, module=rf"{library}(\.|$)")
    # Printing must not fail after a command has committed: characters the terminal's
    # encoding cannot show (a title in an ASCII locale) are escaped, not raised.
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    from .runs import signals_interrupt

    try:
        with signals_interrupt("command"):  # SIGTERM at any moment: one line, nothing half-done
            code = app(standalone_mode=False, prog_name="xreg")
    except XregError as exc:
        _debug_traceback()
        print(f"error: {terminal_safe(str(exc))}", file=sys.stderr)  # URLs masked where raised
        sys.exit(1)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:
        if isinstance(exc, _click_exception()):  # usage errors: click's usage line, exit 2
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, typer.Abort):
            print("error: aborted", file=sys.stderr)
            sys.exit(1)
        _debug_traceback()
        print(f"error: unexpected {type(exc).__name__}: {terminal_safe(mask_urls_in(str(exc)))} "
              "(set XREG_DEBUG=1 for the traceback)", file=sys.stderr)
        sys.exit(1)
    if isinstance(code, int) and code:  # typer.Exit(code) returns its code without standalone mode
        sys.exit(code)


def _click_exception() -> type:
    """The base class of the usage errors typer raises: click's ClickException, which
    typer >= 0.26 vendors as typer._click."""
    try:
        from typer._click.exceptions import ClickException
    except ImportError:  # older typer: click itself
        from click.exceptions import ClickException
    return ClickException


def _debug_traceback() -> None:
    """With XREG_DEBUG=1 the full traceback goes to stderr before the one error line."""
    if os.environ.get("XREG_DEBUG", "").strip() not in ("", "0"):
        import traceback

        traceback.print_exc(file=sys.stderr)
