"""Shard files the ledger does not list, settled before a run plans its work.

They are left by a crash between a shard's rename and its ledger transaction, or by a ledger that lost its newest
commits (a deleted -wal; a power loss under synchronous=NORMAL). A complete Parquet shard whose footer names this
job and whose positions no listed shard covers is committed work: it is adopted (listed, with its checksum), so
that less work is redone after every crash. Everything else is removed: temporary files, shards of another job,
shards overlapping listed ones (copies), and JSON lines shards (they carry no positions to adopt them by).

One type per result field holds for adopted shards too (`columns.FieldTypes`, kept in the ledger's result_types).
A shard written by a Ray actor (`ray_shards="actors"`) was built with the field types of when its batch left,
and another actor may have fixed a field's type otherwise meanwhile: an orphan whose fields cannot join the
ledger's types is removed, not adopted, and its items simply run again. One that joins them is adopted, and any
type it fixes or widens is stored first, so that no listed shard ever has a type the ledger does not know."""

from __future__ import annotations

import hashlib
from bisect import bisect_right
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ..columns import FieldTypes
from .ledger import Ledger, ShardRecord
from .rundir import RunDir
from .shards import JOB_META, TMP_PREFIX, footer_spans


@dataclass
class Settled:
    adopted: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    conflicting: list[str] = field(default_factory=list)  # of `removed`: complete, but its field types conflict


def settle(run_dir: RunDir, ledger: Ledger) -> Settled:
    """Adopt the unlisted complete shards of this job whose field types join the ledger's, delete the other
    unlisted files. The adopted ones are listed in one ledger transaction, after the types they fix are stored."""
    listed = ledger.shard_names()
    job = ledger.job_id()
    by_key = bool(ledger.get_meta("match_by_key"))  # positions of older shards may mean other items: adopt none
    taken = _Taken(ledger.done_spans())
    fields = FieldTypes(ledger.get_meta("result_types"))
    settled, records = Settled(), []
    for path in sorted(run_dir.shards.iterdir()):
        if path.name in listed:
            continue
        found = None
        if job is not None and not by_key and path.suffix == ".parquet" and not path.name.startswith(TMP_PREFIX):
            found = _adoptable(path, job, taken)
        if found is not None and not _joins(found[1], fields):
            settled.conflicting.append(path.name)
            found = None
        if found is None:
            path.unlink()
            settled.removed.append(path.name)
            continue
        record = found[0]
        taken.add(record.spans)
        records.append(record)
        settled.adopted.append(path.name)
    if fields.changed:  # before the shards are listed: a crash in between leaves them unlisted, to settle again
        ledger.set_meta(result_types=fields.dump())
    if records:
        ledger.adopt(records)
    return settled


def _joins(schema: pa.Schema, fields: FieldTypes) -> bool:
    """Whether every result field of the shard (all columns but the first, its key) joins the types known so far;
    if so, `fields` takes any type it fixes or widens (the next shard is checked against those), else it is left
    as it was."""
    trial = FieldTypes(fields.dump())
    if not all(trial.join(f.name, f.type) for f in list(schema)[1:]):
        return False
    if trial.changed:
        fields.types, fields.changed = trial.types, True
    return True


def _adoptable(path: Path, job: str, taken: _Taken) -> tuple[ShardRecord, pa.Schema] | None:
    """What the ledger needs to list this shard (and its schema, for the field types), when it is whole, this
    job's and covers no listed position."""
    try:
        data = path.read_bytes()
        table = pq.read_table(pa.BufferReader(data))
        spans = footer_spans(table)
    except Exception:  # noqa: BLE001 - any unreadable file is not adopted
        return None
    if (table.schema.metadata or {}).get(JOB_META) != job.encode() or not spans:
        return None
    ordered = all(s < e for s, e in spans) and all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False))
    if not ordered or sum(e - s for s, e in spans) != table.num_rows or taken.overlaps(spans):
        return None
    return ShardRecord(path.name, table.num_rows, len(data), hashlib.blake2b(data, digest_size=16).hexdigest(),
                       [(int(s), int(e)) for s, e in spans]), table.schema


class _Taken:
    """Positions covered by listed shards: sorted, merged spans."""

    def __init__(self, spans: list[tuple[int, int]]):
        self.starts: list[int] = []
        self.ends: list[int] = []
        for s, e in sorted(spans):
            if self.ends and s <= self.ends[-1]:
                self.ends[-1] = max(self.ends[-1], e)
            else:
                self.starts.append(s)
                self.ends.append(e)

    def overlaps(self, spans: list[tuple[int, int]]) -> bool:
        for s, e in spans:
            i = bisect_right(self.starts, s) - 1
            if (i >= 0 and self.ends[i] > s) or (i + 1 < len(self.starts) and self.starts[i + 1] < e):
                return True
        return False

    def add(self, spans: list[tuple[int, int]]) -> None:
        merged = _Taken([*zip(self.starts, self.ends, strict=True), *spans])
        self.starts, self.ends = merged.starts, merged.ends
