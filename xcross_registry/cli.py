"""``xreg``: a thin command-line skin over :mod:`xcross_registry.registry`.

Commands parse arguments, call the library and print.  ``--json`` prints exactly one
JSON document on stdout.  Any :class:`~xcross_registry.errors.XregError` becomes one
line on stderr and exit code 1.  torch, transformers and peft are imported only inside
the commands that need them, so registry commands start fast.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from typing import Any, Optional

import typer

from .errors import ValidationError, XregError

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
    print(f"registry ready at {registry.display_url} (schema {revision}); artifacts in "
          f"{settings.artifacts_root()}" + (f"; cleaned {removed} leftovers" if removed else ""))


@app.command()
def plugins(as_json: bool = JSON_OPTION) -> None:
    """List installed plugins, the domain types they add (with description and prompt
    templates), and any that failed or that XREG_LOAD_PLUGINS leaves out."""
    from .plugins import get_plugins

    loaded = get_plugins()
    infos = [info.as_dict(loaded.domain_types) for info in loaded.plugins.values()]
    for warning in loaded.warnings():
        print(f"warning: {warning}", file=sys.stderr)
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

# Training options, shared by `add-domain --train` and `train-adapter`.
EPOCHS = typer.Option(2, "--epochs", min=1, help="Passes over the training examples.")
LR = typer.Option(1e-4, "--lr", help="Learning rate of the LoRA weights.")
HEAD_LR = typer.Option(1e-2, "--head-lr", help="Learning rate of the scorer head.")
MAX_LENGTH = typer.Option(128, "--max-length", min=8, help="Token budget of a prompt.")
VALID_USERS = typer.Option(200, "--valid-users", min=0, help="Validation users per epoch.")
PREFIXES = typer.Option(0, "--prefixes-per-user", min=0,
                        help="Training examples per user and epoch (0: every prefix).")
MAX_MINUTES = typer.Option(None, "--max-minutes", help="Wall-clock cap on the whole command "
                           "(model loading, training, validation, saving; compose then skips "
                           "its evaluation); the best validated epoch is kept and the run is "
                           "recorded as time-cap.")
BATCH_SIZE = typer.Option(16, "--batch-size", min=1, help="Training examples per optimiser step.")
NEGATIVES = typer.Option(15, "--negatives", min=1, help="Sampled negatives per training example.")
MAX_USERS = typer.Option(None, "--max-users", min=1, help="Cap on training users.")
FRACTION = typer.Option(1.0, "--fraction", help="Share of the training users to use.")
SEED = typer.Option(0, "--seed", help="Seed of user selection, negatives and initialisation.")
MODE = typer.Option("cross", "--mode", help="cross (prompt with candidate) or dual (two towers).")
BASE_MODEL = typer.Option(None, "--base-model", help="Transformers model name or path "
                          "(default: the bundled all-MiniLM-L6-v2).")
BF16 = typer.Option(False, "--bf16", help="bf16 autocast where the hardware has bf16 arithmetic "
                    "(CUDA, CPUs with AVX512-BF16 or AMX); elsewhere it warns on stderr and "
                    "trains in float32.")
PATIENCE = typer.Option(0, "--patience", min=0, help="Stop early (recorded as early-stop) after "
                        "this many validated epochs without a better NDCG@10 (0: never).")
IN_BATCH = typer.Option(False, "--in-batch", help="The batch's other positives are negatives too "
                        "(free in dual mode; B more prompts per example in cross mode).")


def _train(registry, name: str, *, mode: str, max_length: int, base_model: str | None,
           head_only: bool, quiet: bool, template: str | None = None, **training_options):
    started = _command_started()
    from .adapters import train_adapter
    from .scorer import ScorerConfig
    from .training import Deadline, TrainingConfig

    training = TrainingConfig(**training_options)
    with _warnings_as_lines(), _training_progress(quiet) as progress:
        return train_adapter(registry, name,
                             scorer_config=ScorerConfig(mode=mode, max_length=max_length),
                             training_config=training, base_model=base_model,
                             head_only=head_only, template=template, progress=progress,
                             deadline=Deadline.for_config(training, started))


@contextlib.contextmanager
def _warnings_as_lines():
    """Our own warnings (an ignored ``--bf16``) as one ``warning: ...`` line on stderr."""
    import warnings

    from .errors import XregWarning

    show = warnings.showwarning

    def one_line(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, XregWarning):
            print(f"warning: {message}", file=sys.stderr)
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
    """How a training run went, from its record (``training_config["run"]``)."""
    if not run:
        return "run: not recorded"
    return (f"run: {run['stop_reason']}; {run['examples_seen']} of {run['planned_examples']} "
            f"examples, {run['optimizer_steps']} of {run['planned_steps']} optimiser steps, "
            f"{run['epochs_completed']} epochs completed, {run['examples_per_second']} examples/s, "
            f"{run['wall_seconds']} s wall, {run['processes']} process(es), {run['precision']}; "
            f"best epoch {run['best_epoch']} validated on {run['validation_users']} of "
            f"{run['validation_users_planned']} users")


def _training_progress(quiet: bool):
    """The trainer's progress display: a bar on stderr when stderr is a terminal, none
    under --json (see :mod:`xcross_registry.progress`)."""
    from .progress import AUTO, training_display

    return training_display(None if quiet else AUTO)


@app.command("add-domain")
def add_domain(
    name: str = typer.Argument(..., metavar="NAME", help="Name of the new domain."),
    plugin: str = typer.Option(..., "--plugin", help="Domain type (plugin) that reads the data."),
    data: str = typer.Option(..., "--data", help="Where the data is (plugin-specific)."),
    description: str = typer.Option("", "--description", help="Free text shown by show."),
    adapter: Optional[str] = typer.Option(None, "--adapter", help="Import this PEFT LoRA folder as v1."),
    train: bool = typer.Option(False, "--train", help="Train a LoRA adapter right away."),
    refresh: bool = typer.Option(False, "--refresh", help="The domain exists: re-read its data "
                                 "(from --data) and register it as the domain's next data version; "
                                 "its adapters and compositions keep their lineage."),
    epochs: int = EPOCHS, lr: float = LR, head_lr: float = HEAD_LR, batch_size: int = BATCH_SIZE,
    negatives: int = NEGATIVES, max_users: Optional[int] = MAX_USERS, fraction: float = FRACTION,
    seed: int = SEED, valid_users: int = VALID_USERS, max_minutes: Optional[float] = MAX_MINUTES,
    prefixes_per_user: int = PREFIXES,
    mode: str = MODE, max_length: int = MAX_LENGTH, base_model: Optional[str] = BASE_MODEL,
    bf16: bool = BF16, in_batch: bool = IN_BATCH, as_json: bool = JSON_OPTION,
) -> None:
    """Register a domain after its plugin has loaded and validated the data."""
    from .registry import as_dict

    registry = _registry()
    if adapter is not None and train:
        raise ValidationError("--adapter and --train exclude each other")
    if refresh and (adapter is not None or train):
        raise ValidationError("--refresh re-registers data only; import or train afterwards "
                              "(xreg train-adapter)")
    if refresh:
        _, changed = registry.refresh_domain(name, plugin, data)
        if not changed and not as_json:
            print(f"domain {name}: data unchanged (fingerprint "
                  f"{registry.domain(name).data_fingerprint[:12]}); nothing to refresh", file=sys.stderr)
    elif adapter is not None:
        from .adapters import import_adapter

        import_adapter(registry, name, plugin, data, adapter, description=description,
                       base_model=base_model)
    else:
        registry.add_domain(name, plugin, data, description)
        if train:
            try:
                _train(registry, name, mode=mode, max_length=max_length, base_model=base_model,
                       head_only=False, quiet=as_json, epochs=epochs, lr=lr, head_lr=head_lr,
                       batch_size=batch_size, negatives=negatives, max_users=max_users,
                       fraction=fraction, seed=seed, valid_users=valid_users,
                       max_minutes=max_minutes, prefixes_per_user=prefixes_per_user, bf16=bf16,
                       in_batch_negatives=in_batch)
            except BaseException:
                registry.remove_domain(name, force=True)  # all or nothing
                raise
    document = as_dict(registry.domain(name))
    document["adapters"] = [as_dict(a) for a in registry.adapters(name)]
    if as_json:
        _emit_json(document)
    else:
        _print_domain(document)


@app.command("train-adapter")
def train_adapter(
    name: str = typer.Argument(..., metavar="DOMAIN", help="Domain to train on."),
    epochs: int = EPOCHS, lr: float = LR, head_lr: float = HEAD_LR, batch_size: int = BATCH_SIZE,
    negatives: int = NEGATIVES, max_users: Optional[int] = MAX_USERS, fraction: float = FRACTION,
    seed: int = SEED, valid_users: int = VALID_USERS, max_minutes: Optional[float] = MAX_MINUTES,
    prefixes_per_user: int = PREFIXES,
    mode: str = MODE, max_length: int = MAX_LENGTH, base_model: Optional[str] = BASE_MODEL,
    bf16: bool = BF16, in_batch: bool = IN_BATCH, patience: int = PATIENCE,
    head_only: bool = typer.Option(False, "--head-only", help="Baseline: train only the head "
                                   "on the frozen base model."),
    template: Optional[str] = TEMPLATE,
    as_json: bool = JSON_OPTION,
) -> None:
    """Train a LoRA adapter on a domain and register it as the next version."""
    from .registry import as_dict

    version = _train(_registry(), name, mode=mode, max_length=max_length, base_model=base_model,
                     head_only=head_only, quiet=as_json, template=template, epochs=epochs, lr=lr,
                     head_lr=head_lr,
                     batch_size=batch_size, negatives=negatives, max_users=max_users,
                     fraction=fraction, seed=seed, valid_users=valid_users,
                     max_minutes=max_minutes, prefixes_per_user=prefixes_per_user, bf16=bf16,
                     in_batch_negatives=in_batch, patience=patience)
    if not _is_main_process():
        return
    if as_json:
        _emit_json(as_dict(version))
    else:
        print(f"registered {version.label}: {version.trainable_parameters} trainable parameters, "
              f"validation {version.metrics.get('validation')}")
        print(_run_summary(version.training_config.get("run")))


@app.command()
def evaluate(
    name: str = typer.Argument(..., metavar="NAME", help="Composition, adapter (DOMAIN or DOMAIN@vN), or a "
                               "domain with --baseline."),
    protocol: str = typer.Option("sampled", "--protocol", help="sampled, sampled-pop or full."),
    split: str = typer.Option("test", "--split", help="test or valid."),
    max_users: Optional[int] = typer.Option(None, "--max-users", min=1,
                                            help="Evaluate a seeded subset of this many users."),
    seed: int = typer.Option(0, "--seed", help="Candidate and bootstrap seed."),
    domain: Optional[str] = typer.Option(None, "--domain", help="Evaluate on another domain (zero-shot)."),
    baseline: Optional[str] = typer.Option(None, "--baseline", help="popularity or head-only."),
    template: Optional[str] = TEMPLATE,
    as_json: bool = JSON_OPTION,
) -> None:
    """Rank the stored candidates, print Hit@1/3/10, NDCG@10 and MRR, store the result."""
    from . import evaluation

    registry = _registry()
    options = {"protocol": protocol, "split": split, "max_users": max_users, "seed": seed}
    if baseline == "popularity":
        if template is not None:
            raise ValidationError("--template does not apply to the popularity baseline (no prompts)")
        result = evaluation.evaluate_popularity(registry, domain or name, **options)
    elif baseline == "head-only":
        from .adapters import latest_head_only

        label = latest_head_only(registry, name).label
        result = evaluation.evaluate_adapter(registry, label, domain=domain, template=template,
                                             **options)
    elif baseline is None and domain is None:
        result = evaluation.evaluate_named(registry, name, template=template, **options)
    elif baseline is None:
        result = evaluation.evaluate_adapter(registry, name, domain=domain, template=template,
                                             **options)
    else:
        raise ValidationError(f"unknown baseline {baseline!r}: use popularity or head-only")
    if as_json:
        _emit_json(result.as_dict())
        return
    _table(f"{result.subject_name} on {result.domain} ({result.protocol}, {result.split}, "
           f"{result.num_users} users)", ["metric", "mean", "95% interval"],
           [[metric, f"{m['mean']:.4f}", f"[{m['low']:.4f}, {m['high']:.4f}]"]
            for metric, m in result.metrics.items()
            if metric in ("hit@1", "hit@3", "hit@10", "ndcg@10", "mrr")])


@app.command()
def compose(
    sources: str = typer.Option(..., "--sources", help="Comma-separated source adapters (DOMAIN or DOMAIN@vN)."),
    target: str = typer.Option(..., "--target", help="Target domain."),
    name: Optional[str] = typer.Option(None, "--name", help="Composition name (default TARGET-x)."),
    method: str = typer.Option("xcross", "--method", help="xcross, or linear-merge (baseline)."),
    mode: Optional[str] = typer.Option(None, "--mode", help="cross or dual (default: the sources')."),
    beta: float = typer.Option(1.0, "--beta", help="Scale of the term that takes the other "
                               "streams' states."),
    gamma: float = typer.Option(1.0, "--gamma", help="Scale of the term that moves a stream "
                                "away from the others' states."),
    pooled: bool = typer.Option(False, "--pooled", help="Integration scalars per sequence, not per token."),
    epochs: int = EPOCHS, lr: float = typer.Option(1e-3, "--lr", help="Learning rate of the integrators."),
    head_lr: float = HEAD_LR, batch_size: int = BATCH_SIZE, negatives: int = NEGATIVES,
    max_users: Optional[int] = MAX_USERS, fraction: float = FRACTION, seed: int = SEED,
    valid_users: int = VALID_USERS, max_minutes: Optional[float] = MAX_MINUTES,
    prefixes_per_user: int = PREFIXES, bf16: bool = BF16, in_batch: bool = IN_BATCH,
    patience: int = PATIENCE,
    evaluate_after: bool = typer.Option(True, "--evaluate/--no-evaluate",
                                        help="Evaluate on the target test split afterwards."),
    template: Optional[str] = TEMPLATE,
    as_json: bool = JSON_OPTION,
) -> None:
    """Train an X-Cross composition of source adapters for a target domain and register it."""
    started = _command_started()
    from . import composer, evaluation
    from .training import Deadline, TrainingConfig
    from .xcross import XCrossConfig

    registry = _registry()
    training = TrainingConfig(epochs=epochs, lr=lr, head_lr=head_lr, batch_size=batch_size,
                              negatives=negatives, max_users=max_users, fraction=fraction,
                              seed=seed, valid_users=valid_users, max_minutes=max_minutes,
                              prefixes_per_user=prefixes_per_user, bf16=bf16,
                              in_batch_negatives=in_batch, patience=patience)
    with _warnings_as_lines(), _training_progress(as_json) as progress:
        row = composer.compose(registry, [s for s in sources.split(",") if s.strip()], target,
                               name=name, method=method, mode=mode, training_config=training,
                               xcross_config=XCrossConfig(beta=beta, gamma=gamma, per_token=not pooled),
                               template=template, progress=progress,
                               deadline=Deadline.for_config(training, started))
    if not _is_main_process():
        return
    document = composer.as_dict(row)
    if evaluate_after and row.training_config["run"]["stop_reason"] == "time-cap":
        # --max-minutes bounds the whole command: the test evaluation is not started.
        print(f"note: not evaluated, the --max-minutes cap was reached; run 'xreg evaluate "
              f"{row.name}'", file=sys.stderr)
    elif evaluate_after:
        document["evaluation"] = evaluation.evaluate_composition(registry, row.name).as_dict()
    if as_json:
        _emit_json(document)
    else:
        _print_composition(document)


@app.command()
def compositions(as_json: bool = JSON_OPTION) -> None:
    """List compositions with their sources."""
    from . import composer

    rows = [composer.as_dict(row) for row in composer.compositions(_registry())]
    if as_json:
        _emit_json(rows)
        return
    _table("compositions", ["name", "target", "sources", "method", "mode", "trainable"],
           [[c["name"], c["target"], ", ".join(s["adapter"] for s in c["sources"]), c["method"],
             c["mode"], c["trainable_parameters"]] for c in rows])


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
    reranker = (serving.load_model(registry, rerank, domain=model.domain, template=template)
                if rerank else None)
    ranked = serving.recommend(model, request.history, top=top, reranker=reranker,
                               rerank_depth=rerank_depth, candidates=request.candidates)
    if as_json:
        _emit_json([r.as_dict() for r in ranked])
        return
    _table(f"{name} on {model.domain}", ["rank", "item", "title", "score"],
           [[r.rank, r.item_id, r.title, f"{r.score:.4f}"] for r in ranked])


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
) -> None:
    """Serve recommendations over HTTP (JSON API under /v1) and a registry browser at /."""
    from .server import BatchingConfig, ServerConfig
    from .server import serve as run_server

    batching = (BatchingConfig(max_batch=1, wait_s=0.0) if no_batching
                else BatchingConfig(max_batch=max_batch, wait_s=batch_wait_ms / 1000))
    run_server(ServerConfig(host=host, port=port, max_models=max_models, batching=batching,
                            preload=[n.strip() for n in (preload or "").split(",") if n.strip()]))


@app.command()
def leaderboard(
    domain: str = typer.Argument(..., metavar="DOMAIN", help="Domain whose evaluations to show."),
    protocol: Optional[str] = typer.Option(None, "--protocol", help="Only this protocol."),
    plot: Optional[str] = typer.Option(None, "--plot", help="Also draw the boards to this PNG."),
    by_fraction: bool = typer.Option(False, "--by-fraction", help="Group trained rows by method "
                                     "and target-data fraction, averaged over training seeds."),
    plot_fraction: Optional[str] = typer.Option(None, "--plot-fraction", help="Also draw Hit@1 and "
                                                "NDCG@10 against the fraction to this PNG."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Every stored evaluation on a domain, side by side, one board per comparable group."""
    from . import leaderboard as boards_module

    boards = boards_module.leaderboard(_registry(), domain, protocol)
    if plot and boards:
        _wrote(boards_module.plot(boards, plot))
    if plot_fraction and boards:
        _wrote(boards_module.plot_efficiency(boards, plot_fraction))
    if not boards and not as_json:
        print(f"no evaluations on {domain} yet")
    if by_fraction:
        groups = [(board, boards_module.efficiency(board)) for board in boards]
        if as_json:
            _emit_json([{**board.as_dict(), "rows": [p.as_dict() for p in points]}
                        for board, points in groups])
            return
        for board, points in groups:
            _table(f"{_board_title(board)}, by target-data fraction (mean over seeds)",
                   ["method", "fraction", "seeds", "trainable", *boards_module.COLUMNS],
                   [[p.method, p.fraction, len(p.seeds), p.trainable_parameters,
                     *(f"{p.metrics[m]['mean']:.4f}" for m in boards_module.COLUMNS)] for p in points])
        return
    if as_json:
        _emit_json([board.as_dict() for board in boards])
        return
    for board in boards:
        _table(f"{_board_title(board)}, data {board.data_fingerprint[:12]}, "
               f"candidates {str(board.candidates_digest)[:12]}",
               ["subject", "kind", "trainable", "fraction", "examples seen (stop)",
                *boards_module.COLUMNS],
               [[r["subject"], r["kind"], r["trainable_parameters"], r["fraction"], _seen(r),
                 *(f"{r['metrics'][m]['mean']:.4f}" for m in boards_module.COLUMNS)]
                for r in board.rows])


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
    users: int = typer.Option(500, "--users", min=50, help="Users per synthetic domain."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Run the whole story offline: synthetic domains, source adapters, X-Cross, baselines."""
    from pathlib import Path

    from . import leaderboard as boards_module
    from . import settings
    from .demo import TARGET, DemoSettings, run_demo

    if home is None:
        number = 1
        while (settings.home() / f"demo-{number}").exists():
            number += 1
        home = str(settings.home() / f"demo-{number}")
    if Path(home).exists() and any(Path(home).iterdir()):
        raise ValidationError(f"demo folder {home} is not empty")
    say = (lambda message: None) if as_json else (lambda message: print(message, file=sys.stderr))
    registry = run_demo(Path(home), DemoSettings(users=users), say=say)
    boards = boards_module.leaderboard(registry, TARGET)
    if as_json:
        _emit_json({"home": home, "leaderboard": [b.as_dict() for b in boards]})
        return
    for board in boards:
        _table(f"{TARGET} test split, {board.rows[0]['users']} users ({board.protocol})",
               ["subject", "kind", "trainable", "fraction", *boards_module.COLUMNS],
               [[r["subject"], r["kind"], r["trainable_parameters"], r["fraction"],
                 *(f"{r['metrics'][m]['mean']:.4f}" for m in boards_module.COLUMNS)]
                for r in board.rows])
    print(f"demo registry: XREG_HOME={home}")


@app.command()
def compare(
    domain: str = typer.Argument(..., metavar="DOMAIN", help="Domain both were evaluated on."),
    first: str = typer.Argument(..., metavar="FIRST", help="Subject as named on the leaderboard."),
    second: str = typer.Argument(..., metavar="SECOND", help="Subject to subtract from FIRST."),
    protocol: str = typer.Option("sampled", "--protocol", help="sampled, sampled-pop or full."),
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
           [[name, f"{d['difference']:+.4f}", f"[{d['low']:+.4f}, {d['high']:+.4f}]",
             "better" if d["low"] > 0 else "worse" if d["high"] < 0 else "no clear difference"]
            for name, d in document["differences"].items()
            if name in ("hit@1", "hit@3", "hit@10", "ndcg@10", "mrr")])


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
    _table("domains", ["name", "plugin", "items", "users (train/valid/test)", "fingerprint",
                       "description"],
           [[d["name"], d["plugin"], d["summary"].get("items"), _users(d["summary"]),
             d["data_fingerprint"][:12], d["description"]] for d in rows])


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
           ["id", "title"], [[item.id, item.title] for item in shown])
    if len(shown) < len(found):
        print(f"the first {len(shown)} of {len(found)} items; --limit 0 lists all")


@app.command()
def show(name: str = typer.Argument(..., metavar="NAME",
                                    help="Domain, adapter (DOMAIN@vN) or composition."),
         plot: Optional[str] = typer.Option(
             None, "--plot", help="Composition: draw its per-layer integration weights to this PNG."),
         as_json: bool = JSON_OPTION) -> None:
    """Show a domain (data summary, adapters, dependents), an adapter version (base model,
    training run) or a composition (sources, parameters)."""
    from . import composer
    from .registry import as_dict

    registry = _registry()
    if composer.composition_exists(registry, name):
        document = composer.as_dict(composer.composition(registry, name))
        if plot:
            summary = composer.integration_weights(registry, name)
            _wrote(composer.plot_integration(summary, plot))
            document["integration"] = summary
        if as_json:
            _emit_json(document)
        else:
            _print_composition(document)
        return
    if plot:
        raise ValidationError(f"--plot draws a composition's integrators; {name} is not a composition")
    if "@" in name:
        from .adapters import resolve_adapter

        document = as_dict(resolve_adapter(registry, name))
        if as_json:
            _emit_json(document)
        else:
            _print_adapter(document)
        return
    document = as_dict(registry.domain(name))
    document["adapters"] = [as_dict(a) for a in registry.adapters(name)]
    document["used_by"] = registry.dependents(name)["compositions"]
    if as_json:
        _emit_json(document)
    else:
        _print_domain(document)


@app.command()
def remove(name: str = typer.Argument(..., metavar="DOMAIN", help="Domain to remove."),
           force: bool = typer.Option(
        False, "--force", help="Also remove the adapters, compositions and results using it.")) -> None:
    """Remove a domain (refused while adapters or compositions depend on it)."""
    deps = _registry().remove_domain(name, force=force)
    gone = deps["adapters"] + deps["compositions"]
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
             a["status"], a["artifact_digest"][:12]] for a in rows])


def _users(summary: dict) -> str:
    users = summary.get("users", {})
    return "/".join(str(users.get(split, 0)) for split in ("train", "valid", "test"))


def _print_domain(d: dict) -> None:
    summary = d["summary"]
    lengths = summary.get("sequence_length", {})
    console = _console()
    console.print(_bold(d["name"], f" ({d['plugin']}) from {d['data_location']}"))
    if d.get("description"):
        console.print(d["description"])
    console.print(f"items {summary.get('items')}, users train/valid/test {_users(summary)}, "
                  f"interactions {summary.get('interactions')}, sequence length "
                  f"{lengths.get('min')}-{lengths.get('max')} (mean {lengths.get('mean')})")
    console.print(f"fingerprint {d['data_fingerprint']} (data version {d.get('data_version', 1)}, "
                  f"plugin version {d.get('plugin_version') or 'unknown'})")
    for adapter in d.get("adapters", []):
        console.print(f"adapter v{adapter['version']}: {adapter['trainable_parameters']} "
                      f"trainable parameters, {adapter['status']}")
        if (adapter.get("training_config") or {}).get("run"):
            console.print("  " + _run_summary(adapter["training_config"]["run"]))
    if d.get("used_by"):
        console.print(f"used by: {', '.join(d['used_by'])}")


def _print_adapter(a: dict) -> None:
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
        console.print(f"validation {(a['metrics'] or {}).get('validation')}")
        console.print(_run_summary(training.get("run")))


def _print_composition(c: dict) -> None:
    console = _console()
    console.print(_bold(c["name"], f": {c['method']} ({c['mode']}) of "
                        f"{', '.join(s['adapter'] for s in c['sources'])} for {c['target']}"))
    parameters = c.get("parameters") or {}
    console.print(f"trainable parameters: integrators {parameters.get('integrator_parameters')}, "
                  f"head {parameters.get('head_parameters')}; one source adapter's LoRA "
                  f"{parameters.get('source_lora_parameters')} (integrators/LoRA "
                  f"{parameters.get('integrators_over_one_adapter')}, head/LoRA "
                  f"{parameters.get('head_over_one_adapter')})")
    training = c["training_config"]
    console.print(f"trained on fraction {training['training']['fraction']} of {c['target']} "
                  f"({training.get('train_users')} users) in {training.get('seconds')} s; "
                  f"validation {training.get('validation')}")
    console.print(_run_summary(training.get("run")))
    evaluation = c.get("evaluation")
    if evaluation:
        console.print("test: " + ", ".join(f"{k} {v['mean']:.4f}" for k, v in evaluation["metrics"].items()
                                          if k in ("hit@1", "hit@3", "hit@10", "ndcg@10", "mrr")))


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
    try:
        code = app(standalone_mode=False, prog_name="xreg")
    except XregError as exc:
        _debug_traceback()
        print(f"error: {exc}", file=sys.stderr)
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
        print(f"error: unexpected {type(exc).__name__}: {exc} "
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
