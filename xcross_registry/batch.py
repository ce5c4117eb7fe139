"""Recommendations for every user of a domain, written to one Parquet file (the nightly job).

``xreg recommend-batch DOMAIN SUBJECT --users all --out recs.parquet`` ranks the whole
catalogue for each chosen user's full sequence (their items so far, oldest first) and
writes one row per (user, rank): ``user``, ``rank``, ``item_id``, ``title``, ``score``,
users in the domain's order (train, valid, test split), ranks ascending.

One process by default.  Under ``accelerate launch`` (or torchrun) each process ranks a
contiguous share of the users and writes it to a staging file; the main process waits
for all of them and joins the shares in order into ``--out``.  Why accelerate and not
Ray Data: it is already the project's engine for more than one process (training runs
on it, CI launches two CPU processes over gloo), it needs no cluster to be started (Ray's
start-up is tens of seconds on two cores, longer than a whole test here), and the job
is an even split of users with one model load per process, which is all it offers
that this job needs.  The output equals the one-process output exactly: every query is
encoded in passes of texts of one padded length (:mod:`~xcross_registry.batching`), so
its scores do not depend on which other users share its process or batch.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from .data import SPLITS
from .errors import ValidationError

if TYPE_CHECKING:  # pragma: no cover
    from .registry import Registry

USER_CHOICES = ("all", *SPLITS)
QUERIES_PER_CALL = 64


@dataclass
class BatchReport:
    """What a batch run did: rows written, users, processes, seconds."""

    out: str
    users: int
    rows: int
    processes: int
    seconds: float

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def recommend_batch(registry: "Registry", domain: str, subject: str, out: str | os.PathLike, *, users: str = "all",
                    top: int = 10, exact: bool = False,
                    progress: Callable[[int, int], None] | None = None) -> BatchReport:
    """Rank the catalogue of ``domain`` with ``subject`` for each user of ``users``
    (``all`` or a split) and write the top ``top`` per user to the Parquet file ``out``."""
    from .subjects import resolve_subject

    if users not in USER_CHOICES:
        raise ValidationError(f"--users must be one of {', '.join(USER_CHOICES)}, not {users!r}")
    if top < 1:
        raise ValidationError(f"--top must be at least 1, not {top}")
    out = Path(out)
    if not out.parent.is_dir():
        raise ValidationError(f"cannot write {out}: the folder {out.parent} does not exist")
    resolve_subject(registry, subject, domain=domain).require_catalogue_ranker(
        "recommend-batch", " (a batch ranks the whole catalogue: use a dual model)")
    import pyarrow as pa
    import pyarrow.parquet as pq

    from . import serving
    from .training import process_state

    began = time.perf_counter()
    model = serving.load_model(registry, subject, domain=domain)
    sequences = [seq for split in SPLITS if users in ("all", split) for seq in model.data.split(split)]
    state = process_state()
    share = _share(len(sequences), state.process_index, state.num_processes)
    table = _rank(model, [sequences[i] for i in share], top, exact, progress)
    if state.num_processes == 1:
        _write_atomically(pq, table, out)
        return BatchReport(str(out), len(sequences), table.num_rows, 1, time.perf_counter() - began)
    part = out.with_name(f".{out.name}.part{state.process_index}")
    pq.write_table(table, part)
    state.wait_for_everyone()
    rows = 0
    if state.is_main_process:
        parts = [out.with_name(f".{out.name}.part{rank}") for rank in range(state.num_processes)]
        joined = pa.concat_tables([pq.read_table(path) for path in parts])
        _write_atomically(pq, joined, out)
        rows = joined.num_rows
        for path in parts:
            path.unlink()
    state.wait_for_everyone()
    return BatchReport(str(out), len(sequences), rows, state.num_processes, time.perf_counter() - began)


def _share(count: int, rank: int, processes: int) -> range:
    """Process ``rank``'s contiguous share of ``count`` users (sizes differ by at most one)."""
    size, extra = divmod(count, processes)
    start = rank * size + min(rank, extra)
    return range(start, start + size + (rank < extra))


def _rank(model, sequences: Sequence, top: int, exact: bool, progress):
    import pyarrow as pa

    from . import serving

    columns: dict[str, list] = {"user": [], "rank": [], "item_id": [], "title": [], "score": []}
    items = model.data.items
    for start in range(0, len(sequences), QUERIES_PER_CALL):
        chunk = sequences[start:start + QUERIES_PER_CALL]
        queries = [serving.Query([items[i].id for i in seq.items], top=top) for seq in chunk]
        for seq, ranked in zip(chunk, serving.recommend_many(model, queries, exact=exact)):
            for row in ranked:
                columns["user"].append(seq.user)
                columns["rank"].append(row.rank)
                columns["item_id"].append(row.item_id)
                columns["title"].append(row.title)
                columns["score"].append(row.score)
        if progress is not None:
            progress(min(start + QUERIES_PER_CALL, len(sequences)), len(sequences))
    schema = pa.schema([("user", pa.string()), ("rank", pa.int32()), ("item_id", pa.string()),
                        ("title", pa.string()), ("score", pa.float32())])
    return pa.table(columns, schema=schema)


def _write_atomically(pq, table, out: Path) -> None:
    """Write to a temporary file beside ``out`` and rename it: a reader never sees half a file."""
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, out)
    finally:
        Path(tmp).unlink(missing_ok=True)
