"""`xreg items`: a domain's item ids and titles, found to write a --history with."""

from __future__ import annotations

import pytest

from xcross_registry.errors import NotFoundError
from xcross_registry.registry import Registry


@pytest.fixture
def toys(xreg, tiny_plugin):
    """The tinyjson domain: 40 items, "red ball" ... "gadget 33"."""
    assert xreg("add-domain", "toys", "--plugin", "tinyjson", "--data", str(tiny_plugin)).exit_code == 0
    return Registry()


def test_find_items_matches_every_word_in_id_or_title(toys):
    assert [i.title for i in toys.find_items("toys", "ball")] == ["red ball", "blue ball"]
    assert [i.title for i in toys.find_items("toys", "KITE green")] == ["green kite"]
    assert [i.id for i in toys.find_items("toys", "i3")][:2] == ["i3", "i30"]  # ids match too
    assert toys.find_items("toys", "ball kite") == []
    assert len(toys.find_items("toys")) == len(toys.find_items("toys", "  ")) == 40
    with pytest.raises(NotFoundError, match="unknown domain 'nope'"):
        toys.find_items("nope", "ball")


def test_items_json_lists_ids_and_titles(xreg, toys):
    result = xreg("items", "toys", "--search", "ball", "--json")
    assert result.exit_code == 0, result.stderr
    assert result.json() == [{"id": "i0", "title": "red ball"}, {"id": "i1", "title": "blue ball"}]
    limited = xreg("items", "toys", "--limit", "3", "--json").json()
    assert [item["id"] for item in limited] == ["i0", "i1", "i2"]
    assert len(xreg("items", "toys", "--limit", "0", "--json").json()) == 40


def test_items_table_says_when_it_is_cut(xreg, toys):
    result = xreg("items", "toys", "--search", "gadget", "--limit", "5")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "the first 5 of 34 items; --limit 0 lists all"
    assert "gadget 4" in result.stdout and "gadget 5" not in result.stdout
    whole = xreg("items", "toys", "--search", "kite")
    assert "the first" not in whole.stdout and "yellow kite" in whole.stdout


def test_items_of_an_unknown_domain_is_one_error_line(xreg, toys):
    result = xreg("items", "nope")
    assert result.exit_code == 1
    assert result.stderr == "error: unknown domain 'nope'\n"


def test_found_ids_and_titles_are_what_recommend_matches(toys):
    """What `items` prints is what --history accepts: the serving layer maps both back."""
    from xcross_registry.data import match_items

    found = toys.find_items("toys", "kite")
    assert match_items(toys.domain_data("toys"), [found[0].title.upper(), found[1].id]) == found


def test_a_title_prefix_needs_enough_words_to_stand_for_a_longer_text(toys):
    """A cut catalogue title matches a longer text by its first words (tests/test_server.py
    shows it on 4-word titles), but a 2-word title such as "red ball" does not capture
    every text that starts with it."""
    from xcross_registry.data import TITLE_PREFIX_MIN_WORDS, match_items

    data = toys.domain_data("toys")
    assert TITLE_PREFIX_MIN_WORDS == 4
    assert [item.id for item in match_items(data, ["red ball for the garden", "Red Ball"])] == ["", "i0"]
