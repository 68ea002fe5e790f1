"""The ledger's table of Batch-API chunks: one row per group of items sent to a provider's Batch API, recorded
BEFORE its file is uploaded, so that a resumed run knows every item that is (or may be) in a live batch and
never submits it again. Same database, writer connection and transactions as ledger.py; this module is the only
SQL of its table (ledger.py itself is at its size limit, hence a sibling)."""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from .. import intervals
from .ledger import Ledger

DDL = """CREATE TABLE IF NOT EXISTS batch_chunks (
    id TEXT PRIMARY KEY, seq INTEGER NOT NULL, provider TEXT NOT NULL, state TEXT NOT NULL,
    positions BLOB NOT NULL, keys TEXT NOT NULL, items INTEGER NOT NULL, est_cost REAL NOT NULL,
    file_id TEXT, batch_id TEXT, batch_status TEXT, counts TEXT, planned_at REAL NOT NULL, updated_at REAL NOT NULL)"""


class ChunkState(StrEnum):
    PLANNED = "planned"  # request file written locally and the chunk recorded; no batch can exist yet
    UPLOADED = "uploaded"  # the file id is known; a batch may exist (a kill between create and record)
    SUBMITTED = "submitted"  # the batch id is known
    DONE = "done"  # every item committed: a result in a shard or a failure


@dataclass
class Chunk:
    id: str
    seq: int
    provider: str
    state: ChunkState
    positions: list[int]  # sorted
    keys: list[Any]  # in the order of positions; str(key) is each request's custom_id
    est_cost: float = 0.0
    file_id: str | None = None
    batch_id: str | None = None
    batch_status: str | None = None
    counts: dict | None = None
    planned_at: float = 0.0


_COLUMNS = "id, seq, provider, state, positions, keys, est_cost, file_id, batch_id, batch_status, counts, planned_at"


def ensure(ledger: Ledger) -> None:
    """Create the table in an older ledger (idempotent)."""
    ledger.conn.execute(DDL)


def add(ledger: Ledger, chunk: Chunk) -> None:
    now = time.time()
    with ledger.transaction() as c:
        c.execute(f"INSERT INTO batch_chunks ({_COLUMNS}, items, updated_at) VALUES ({', '.join('?' * 14)})",
                  (chunk.id, chunk.seq, chunk.provider, chunk.state.value,
                   intervals.encode(intervals.from_sorted(chunk.positions)), json.dumps(chunk.keys), chunk.est_cost,
                   chunk.file_id, chunk.batch_id, chunk.batch_status, None, chunk.planned_at, len(chunk.positions),
                   now))


def update(ledger: Ledger, chunk: Chunk) -> None:
    """Record the chunk's state, file and batch ids, and the provider's status and counts."""
    with ledger.transaction() as c:
        c.execute("UPDATE batch_chunks SET state = ?, file_id = ?, batch_id = ?, batch_status = ?, counts = ?, "
                  "updated_at = ? WHERE id = ?",
                  (chunk.state.value, chunk.file_id, chunk.batch_id, chunk.batch_status,
                   json.dumps(chunk.counts) if chunk.counts is not None else None, time.time(), chunk.id))


def chunks(ledger: Ledger, live_only: bool = False) -> list[Chunk]:
    sql = f"SELECT {_COLUMNS} FROM batch_chunks" + (" WHERE state != 'done'" if live_only else "") + " ORDER BY seq"
    out = []
    for (cid, seq, provider, state, blob, keys, cost, file_id, batch_id, status, counts, planned) in \
            ledger.conn.execute(sql):
        out.append(Chunk(cid, seq, provider, ChunkState(state), intervals.expand(intervals.decode(blob)),
                         json.loads(keys), cost, file_id, batch_id, status, json.loads(counts) if counts else None,
                         planned))
    return out


def totals(ledger: Ledger) -> tuple[int, float]:
    """(chunks ever recorded, their estimated cost): the budget already committed to."""
    n, cost = ledger.conn.execute("SELECT count(*), coalesce(sum(est_cost), 0) FROM batch_chunks").fetchone()
    return int(n), float(cost)


def summary(ledger: Ledger) -> list[dict[str, Any]]:
    """For `status`: every chunk's state, batch id, provider status and counts (none in an ordinary job)."""
    try:
        rows = ledger.conn.execute("SELECT seq, id, state, items, batch_id, batch_status, counts, est_cost "
                                   "FROM batch_chunks ORDER BY seq").fetchall()
    except sqlite3.OperationalError:  # no such table: not a Batch-API job
        return []
    return [{"seq": seq, "chunk": cid, "state": state, "items": items, "batch_id": batch_id,
             "batch_status": status, "counts": json.loads(counts) if counts else None, "est_cost": cost}
            for seq, cid, state, items, batch_id, status, counts, cost in rows]
