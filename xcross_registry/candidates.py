"""Evaluation candidates: which items each evaluated user's positive is ranked against.

Candidates are drawn once and stored, so every system evaluated on a domain is ranked
against the very same lists and two results are comparable user by user.

Protocols:

* ``sampled`` — the positive (the user's last item) plus ``negatives`` items drawn
  uniformly, without replacement, from items the user never interacted with.
* ``sampled-pop`` — the same, but negatives are drawn in proportion to their
  training-set popularity (successive draws without replacement); items never seen
  in training are never drawn.  Popularity alone scores poorly here, which makes it
  a harder test than ``sampled``.
* ``full`` — the positive against the whole catalogue minus the user's own items;
  nothing is sampled: the set holds only the positive column, and
  :func:`exclusion_mask` gives the items to leave out.

``sampled`` and ``sampled-pop`` take a negatives count (default
:data:`DEFAULT_NEGATIVES`, the X-Cross setting; ``100`` is SASRec's).  A protocol is
named by its *label*: the plain name for the default count, so every set and result
stored before counts were chosen keeps its name, and ``NAME:COUNT`` otherwise
(``sampled:100``); sets, results and leaderboard boards are keyed by the label.

The bytes of a :class:`CandidateSet` are a safetensors file (no pickle, no torch) and
depend only on the data, split, protocol, seed and sizes, so the artifact store can
key them by content.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

import numpy as np
import safetensors.numpy

from .data import SPLITS, DomainData, UserSequence
from .errors import ArtifactError, ValidationError

PROTOCOLS = ("sampled", "sampled-pop", "full")
DEFAULT_NEGATIVES = 29
_METADATA_KEY = "xreg.candidates"


@dataclass(frozen=True, eq=False)  # arrays have no single truth value; compare to_bytes()
class CandidateSet:
    """Candidate lists for (some) users of one split: positive in column 0."""

    protocol: str
    split: str
    seed: int
    fingerprint: str
    negatives: int
    users: np.ndarray  # int64 [U]: indices into data.split(split)
    candidates: np.ndarray  # int64 [U, 1 + negatives]: catalogue indices

    def to_bytes(self) -> bytes:
        """safetensors bytes, identical for identical contents.

        The settings go into ONE metadata entry as sorted JSON: safetensors writes a
        metadata map in hash order, which differs between processes."""
        settings = json.dumps({"protocol": self.protocol, "split": self.split, "seed": self.seed,
                               "fingerprint": self.fingerprint, "negatives": self.negatives},
                              sort_keys=True, separators=(",", ":"))
        return safetensors.numpy.save(
            {"users": np.ascontiguousarray(self.users, dtype=np.int64),
             "candidates": np.ascontiguousarray(self.candidates, dtype=np.int64)},
            metadata={_METADATA_KEY: settings})

    @classmethod
    def from_bytes(cls, data: bytes) -> "CandidateSet":
        try:
            (header_length,) = struct.unpack("<Q", data[:8])
            header = json.loads(data[8:8 + header_length])
            settings = json.loads(header["__metadata__"][_METADATA_KEY])
            tensors = safetensors.numpy.load(data)
            return cls(protocol=settings["protocol"], split=settings["split"], seed=int(settings["seed"]),
                       fingerprint=settings["fingerprint"], negatives=int(settings["negatives"]),
                       users=tensors["users"], candidates=tensors["candidates"])
        except Exception as error:  # any malformation reads the same to the user
            raise ArtifactError(f"not a candidate set ({type(error).__name__}: {error})") from None

    @property
    def positives(self) -> np.ndarray:
        return self.candidates[:, 0]


def protocol_label(protocol: str, negatives: int | None = None) -> str:
    """The label of ``protocol`` with ``negatives`` sampled negatives (``None``: the
    default count, or the count a label such as ``sampled:100`` already carries)."""
    name, count = parse_protocol(protocol)
    if negatives is not None:
        if name == "full":
            raise ValidationError("the full protocol ranks the whole catalogue; --negatives "
                                  "applies to sampled and sampled-pop")
        if negatives < 1:
            raise ValidationError(f"--negatives must be at least 1, not {negatives}")
        count = negatives
    return name if count in (0, DEFAULT_NEGATIVES) else f"{name}:{count}"


def parse_protocol(label: str) -> tuple[str, int]:
    """(protocol, negatives) of a label: ``sampled`` → (sampled, 29), ``sampled:100`` →
    (sampled, 100), ``full`` → (full, 0); one :class:`ValidationError` line otherwise."""
    name, colon, count = label.partition(":") if isinstance(label, str) else ("", "", "")
    if name not in PROTOCOLS:
        raise ValidationError(f"unknown evaluation protocol {label!r}; expected one of "
                              f"{', '.join(PROTOCOLS)} (sampled ones may be NAME:NEGATIVES)")
    if not colon:
        return name, 0 if name == "full" else DEFAULT_NEGATIVES
    if name == "full" or not (count.isascii() and count.isdigit()) or int(count) < 1:
        raise ValidationError(f"unknown evaluation protocol {label!r}: a negatives count is a "
                              "positive integer after sampled: or sampled-pop:")
    return name, int(count)


def check_protocol(protocol: str, split: str) -> None:
    """Refuse an unknown protocol label or split (also before a model is loaded to evaluate)."""
    parse_protocol(protocol)
    if split not in SPLITS:
        raise ValidationError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")


def sample_candidates(data: DomainData, split: str, protocol: str, seed: int = 0,
                      negatives: int = DEFAULT_NEGATIVES, max_users: int | None = None) -> CandidateSet:
    """Draw the candidate lists of ``split`` under ``protocol`` (see the module docstring).

    With ``max_users`` smaller than the split, that many users are chosen at random
    (by the same seed) and kept in split order."""
    check_protocol(protocol, split)
    if negatives < 0 or (max_users is not None and max_users < 1):
        raise ValidationError(f"negatives must be >= 0 and max_users >= 1, got {negatives} and {max_users}")
    sequences = data.split(split)
    if not sequences:
        raise ValidationError(f"split {split!r} has no users to evaluate")
    rng = np.random.default_rng(seed)
    users = np.arange(len(sequences), dtype=np.int64)
    if max_users is not None and max_users < len(users):
        users = np.sort(rng.choice(len(users), size=max_users, replace=False)).astype(np.int64)
    positives = np.array([sequences[u].target for u in users], dtype=np.int64)

    if protocol == "full":
        negatives, matrix = 0, positives[:, None]
    else:
        weights = (np.ones(len(data.items), dtype=np.int64) if protocol == "sampled"
                   else np.asarray(data.popularity(), dtype=np.int64))
        cumulative = np.cumsum(weights)
        drawn = [_draw_excluding(rng, cumulative, weights, sequences[u], negatives, split, int(u))
                 for u in users]
        matrix = np.column_stack([positives, np.array(drawn, dtype=np.int64).reshape(len(users), negatives)])
    return CandidateSet(protocol=protocol, split=split, seed=seed, fingerprint=data.fingerprint(),
                        negatives=negatives, users=users, candidates=matrix)


def _draw_excluding(rng: np.random.Generator, cumulative: np.ndarray, weights: np.ndarray,
                    sequence: UserSequence, count: int, split: str, user: int) -> np.ndarray:
    """``count`` distinct items drawn in proportion to integer ``weights``, never the user's.

    Draws with replacement and keeps each first occurrence of an allowed item: that is
    exactly successive sampling without replacement, and needs only a few dozen draws
    per user instead of work proportional to the catalogue."""
    own = np.unique(np.asarray(sequence.items, dtype=np.int64))
    available = np.count_nonzero(weights) - np.count_nonzero(weights[own])
    if available < count:
        raise ValidationError(f"user {user} of split {split!r} has only {available} items to draw "
                              f"{count} negatives from; lower the number of negatives")
    total = int(cumulative[-1])
    draws = np.empty(0, dtype=np.int64)
    batch = 2 * count + len(own)
    while True:
        draws = np.concatenate([draws, np.searchsorted(cumulative, rng.integers(0, total, batch), side="right")])
        _, first = np.unique(draws, return_index=True)
        distinct = draws[np.sort(first)]
        allowed = distinct[~np.isin(distinct, own)]
        if len(allowed) >= count:
            return allowed[:count]
        batch *= 2


def exclusion_mask(data: DomainData, split: str, users: np.ndarray) -> np.ndarray:
    """Bool ``[len(users), n_items]``: True for every item in the user's sequence.

    For the ``full`` protocol: masked items are left out of the ranking.  The
    positive is masked too; :func:`xcross_registry.metrics.full_ranks` reads its score
    by index and never counts it against itself.  Pass a slice of ``users`` to build
    the mask batch by batch on large catalogues."""
    sequences = data.split(split)
    mask = np.zeros((len(users), len(data.items)), dtype=bool)
    for row, user in enumerate(users):
        mask[row, list(sequences[int(user)].items)] = True
    return mask
