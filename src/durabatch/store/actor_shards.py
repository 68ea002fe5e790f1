"""Shards written where the results are made (the Ray engine's actors, `ray_shards = "actors"`): the bytes of heavy
results go from the actor to shared storage, not through the driver. The driver only lists the shard in its
ledger transaction, after checking its field types (`core/written.py`). Same names, footer (positions, job id)
and atomic write as the driver's shards, so verify, export and the orphan rules treat both alike."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import intervals
from ..columns import FieldTypes
from .ledger import ShardRecord
from .shards import build_table, serialize, write_atomic


@dataclass(frozen=True)
class ShardWriter:
    """Picklable (it travels with every batch to an actor): where and how to write, not what."""

    directory: str  # the run directory's shards/, on storage every node shares
    fmt: str
    key_column: str
    job_id: str | None

    def __call__(self, positions: list[int], keys: list, outputs: list[Any],
                 types: str | None) -> tuple[ShardRecord | None, dict[int, str], str]:
        """Write the results of `positions` (outputs: lists or ArrowRecords pieces, in order). `types`: the
        driver's field types when the batch left. Returns the shard (None if no row is left), the rows whose value
        cannot join a field's type (index -> why: they fail with ResultTypeError) and the shard's field types."""
        fields = FieldTypes(types)
        table = build_table(self.key_column, keys, outputs, fields)
        kept = [p for i, p in enumerate(positions) if i not in fields.rejected]
        if not kept:
            return None, fields.rejected, fields.dump()
        if kept != sorted(kept):  # a retry batch may come out of order; rows follow positions
            order = sorted(range(len(kept)), key=kept.__getitem__)
            kept, table = [kept[i] for i in order], table.take(order)
        spans = intervals.from_sorted(kept)
        data = serialize(table, self.fmt, spans, self.job_id)
        return write_atomic(Path(self.directory), data, table.num_rows, spans, self.fmt), fields.rejected, \
            fields.dump()
