"""Every table of named classes (baselines, split strategies, scoring modes, composition
methods) refuses a taken name, naming the class that holds it, and a nameless class."""

from __future__ import annotations

import pytest

from xcross_registry.baselines import BASELINES, Baseline, register_baseline
from xcross_registry.composition_methods import COMPOSITION_METHODS, register_composition_method
from xcross_registry.errors import ValidationError
from xcross_registry.scoring_modes import SCORING_MODES, ScoringMode, register_scoring_mode
from xcross_registry.splits import SPLIT_STRATEGIES, SplitStrategy, register_split_strategy

TABLES = [
    (BASELINES, register_baseline, Baseline, "popularity", "baseline 'popularity' is already registered (Popularity)"),
    (SPLIT_STRATEGIES, register_split_strategy, SplitStrategy, "leave-one-out",
     "split strategy 'leave-one-out' is already registered (LeaveOneOut)"),
    (SCORING_MODES, register_scoring_mode, ScoringMode, "dual", "scoring mode 'dual' is already registered (DualMode)"),
    (COMPOSITION_METHODS, register_composition_method, type(COMPOSITION_METHODS["ties"]()), "ties",
     "composition method 'ties' is already registered (TiesMethod)"),
]


@pytest.mark.parametrize("table, register, base, taken, message", TABLES)
def test_a_taken_or_missing_name_is_refused_and_the_table_is_unchanged(table, register, base, taken, message):
    before = dict(table)
    impostor = type("Impostor", (base,), {"name": taken})
    with pytest.raises(ValidationError) as raised:
        register(impostor)
    assert str(raised.value) == message
    nameless = type("Nameless", (base,), {"name": "  "})
    with pytest.raises(ValidationError, match="needs a non-empty name"):
        register(nameless)
    assert table == before
