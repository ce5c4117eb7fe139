"""The built-in ``synthetic`` plugin: determinism, options, and a learnable shared signal."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pluggy
import pytest

import xreg_synthetic
from xcross_registry import hookspecs
from xcross_registry.data import DomainType
from xcross_registry.errors import DataError


def test_defaults_are_small_and_well_formed():
    data = xreg_synthetic.load("toys")
    summary = data.summary()
    assert summary["items"] == 300
    assert summary["users"] == {"train": 700, "valid": 100, "test": 200}
    assert 5 <= summary["sequence_length"]["min"] and summary["sequence_length"]["max"] <= 10
    for seq in data.train[:50]:
        assert len(set(seq.items)) == len(seq.items)
    item = data.items[0]
    assert item.title == " ".join([item.fields["brand"], item.fields["colour"], item.fields["theme"],
                                   item.fields["kind"]])
    assert item.fields["kind"] in xreg_synthetic.NOUNS["toys"]


def test_deterministic_by_location():
    assert xreg_synthetic.load("tools?seed=3").fingerprint() == xreg_synthetic.load("tools?seed=3").fingerprint()
    assert xreg_synthetic.load("tools?seed=3").fingerprint() != xreg_synthetic.load("tools?seed=4").fingerprint()
    small = xreg_synthetic.load("kitchen?users=50&items=80&min_len=3&max_len=4")
    assert len(small.items) == 80 and len(small.train + small.valid + small.test) == 50
    assert {len(seq.items) for seq in small.train} <= {3, 4}


def test_split_shares_are_options_and_the_default_split_is_unchanged():
    assert xreg_synthetic.load("toys?users=12").summary()["users"] == {"train": 8, "valid": 1, "test": 3}
    wide = xreg_synthetic.load("tools?users=1000&test=0.6")
    assert wide.summary()["users"] == {"train": 300, "valid": 100, "test": 600}
    default = xreg_synthetic.load("tools?users=1000")
    # the same users, in the same order, only split differently
    assert [s.user for s in wide.train + wide.valid + wide.test] == \
        [s.user for s in default.train + default.valid + default.test]
    assert wide.train == default.train[:300]
    assert xreg_synthetic.load("tools?users=100&valid=0&test=0.5").summary()["users"] == {
        "train": 50, "valid": 0, "test": 50}


def test_domains_have_their_own_nouns_and_shared_attributes():
    toys, tools = xreg_synthetic.load("toys"), xreg_synthetic.load("tools")
    assert not {i.fields["kind"] for i in toys.items} & {i.fields["kind"] for i in tools.items}
    assert {i.fields["colour"] for i in toys.items} == {i.fields["colour"] for i in tools.items}


def test_same_user_has_the_same_tastes_in_every_domain():
    assert np.array_equal(xreg_synthetic.user_tastes(0, 1000)[:300], xreg_synthetic.user_tastes(0, 300))


def _agreement(data, attribute: str) -> float:
    """How often the target shares the history's most common value of ``attribute``."""
    hits = [data.items[seq.target].fields[attribute]
            == Counter(data.items[i].fields[attribute] for i in seq.history).most_common(1)[0][0]
            for seq in data.test]
    return float(np.mean(hits))


@pytest.mark.parametrize("domain", ["toys", "tools"])
def test_history_predicts_the_target(domain):
    data = xreg_synthetic.load(domain)
    # chance is 1/8 for colour and theme; the shared tastes make it several times that
    assert _agreement(data, "colour") > 0.3
    assert _agreement(data, "theme") > 0.3


@pytest.mark.parametrize("location, message", [
    ("furniture", "unknown synthetic domain 'furniture'"),
    ("toys?users=ten", "users must be a non-negative integer"),
    ("toys?users=5", "users must be between 10"),
    ("toys?items=20", "items must be between 60"),
    ("toys?min_len=8&max_len=6", "need 2 <= min_len <= max_len"),
    ("toys?items=60&max_len=30", "max_len must be at most items/3"),
    ("toys?size=3", "unknown option 'size'"),
    ("toys?seed=1&seed=1", "given twice"),
    ("toys?seed", "options must look like"),
    ("toys?test=1.5", "option test must be a fraction in"),
    ("toys?valid=0.3&test=0.7", "valid \\+ test must leave at least 10% of users to train on"),
])
def test_bad_locations(location, message):
    with pytest.raises(DataError, match=message):
        xreg_synthetic.load(location)


def test_registers_through_pluggy():
    manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    manager.add_hookspecs(hookspecs)
    manager.register(xreg_synthetic)
    registered: list[DomainType] = []
    manager.hook.register_domains(register=registered.append)
    (domain,) = registered
    assert domain.name == "synthetic" and domain.default_template.key == "synthetic@1"
