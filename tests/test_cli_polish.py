"""What a newcomer reads: boards that fit 80 columns (or --wide), results as tables and
text rather than Python dicts, hints instead of empty tables, a note when a history
matches nothing in the catalogue, and a run line that says which epoch it kept."""

from __future__ import annotations

import re

import pytest

from conftest import run_on_a_terminal, xreg_command

QUICK = ["--epochs", "1", "--max-users", "16", "--batch-size", "8", "--negatives", "3",
         "--valid-users", "10", "--mode", "dual", "--max-length", "64"]


def test_empty_listings_say_what_to_do(xreg):
    assert xreg("domains").stdout.strip() == ("no domains yet; register one with `xreg add-domain "
                                              "NAME --plugin P --data LOCATION` (`xreg plugins` lists "
                                              "the plugins)")
    assert xreg("adapters").stdout.strip() == "no adapters yet; train one with `xreg train-adapter DOMAIN`"
    assert xreg("compositions").stdout.strip().startswith("no compositions yet; build one with")
    assert xreg("domains", "--json").json() == []  # --json stays data


def test_item_search_without_a_match_says_so(xreg, synthetic_domains):
    result = xreg("items", "toys", "--search", "no such words")
    assert result.stdout.strip() == "no item of toys matches 'no such words'; try fewer or shorter words"


def _on_an_80_column_terminal(args: list[str], home) -> str:
    """``xreg ARGS`` with stdout on a pseudo-terminal 80 columns wide: what it showed,
    without the terminal's style codes."""
    code, shown = run_on_a_terminal(xreg_command(*args), {"XREG_HOME": str(home), "COLUMNS": "80",
                                                         "LINES": "50"}, stream="stdout", timeout=300)
    assert code == 0
    return re.sub(r"\x1b\[[0-9;]*m", "", shown).replace("\r", "")


def test_the_board_fits_80_columns_and_wide_shows_everything(xreg, synthetic_domains, xreg_home):
    assert xreg("evaluate", "toys", "--baseline", "popularity").exit_code == 0
    narrow = _on_an_80_column_terminal(["leaderboard", "toys"], xreg_home)
    assert max(len(line) for line in narrow.splitlines()) <= 80, narrow
    assert "popularity:toys" in narrow and "…" not in narrow  # nothing cut
    assert "ndcg@10" in narrow and "examples seen" not in narrow and "mrr" not in narrow
    wide = xreg("leaderboard", "toys", "--wide").stdout
    assert "examples seen (stop)" in wide and "hit@3" in wide and "mrr" in wide


@pytest.mark.slow
def test_results_and_run_line_read_as_text(xreg, synthetic_domains, tiny_base):
    trained = xreg("train-adapter", "toys", *QUICK, "--base-model", tiny_base)
    assert trained.exit_code == 0, trained.stderr
    out = trained.stdout
    assert "{'" not in out and "registered toys@v1" in out
    assert "validation, 10 users" in out and "ndcg@10" in out  # a table of metrics
    assert "1 full epochs; kept epoch 1, validated on 10 of 10 users" in out
    shown = xreg("show", "toys@v1").stdout
    assert "{'" not in shown and "validation: hit@1 " in shown

    unmatched = xreg("recommend", "toys", "--history", "zzz not an item; qqq", "--top", "3")
    assert unmatched.exit_code == 0, unmatched.stderr
    assert unmatched.stderr.strip() == ("note: no history item matched an item id or title of toys; "
                                        "scored as free text (`xreg items toys --search WORDS` finds "
                                        "titles)")
    title = xreg("items", "toys", "--limit", "1", "--json").json()[0]["title"]
    partly = xreg("recommend", "toys", "--history", f"{title}; zzz", "--top", "3")
    assert partly.stderr.strip().startswith("note: 1 of 2 history items (zzz) matched")
    matched = xreg("recommend", "toys", "--history", title, "--top", "3")
    assert matched.exit_code == 0 and matched.stderr == ""


@pytest.mark.parametrize("record, kept", [
    ({"best_epoch": 1, "epochs_completed": 0}, "kept epoch 1 (stopped part-way through it)"),
    ({"best_epoch": 2, "epochs_completed": 3}, "kept epoch 2,"),
    ({"best_epoch": None, "epochs_completed": 0}, "no epoch kept"),
])
def test_the_run_line_names_the_kept_epoch_without_contradiction(record, kept):
    from xcross_registry.cli import _run_summary

    run = {"stop_reason": "time-cap", "examples_seen": 4, "planned_examples": 32, "optimizer_steps": 1,
           "planned_steps": 8, "examples_per_second": 2.0, "wall_seconds": 3.0, "processes": 1,
           "precision": "float32", "validation_users": 0, "validation_users_planned": 4, **record}
    assert kept in _run_summary(run)
