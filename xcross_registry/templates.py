"""Prompt templates: how (history, candidate) becomes text for the language model.

A template is named and versioned (``amazon@1``) so a trained adapter records exactly
which wording it learned.  When a tokenizer and a length budget are given, the
history is cut from the oldest end until the prompt fits; the candidate is never cut,
because the score is about the candidate.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:  # pragma: no cover
    from .data import Item


@dataclass(frozen=True)
class PromptTemplate:
    """Text layout of a prompt.

    ``item`` formats one item (fields: ``title`` and the item's extra fields),
    ``cross`` formats a (history, candidate) prompt, ``query`` a history-only prompt
    (the dual scorer's history side) and ``document`` the dual scorer's item side.
    """

    name: str
    version: int = 1
    item: str = "{title}"
    separator: str = "; "
    cross: str = "History: {history}. Candidate: {candidate}"
    query: str = "History: {history}"
    document: str = "{candidate}"
    description: str = ""

    @property
    def key(self) -> str:
        return f"{self.name}@{self.version}"

    def item_text(self, item: "Item") -> str:
        values = {**item.fields, "title": item.title}
        return self.item.format_map(_Blank(values))

    def render(self, history: Sequence["Item"], candidate: "Item", tokenizer: Any = None,
               max_length: int | None = None) -> str:
        """The cross prompt for ``candidate`` after ``history`` (oldest first)."""
        return self.render_with_span(history, candidate, tokenizer, max_length)[0]

    def render_with_span(self, history: Sequence["Item"], candidate: "Item", tokenizer: Any = None,
                         max_length: int | None = None) -> tuple[str, tuple[int, int]]:
        """The cross prompt and the character span of the candidate inside it, so a
        scorer can pool the candidate's tokens apart from the history's."""
        candidate_text = self.item_text(candidate)
        joined = self._fit(self.cross, history, candidate_text, tokenizer, max_length)
        before, after = self.cross.split("{candidate}", 1)
        prefix = before.format(history=joined)
        return prefix + candidate_text + after.format(history=joined), (
            len(prefix), len(prefix) + len(candidate_text))

    def render_query(self, history: Sequence["Item"], tokenizer: Any = None,
                     max_length: int | None = None) -> str:
        """The history-only prompt of the dual scorer."""
        joined = self._fit(self.query, history, "", tokenizer, max_length)
        return self.query.format(history=joined, candidate="")

    def render_document(self, item: "Item") -> str:
        return self.document.format(candidate=self.item_text(item))

    def _fit(self, layout: str, history: Sequence["Item"], candidate: str, tokenizer: Any,
             max_length: int | None) -> str:
        """The joined history: the most recent items whose prompt fits ``max_length``
        tokens (all of them without a tokenizer)."""
        parts = [self.item_text(item) for item in history]

        def joined(keep: int) -> str:
            return self.separator.join(parts[len(parts) - keep:] if keep else [])

        if tokenizer is None or max_length is None:
            return joined(len(parts))

        def length(keep: int) -> int:
            text = layout.format(history=joined(keep), candidate=candidate)
            return len(tokenizer(text, add_special_tokens=True)["input_ids"])

        if length(len(parts)) <= max_length:
            return joined(len(parts))
        # Binary search for the most recent items that fit: length grows with `keep`.
        low, high = 0, len(parts)
        while low < high:
            middle = (low + high + 1) // 2
            if length(middle) <= max_length:
                low = middle
            else:
                high = middle - 1
        return joined(low)


# The fields each prompt part may use; ``item`` may use any name (``title`` and the
# item's own fields; a field an item lacks renders empty).
PART_FIELDS: dict[str, frozenset[str] | None] = {
    "item": None,
    "cross": frozenset({"history", "candidate"}),
    "query": frozenset({"history", "candidate"}),
    "document": frozenset({"candidate"}),
}


def template_problem(template: PromptTemplate) -> str | None:
    """The first rule ``template`` breaks, as ``part 'P' (TEXT): RULE``, or ``None``.

    Rules: name a non-empty string and version a positive integer; every part a string;
    each formatted part a valid format string whose fields are plain names allowed for
    that part (:data:`PART_FIELDS`); ``cross`` holds ``{candidate}`` exactly once, written
    as is (a scorer finds the candidate's span by that text)."""
    if not isinstance(template.name, str) or not template.name.strip():
        return f"name {template.name!r}: must be a non-empty string"
    if type(template.version) is not int or template.version < 1:
        return f"version {template.version!r}: must be a positive integer"
    for part in ("item", "separator", "cross", "query", "document"):
        if not isinstance(getattr(template, part), str):
            return f"part {part!r}: must be a string, not {type(getattr(template, part)).__name__}"
    for part, allowed in PART_FIELDS.items():
        text = getattr(template, part)
        where = f"part {part!r} ({text!r})"
        try:
            fields = [field for _, field, _, _ in string.Formatter().parse(text) if field is not None]
        except ValueError as error:
            return (f"{where}: not a valid format string ({error}); write a field as {{name}} "
                    "and a literal brace as {{ or }}")
        for field in fields:
            if not field.isidentifier():
                return f"{where}: field {{{field}}} is not a plain name such as {{title}}"
            if allowed is not None and field not in allowed:
                names = " and ".join(f"{{{name}}}" for name in sorted(allowed))
                return f"{where}: unknown field {{{field}}}; this part may use only {names}"
    if template.cross.count("{candidate}") != 1 or \
            sum(field == "candidate" for _, field, _, _ in string.Formatter().parse(template.cross)) != 1:
        return (f"part 'cross' ({template.cross!r}): must contain {{candidate}} exactly once, "
                "written as is (the item being scored)")
    return None


class _Blank(dict):
    """Leaves a field that an item lacks empty instead of raising KeyError."""

    def __missing__(self, key: str) -> str:
        return ""


DEFAULT_TEMPLATE = PromptTemplate(name="default", version=1,
                                  description="Titles joined by '; ', candidate last.")
