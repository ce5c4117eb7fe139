"""Batch-invariant forward passes: a text scores the same alone or in any batch.

A service scores the requests that arrive together in shared passes (micro-batching),
and a request's answer must not depend on its neighbours.  Padding is masked, but a
sequence padded to another length goes through differently shaped matrix products and
its scores move in the last float bits (about 1e-5 on a score of 20).  So texts are
grouped by their length rounded up to :data:`PAD_MULTIPLE` tokens and each group is
padded to exactly that length: a text has the same tensor shape alone or in any batch.

Its own module because serving (catalogue embeddings) and the scoring modes that score
(history, candidate) prompts jointly (``cross``) both batch this way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch

if TYPE_CHECKING:  # pragma: no cover
    from .scorer import Scorer

PAD_MULTIPLE = 16
PASS_SIZE = 64  # texts per forward pass


def bucketed(scorer: "Scorer", rows: Sequence[Any], texts: Sequence[str],
             run: Callable[[list[Any]], torch.Tensor]) -> torch.Tensor:
    """``run`` over ``rows`` in passes of at most PASS_SIZE rows whose ``texts`` have the
    same padded length; its results ``[len(rows), ...]`` in the order of ``rows``."""
    return _in_length_groups(rows, [len(ids) for ids in _token_ids(scorer, texts)], run)


def embed_texts(scorer: "Scorer", texts: Sequence[str],
                embed: Callable[..., torch.Tensor] | None = None) -> torch.Tensor:
    """The scorer's embedding ``[len(texts), H]`` of each text, each as it would be alone;
    ``embed(input_ids=…, attention_mask=…)`` in place of ``scorer.embed`` when given (a
    faster runtime, see :mod:`xcross_registry.runtimes`).

    Each text is tokenised once: its ids decide its length group and are then padded
    (exactly as ``Scorer.tokenize(..., pad_to_multiple_of=PAD_MULTIPLE)`` pads them)."""
    ids = _token_ids(scorer, texts)
    embed = embed or scorer.embed

    def run(chunk: list[list[int]]) -> torch.Tensor:
        padded = scorer.tokenizer.pad({"input_ids": chunk}, padding=True, return_tensors="pt",
                                      pad_to_multiple_of=PAD_MULTIPLE)
        inputs = {"input_ids": padded["input_ids"], "attention_mask": padded["attention_mask"]}
        return embed(**to_device(inputs, scorer.device))

    return _in_length_groups(ids, [len(row) for row in ids], run)


def _token_ids(scorer: "Scorer", texts: Sequence[str]) -> list[list[int]]:
    return scorer.tokenizer(list(texts), truncation=True, max_length=scorer.config.max_length)["input_ids"]


def _in_length_groups(rows: Sequence[Any], lengths: Sequence[int],
                      run: Callable[[list[Any]], torch.Tensor]) -> torch.Tensor:
    buckets: dict[int, list[int]] = {}
    for position, length in enumerate(lengths):
        buckets.setdefault(-(-length // PAD_MULTIPLE), []).append(position)
    parts, order = [], []
    for members in buckets.values():
        for start in range(0, len(members), PASS_SIZE):
            chunk = members[start:start + PASS_SIZE]
            parts.append(run([rows[k] for k in chunk]))
            order += chunk
    return torch.cat(parts)[torch.argsort(torch.tensor(order))]


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """``batch`` with its tensors on ``device`` (other values, e.g. counts, as they are)."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
