"""Split strategies (``user``, ``leave-one-out``, ``temporal``) on small synthetic domains:
which user and which items land where, fractions under leave-one-out, timestamps
required for temporal, and the default leaving today's fingerprints and candidate sets
exactly as they were."""

from __future__ import annotations

import json

import numpy as np
import pytest

from xcross_registry.candidates import sample_candidates
from xcross_registry.data import DomainData, DomainType, Item, UserSequence
from xcross_registry.errors import DataError, ValidationError
from xcross_registry.registry import Registry, load_with
from xcross_registry.splits import SPLIT_STRATEGIES, apply_split, parse_split
from xcross_registry.templates import PromptTemplate
from xcross_registry.training import TrainingConfig, select_users

ITEMS = [Item(f"i{k}", f"thing {k}") for k in range(10)]
SYNTHETIC = "tools?users=120&items=60&max_len=8"
# What the code before split strategies gave for SYNTHETIC (fingerprint; sha256 of the
# stored test candidate sets, seed 0): registering with the default must not move them.
SYNTHETIC_FINGERPRINT = "a9e4b80f423e03aa42b0f2382a5c71a87a2833548003677ab67bf8eb88a38fcb"
SYNTHETIC_CANDIDATES = {
    "sampled": "6d3dad9f64a09a3fca705db4285537d8e5cfaea89c9a5e47651033667c5e054c",
    "sampled-pop": "128440db19a7ad4e053be08155003f0dc2cb031b7f2426c6c9a235c1d16468df",
    "full": "147ec0695d85537e1c96ea1317dacdd6872bc14b16a9b36d1cff4d6910e27493",
}


def _domain(times: bool = False) -> DomainData:
    """Four users in a user-disjoint split: the strategies must pool them back."""
    def seq(user, items, stamps):
        return UserSequence(user, tuple(items), tuple(stamps) if times else None)

    return DomainData(items=ITEMS,
                      train=[seq("b", [1, 2, 3, 4, 5], [10, 20, 30, 40, 50]),
                             seq("d", [6, 7], [15, 85])],
                      valid=[seq("c", [2, 3, 4], [60, 70, 80])],
                      test=[seq("a", [0, 1, 2, 3], [5, 55, 75, 95])])


def _by_user(sequences):
    return {seq.user: seq.items for seq in sequences}


def test_the_table_lists_three_strategies_and_checks_options():
    assert list(SPLIT_STRATEGIES) == ["user", "leave-one-out", "temporal"]
    assert parse_split("temporal").text == "temporal?test=0.9&valid=0.8"
    assert parse_split("temporal?valid=0.50").text == "temporal?test=0.9&valid=0.5"
    for text, message in [("loo", "unknown split strategy 'loo'; expected one of user, leave-one-out, temporal"),
                          ("temporal?test=1", "option test must be a quantile strictly between 0 and 1"),
                          ("temporal?valid=0.9&test=0.8", "the valid cut (0.9) must come before the test cut (0.8)"),
                          ("leave-one-out?k=1", "unknown option 'k' (known: none)")]:
        with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)")):
            parse_split(text)


def test_leave_one_out_by_hand():
    data = apply_split(_domain(), "leave-one-out", "toy")
    # users pooled from every split and ordered by id; last item test, one before valid
    assert _by_user(data.test) == {"a": (0, 1, 2, 3), "b": (1, 2, 3, 4, 5), "c": (2, 3, 4)}
    assert _by_user(data.valid) == {"a": (0, 1, 2), "b": (1, 2, 3, 4), "c": (2, 3)}
    # c keeps one training item (nothing to learn from); d (2 items) is training only
    assert _by_user(data.train) == {"a": (0, 1), "b": (1, 2, 3), "d": (6, 7)}
    assert [seq.user for seq in data.test] == ["a", "b", "c"]
    assert data.split_strategy == "leave-one-out"
    assert data.fingerprint() != _domain().fingerprint()
    assert data.summary()["interactions"] == 4 + 5 + 3 + 2  # each user counted once


def test_leave_one_out_is_the_same_whatever_user_split_the_loader_made():
    original = _domain()
    reshuffled = DomainData(items=ITEMS, train=original.test + original.valid,
                            valid=[], test=original.train)
    assert (apply_split(original, "leave-one-out", "toy").fingerprint()
            == apply_split(reshuffled, "leave-one-out", "toy").fingerprint())


def test_fraction_under_leave_one_out_selects_training_users_and_everybody_is_tested():
    users = [UserSequence(f"u{k:02d}", tuple((k + j) % 10 for j in range(5))) for k in range(20)]
    data = apply_split(DomainData(items=ITEMS, train=users[:14], valid=users[14:16], test=users[16:]),
                       "leave-one-out", "toy")
    chosen = select_users(data.train, TrainingConfig(fraction=0.25, seed=1))
    assert len(chosen) == 5 and len(data.test) == 20
    assert {seq.user for seq in chosen} < {seq.user for seq in data.test}
    # a training sequence never holds the user's validation or test target
    for seq in chosen:
        assert seq.items == _by_user(data.test)[seq.user][:-2]


def test_candidates_under_leave_one_out_never_draw_the_users_items():
    users = [UserSequence(f"u{k:02d}", tuple((3 * k + j) % 10 for j in range(4))) for k in range(8)]
    data = apply_split(DomainData(items=ITEMS, train=users[:6], valid=[], test=users[6:]),
                       "leave-one-out", "toy")
    drawn = sample_candidates(data, "test", "sampled", seed=3, negatives=5)
    for row, user in zip(drawn.candidates, drawn.users):
        seq = data.test[int(user)]
        assert row[0] == seq.target and not set(row[1:]) & set(seq.items)


def test_temporal_by_hand():
    # times 5 10 15 20 30 40 50 55 60 70 75 80 85 95: the 0.5 quantile (lower: position
    # int(0.5 * 13) = 6) is 50 and the 0.8 quantile (position 10) 75
    data = apply_split(_domain(times=True), "temporal?valid=0.5&test=0.8", "toy")
    assert _by_user(data.train) == {"b": (1, 2, 3, 4)}  # a, d have one item before 50
    # the first interaction in [50, 75) is the validation target, after what came before 50
    assert _by_user(data.valid) == {"a": (0, 1), "b": (1, 2, 3, 4, 5)}
    # the first interaction at or after 75 is the test target, after everything before 75
    assert _by_user(data.test) == {"a": (0, 1, 2), "c": (2, 3, 4), "d": (6, 7)}
    assert data.test[0].times == (5, 55, 75)
    assert data.split_strategy == "temporal?test=0.8&valid=0.5"


def test_temporal_needs_timestamps():
    with pytest.raises(DataError, match="split temporal needs timestamps, but plugin 'toy' gave none "
                                        r"\(user 'b' has no times\)"):
        apply_split(_domain(), "temporal", "toy")


def test_bad_timestamps_are_refused_by_the_contract():
    template = [PromptTemplate("p")]
    backwards = _domain(times=True)
    backwards.test = [UserSequence("a", (0, 1, 2), (5, 4, 6))]
    with pytest.raises(DataError, match=r"user 'a': timestamps go back in time \(5 then 4\)"):
        load_with(DomainType("toy", lambda location: backwards, template), "here")
    short = _domain(times=True)
    short.test = [UserSequence("a", (0, 1, 2), (5, 6))]
    with pytest.raises(DataError, match="times must be a tuple with one timestamp per item"):
        load_with(DomainType("toy", lambda location: short, template), "here")


# ---------------------------------------------------------------- through the registry

def test_default_registration_keeps_fingerprint_and_candidate_sets(xreg_home):
    registry = Registry()
    row = registry.add_domain("tools", "synthetic", SYNTHETIC)
    assert (row.split_strategy, row.data_fingerprint) == ("user", SYNTHETIC_FINGERPRINT)
    for protocol, digest in SYNTHETIC_CANDIDATES.items():
        assert registry.candidate_set("tools", "test", protocol, 0)[1] == digest


def test_add_domain_with_leave_one_out_stores_it_and_evaluates(xreg):
    result = xreg("add-domain", "loo", "--plugin", "synthetic", "--data", SYNTHETIC,
                  "--split", "leave-one-out", "--json")
    assert result.exit_code == 0, result.stderr
    document = result.json()
    assert document["split"] == "leave-one-out"
    assert document["data_fingerprint"] != SYNTHETIC_FINGERPRINT
    assert document["summary"]["users"] == {"train": 120, "valid": 120, "test": 120}
    shown = xreg("show", "loo")
    assert "split leave-one-out" in shown.stdout
    evaluated = xreg("evaluate", "popularity:loo", "--json")
    assert evaluated.exit_code == 0, evaluated.stderr
    assert evaluated.json()["users"] == 120
    refused = xreg("add-domain", "loo", "--plugin", "synthetic", "--data", SYNTHETIC, "--refresh",
                   "--split", "user")
    assert refused.exit_code == 1
    assert refused.stderr.strip() == ("error: domain 'loo' is split by 'leave-one-out', not 'user'; "
                                      "a refresh keeps the split strategy (register the other split "
                                      "under a new name)")


@pytest.mark.parametrize("split, message", [
    ("temporal", "error: split temporal needs timestamps, but plugin 'synthetic' gave none"),
    ("by-week", "error: unknown split strategy 'by-week'; expected one of user, leave-one-out, temporal"),
])
def test_bad_split_is_one_line_and_registers_nothing(xreg, split, message):
    result = xreg("add-domain", "t", "--plugin", "synthetic", "--data", SYNTHETIC, "--split", split)
    assert result.exit_code == 1
    assert result.stderr.startswith(message) and result.stderr.count("\n") == 1
    assert json.loads(xreg("domains", "--json").stdout) == []


def test_amazon_raw_download_offers_temporal(xreg, tmp_path):
    from test_amazon_plugin import _write_raw

    folder = _write_raw(tmp_path / "raw")
    result = xreg("add-domain", "toys-t", "--plugin", "amazon", "--data", str(folder),
                  "--split", "temporal", "--json")
    assert result.exit_code == 0, result.stderr
    document = result.json()
    assert document["split"] == "temporal?test=0.9&valid=0.8"
    assert document["summary"]["users"]["test"] > 0
    data = Registry().domain_data("toys-t")
    for seq in data.test:
        assert seq.times is not None and np.all(np.diff(seq.times) >= 0)


@pytest.mark.realdata
def test_the_shared_amazon_domains_keep_their_fingerprints_and_candidates():
    """Registered domains must keep their data and candidates when the code changes: the
    default (user) split adds nothing to the fingerprint.  The values are those of titles
    HTML-decoded at load (issue 24); before that change the split strategies were checked
    to reproduce the issue-22 study registry's values (Tools f8efb51a14bf)."""
    import hashlib

    from conftest import require_shared_data

    import xreg_amazon

    expected = {"Toys": "72af1d1e9cabdf5b600e9d7e5d7bbd26209765a6e036154d29b2f00af5c649ee",
                "Sports": "aaefdf13f1fb99b8d2951ae2993d1fd2f62a8e6f6eb15e07506a40dfef0ead9e",
                "Tools": "4a2fd5c16511d4fdfa49eb85a2d359b9ae86432e81518fcdb2fd3d4872d087e8"}
    loaded = {domain: load_with(DomainType("amazon", xreg_amazon.load, [xreg_amazon.TEMPLATE]),
                                str(require_shared_data(domain))) for domain in expected}
    assert {domain: data.fingerprint() for domain, data in loaded.items()} == expected
    candidates = {"sampled": "c4aadab112beecb7354ae392b83bf67e8700c0828a9923dae8f8eaf644960be6",
                  "sampled-pop": "e7dc1b904e9ad1f964646ba145347a40a4053a258d82067d1dc91c01554ce916",
                  "full": "7f6e266c5dcdb4a94e6be8ce651db95bcb40f79c4799010f633ba1203ee46d6a"}
    for protocol, digest in candidates.items():  # Tools'
        drawn = sample_candidates(loaded["Tools"], "test", protocol, seed=0)
        assert hashlib.sha256(drawn.to_bytes()).hexdigest() == digest
