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

    console = Console()
    if not console.is_terminal:
        console.width = 200  # piped output: keep table cells whole instead of cutting them
    return console


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


# Training options, shared by `add-domain --train` and `train-adapter`.
EPOCHS = typer.Option(2, "--epochs", min=1)
LR = typer.Option(1e-4, "--lr", help="Learning rate of the LoRA weights.")
HEAD_LR = typer.Option(1e-2, "--head-lr", help="Learning rate of the scorer head.")
MAX_LENGTH = typer.Option(128, "--max-length", min=8, help="Token budget of a prompt.")
VALID_USERS = typer.Option(200, "--valid-users", min=0, help="Validation users per epoch.")
PREFIXES = typer.Option(0, "--prefixes-per-user", min=0,
                        help="Training examples per user and epoch (0: every prefix).")
MAX_MINUTES = typer.Option(None, "--max-minutes", help="Wall-clock stop; the best epoch is kept.")
BATCH_SIZE = typer.Option(16, "--batch-size", min=1)
NEGATIVES = typer.Option(15, "--negatives", min=1, help="Sampled negatives per training example.")
MAX_USERS = typer.Option(None, "--max-users", min=1, help="Cap on training users.")
FRACTION = typer.Option(1.0, "--fraction", help="Share of the training users to use.")
SEED = typer.Option(0, "--seed")
MODE = typer.Option("cross", "--mode", help="cross (prompt with candidate) or dual (two towers).")
BASE_MODEL = typer.Option(None, "--base-model", help="Transformers model name or path "
                          "(default: the bundled all-MiniLM-L6-v2).")
BF16 = typer.Option(False, "--bf16", help="bf16 autocast (CUDA, or a CPU with bf16 instructions).")
IN_BATCH = typer.Option(False, "--in-batch", help="The batch's other positives are negatives too "
                        "(free in dual mode; B more prompts per example in cross mode).")


def _train(registry, name: str, *, mode: str, max_length: int, base_model: str | None,
           head_only: bool, quiet: bool, **training_options):
    from .adapters import train_adapter
    from .scorer import ScorerConfig
    from .training import TrainingConfig

    training = TrainingConfig(**training_options)
    with _training_progress(quiet) as progress:
        return train_adapter(registry, name,
                             scorer_config=ScorerConfig(mode=mode, max_length=max_length),
                             training_config=training, base_model=base_model,
                             head_only=head_only, progress=progress)


@contextlib.contextmanager
def _training_progress(quiet: bool):
    """A rich progress bar fed by the trainer's callback, on stderr so --json stays clean.

    The bar appears with the first report, so a run that fails its checks prints
    nothing but its one error line."""
    if quiet:
        yield None
        return
    from rich.console import Console
    from rich.progress import (BarColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    columns = [TextColumn("epoch {task.fields[epoch]}"), BarColumn(),
               TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[rate]:.1f} seq/s"),
               TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[valid]}")]
    bar = Progress(*columns, console=Console(stderr=True))
    task = None

    def update(report) -> None:
        nonlocal task
        if task is None:
            bar.start()
            task = bar.add_task("train", total=None, epoch="-", loss=0.0, rate=0.0, valid="")
        fields = {"epoch": f"{report.epoch}/{report.epochs}", "loss": report.loss,
                  "rate": report.sequences_per_second}
        if report.phase == "valid" and report.metrics:
            fields["valid"] = " ".join(f"{k} {v:.3f}" for k, v in report.metrics.items())
        bar.update(task, completed=report.step, total=report.steps, **fields)

    try:
        yield update
    finally:
        bar.stop()


@app.command("add-domain")
def add_domain(
    name: str,
    plugin: str = typer.Option(..., "--plugin", help="Domain type (plugin) that reads the data."),
    data: str = typer.Option(..., "--data", help="Where the data is (plugin-specific)."),
    description: str = typer.Option("", "--description"),
    adapter: Optional[str] = typer.Option(None, "--adapter", help="Import this PEFT LoRA folder as v1."),
    train: bool = typer.Option(False, "--train", help="Train a LoRA adapter right away."),
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
    if adapter is not None:
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
    name: str,
    epochs: int = EPOCHS, lr: float = LR, head_lr: float = HEAD_LR, batch_size: int = BATCH_SIZE,
    negatives: int = NEGATIVES, max_users: Optional[int] = MAX_USERS, fraction: float = FRACTION,
    seed: int = SEED, valid_users: int = VALID_USERS, max_minutes: Optional[float] = MAX_MINUTES,
    prefixes_per_user: int = PREFIXES,
    mode: str = MODE, max_length: int = MAX_LENGTH, base_model: Optional[str] = BASE_MODEL,
    bf16: bool = BF16, in_batch: bool = IN_BATCH,
    head_only: bool = typer.Option(False, "--head-only", help="Baseline: train only the head "
                                   "on the frozen base model."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Train a LoRA adapter on a domain and register it as the next version."""
    from .registry import as_dict

    version = _train(_registry(), name, mode=mode, max_length=max_length, base_model=base_model,
                     head_only=head_only, quiet=as_json, epochs=epochs, lr=lr, head_lr=head_lr,
                     batch_size=batch_size, negatives=negatives, max_users=max_users,
                     fraction=fraction, seed=seed, valid_users=valid_users,
                     max_minutes=max_minutes, prefixes_per_user=prefixes_per_user, bf16=bf16,
                     in_batch_negatives=in_batch)
    if as_json:
        _emit_json(as_dict(version))
    else:
        print(f"registered {version.label}: {version.trainable_parameters} trainable parameters, "
              f"validation {version.metrics.get('validation')}")


@app.command()
def evaluate(
    name: str = typer.Argument(..., help="Composition, adapter (DOMAIN or DOMAIN@vN), or a "
                               "domain with --baseline."),
    protocol: str = typer.Option("sampled", "--protocol", help="sampled, sampled-pop or full."),
    split: str = typer.Option("test", "--split", help="test or valid."),
    max_users: Optional[int] = typer.Option(None, "--max-users", min=1),
    seed: int = typer.Option(0, "--seed", help="Candidate and bootstrap seed."),
    domain: Optional[str] = typer.Option(None, "--domain", help="Evaluate on another domain (zero-shot)."),
    baseline: Optional[str] = typer.Option(None, "--baseline", help="popularity or head-only."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Rank the stored candidates, print Hit@1/3/10, NDCG@10 and MRR, store the result."""
    from . import evaluation

    registry = _registry()
    options = {"protocol": protocol, "split": split, "max_users": max_users, "seed": seed}
    if baseline == "popularity":
        result = evaluation.evaluate_popularity(registry, domain or name, **options)
    elif baseline == "head-only":
        from .adapters import latest_head_only

        label = latest_head_only(registry, name).label
        result = evaluation.evaluate_adapter(registry, label, domain=domain, **options)
    elif baseline is None and domain is None:
        result = evaluation.evaluate_named(registry, name, **options)
    elif baseline is None:
        result = evaluation.evaluate_adapter(registry, name, domain=domain, **options)
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
    beta: float = typer.Option(1.0, "--beta"), gamma: float = typer.Option(1.0, "--gamma"),
    pooled: bool = typer.Option(False, "--pooled", help="Integration scalars per sequence, not per token."),
    epochs: int = EPOCHS, lr: float = typer.Option(1e-3, "--lr", help="Learning rate of the integrators."),
    head_lr: float = HEAD_LR, batch_size: int = BATCH_SIZE, negatives: int = NEGATIVES,
    max_users: Optional[int] = MAX_USERS, fraction: float = FRACTION, seed: int = SEED,
    valid_users: int = VALID_USERS, max_minutes: Optional[float] = MAX_MINUTES,
    prefixes_per_user: int = PREFIXES, bf16: bool = BF16, in_batch: bool = IN_BATCH,
    evaluate_after: bool = typer.Option(True, "--evaluate/--no-evaluate",
                                        help="Evaluate on the target test split afterwards."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Train an X-Cross composition of source adapters for a target domain and register it."""
    from . import composer, evaluation
    from .training import TrainingConfig
    from .xcross import XCrossConfig

    registry = _registry()
    training = TrainingConfig(epochs=epochs, lr=lr, head_lr=head_lr, batch_size=batch_size,
                              negatives=negatives, max_users=max_users, fraction=fraction,
                              seed=seed, valid_users=valid_users, max_minutes=max_minutes,
                              prefixes_per_user=prefixes_per_user, bf16=bf16,
                              in_batch_negatives=in_batch)
    with _training_progress(as_json) as progress:
        row = composer.compose(registry, [s for s in sources.split(",") if s.strip()], target,
                               name=name, method=method, mode=mode, training_config=training,
                               xcross_config=XCrossConfig(beta=beta, gamma=gamma, per_token=not pooled),
                               progress=progress)
    document = composer.as_dict(row)
    if evaluate_after:
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
    name: str = typer.Argument(..., help="Composition or adapter."),
    history: str = typer.Option(..., "--history", help="Item titles (or ids), oldest first, ';'-separated."),
    candidates: Optional[str] = typer.Option(None, "--candidates", help="File of candidate titles or ids, one a line."),
    top: int = typer.Option(10, "--top", min=1),
    rerank: Optional[str] = typer.Option(None, "--rerank", help="Cross model that re-ranks the retrieved top."),
    rerank_depth: int = typer.Option(50, "--rerank-depth", min=1),
    as_json: bool = JSON_OPTION,
) -> None:
    """Rank candidates for a history, or the whole catalogue (dual retrieval + optional re-rank)."""
    from . import serving

    registry = _registry()
    model = serving.load_model(registry, name)
    reranker = serving.load_model(registry, rerank, domain=model.domain) if rerank else None
    ranked = serving.recommend(
        model, serving.parse_history(history), top=top, reranker=reranker, rerank_depth=rerank_depth,
        candidates=serving.read_candidates(candidates) if candidates else None)
    if as_json:
        _emit_json([r.as_dict() for r in ranked])
        return
    _table(f"{name} on {model.domain}", ["rank", "item", "title", "score"],
           [[r.rank, r.item_id, r.title, f"{r.score:.4f}"] for r in ranked])


@app.command()
def leaderboard(
    domain: str,
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
        boards_module.plot(boards, plot)
    if plot_fraction and boards:
        boards_module.plot_efficiency(boards, plot_fraction)
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
               ["subject", "kind", "trainable", "fraction", *boards_module.COLUMNS],
               [[r["subject"], r["kind"], r["trainable_parameters"], r["fraction"],
                 *(f"{r['metrics'][m]['mean']:.4f}" for m in boards_module.COLUMNS)]
                for r in board.rows])


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
    domain: str, first: str, second: str,
    protocol: str = typer.Option("sampled", "--protocol"),
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
def export(name: str, directory: str) -> None:
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
    _table("domains", ["name", "plugin", "items", "users (train/valid/test)", "fingerprint"],
           [[d["name"], d["plugin"], d["summary"].get("items"), _users(d["summary"]),
             d["data_fingerprint"][:12]] for d in rows])


@app.command()
def show(name: str, plot: Optional[str] = typer.Option(
             None, "--plot", help="Composition: draw its per-layer integration weights to this PNG."),
         as_json: bool = JSON_OPTION) -> None:
    """Show a domain (data summary, adapters, dependents) or a composition (sources, parameters)."""
    from . import composer
    from .registry import as_dict

    registry = _registry()
    if composer.composition_exists(registry, name):
        document = composer.as_dict(composer.composition(registry, name))
        if plot:
            summary = composer.integration_weights(registry, name)
            composer.plot_integration(summary, plot)
            document["integration"] = summary
        if as_json:
            _emit_json(document)
        else:
            _print_composition(document)
        return
    if plot:
        raise ValidationError(f"--plot draws a composition's integrators; {name} is a domain")
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


def _print_composition(c: dict) -> None:
    console = _console()
    console.print(f"[bold]{c['name']}[/bold]: {c['method']} ({c['mode']}) of "
                  f"{', '.join(s['adapter'] for s in c['sources'])} for {c['target']}")
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
    evaluation = c.get("evaluation")
    if evaluation:
        console.print("test: " + ", ".join(f"{k} {v['mean']:.4f}" for k, v in evaluation["metrics"].items()
                                          if k in ("hit@1", "hit@3", "hit@10", "ndcg@10", "mrr")))


def main() -> None:
    """Console-script entry point: run the app, turning our errors into one line."""
    # Library progress bars and warnings would break the one-line error contract.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
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
