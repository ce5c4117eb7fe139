"""The whole story on the embedded defaults, offline: ``xreg demo``.

Three synthetic domains (toys and sports as sources, tools as the new target with
little data) on the bundled all-MiniLM-L6-v2: train the two source adapters, compose
them with X-Cross on a quarter of the target's users, train the baselines on the same
quarter (a target LoRA, a fixed linear merge of the sources) plus each source
zero-shot and popularity, evaluate everything on the same stored candidates, and
return the leaderboard.  Sized to finish in minutes on a 2-core CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import settings as xreg_settings
from .errors import ValidationError
from .registry import Registry

SOURCES = ("toys", "sports")
TARGET = "tools"


@dataclass
class DemoSettings:
    """Sizes of the demo; the defaults keep it to a few minutes of CPU."""

    users: int = 500
    items: int = 200
    fraction: float = 0.25
    mode: str = "dual"
    epochs: int = 2
    prefixes_per_user: int = 2
    seed: int = 0
    base_model: str | None = None


def demo_home(home: str | Path | None = None) -> Path:
    """The demo's registry folder: ``home`` when it is new or empty, else (``None``) the
    next free ``$XREG_HOME/demo-N``, so every run starts from nothing."""
    if home is None:
        number = 1
        while (xreg_settings.home() / f"demo-{number}").exists():
            number += 1
        return xreg_settings.home() / f"demo-{number}"
    folder = Path(home)
    if folder.exists() and any(folder.iterdir()):
        raise ValidationError(f"demo folder {folder} is not empty")
    return folder


def run_demo(home: Path, settings: DemoSettings | None = None,
             say: Callable[[str], None] = print) -> Registry:
    """Run the demo into a fresh registry at ``home``; return that registry."""
    from . import composer, evaluation
    from .adapters import train_adapter
    from .scorer import ScorerConfig
    from .training import TrainingConfig
    from .xcross import XCrossConfig

    settings = settings or DemoSettings()
    home = Path(home)
    registry = Registry(url=f"sqlite:///{home / 'registry.db'}", artifacts=home / "artifacts")
    scorer = ScorerConfig(mode=settings.mode, max_length=64)

    def training(fraction: float = 1.0, lr: float = 1e-4) -> TrainingConfig:
        return TrainingConfig(epochs=settings.epochs, fraction=fraction, lr=lr, batch_size=16,
                              negatives=15, prefixes_per_user=settings.prefixes_per_user,
                              seed=settings.seed, valid_users=60)

    for domain in (*SOURCES, TARGET):
        location = f"{domain}?seed={settings.seed}&users={settings.users}&items={settings.items}"
        registry.add_domain(domain, "synthetic", location, description="demo domain")
        say(f"registered synthetic domain {domain} ({location})")
    for domain in SOURCES:
        version = train_adapter(registry, domain, scorer_config=scorer, training_config=training(),
                                base_model=settings.base_model)
        say(f"trained source adapter {version.label}: {version.metrics.get('validation')}")
    say(f"composing {' + '.join(SOURCES)} -> {TARGET} on {settings.fraction:.0%} of its users")
    composer.compose(registry, list(SOURCES), TARGET, name=f"{TARGET}-x", settings=XCrossConfig(),
                     training_config=training(settings.fraction, lr=1e-3))
    composer.compose(registry, list(SOURCES), TARGET, name=f"{TARGET}-merge", method="linear-merge",
                     training_config=training(settings.fraction))
    target_lora = train_adapter(registry, TARGET, scorer_config=scorer,
                                training_config=training(settings.fraction),
                                base_model=settings.base_model)
    say(f"trained baselines: {TARGET}-merge (linear merge, head only) and {target_lora.label} "
        f"(target LoRA on the same {settings.fraction:.0%})")
    for name in (f"{TARGET}-x", f"{TARGET}-merge"):
        evaluation.evaluate_composition(registry, name)
    evaluation.evaluate_adapter(registry, target_lora.label)
    for domain in SOURCES:
        evaluation.evaluate_adapter(registry, domain, domain=TARGET)
    evaluation.evaluate_popularity(registry, TARGET)
    say("evaluated everything on the same stored candidates of the tools test split")
    return registry
