"""Columnar batches (`batch_format="columns"`): a batch function that takes and returns a dict of lists, the
shape of HF `datasets`' `map(batched=True)`. Records read by Arrow stay an Arrow table from the source to the
shard, so no dict per row is ever made on that path; anyone who indexes or iterates them gets plain dicts."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from itertools import chain
from operator import itemgetter
from typing import Any

import pyarrow as pa

BATCH_FORMATS = ("rows", "columns")


class ArrowRecords(Sequence):
    """The records of an Arrow table. Slices are tables (zero-copy); an item or an iteration is a dict, made for
    the whole table once, on first use (retries, failures, fan-out: rare paths)."""

    __slots__ = ("table", "_rows")

    def __init__(self, table: pa.Table):
        self.table = table
        self._rows: list[dict] | None = None

    def __len__(self) -> int:
        return self.table.num_rows

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            start, stop, step = index.indices(self.table.num_rows)
            if step == 1:
                return ArrowRecords(self.table.slice(start, max(0, stop - start)))
        return self.rows()[index]

    def __iter__(self) -> Iterator[dict]:
        return iter(self.rows())

    def __getstate__(self) -> pa.Table:  # process workers get the table, never the dicts
        return self.table

    def __setstate__(self, table: pa.Table) -> None:
        self.table, self._rows = table, None

    def rows(self) -> list[dict]:
        if self._rows is None:
            self._rows = self.table.to_pylist()
        return self._rows

    def column(self, name: str) -> list:
        """One column as Python values; KeyError if the table has no such column."""
        if name not in self.table.column_names:
            raise KeyError(name)
        return self.table.column(name).to_pylist()


def join(pieces: list[Sequence]) -> Sequence:
    """Pieces of records (lists or ArrowRecords) as one sequence: a table when they are all tables."""
    if len(pieces) == 1:
        return pieces[0]
    if pieces and all(type(p) is ArrowRecords for p in pieces):
        try:
            return ArrowRecords(pa.concat_tables([p.table for p in pieces], promote_options="default"))
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # a field typed differently in two blocks
            pass
    return list(chain.from_iterable(pieces))


def to_columns(records: Sequence) -> dict[str, list]:
    """What a columns batch function is given: {field: values}, a value None where a record lacks the field."""
    if type(records) is ArrowRecords:
        return records.table.to_pydict()
    names = dict.fromkeys(chain.from_iterable(records))
    columns = {}
    for name in names:
        try:
            columns[name] = list(map(itemgetter(name), records))  # in C
        except KeyError:
            columns[name] = [r.get(name) for r in records]
    return columns


def from_columns(result: Any, rows: int) -> ArrowRecords:
    """What a columns batch function returned, as records aligned with its input; TypeError or ValueError (the
    batch's error) when it is not a mapping of equal-length columns, or a table, of `rows` rows."""
    if isinstance(result, pa.RecordBatch):
        result = pa.Table.from_batches([result])
    if not isinstance(result, pa.Table):
        if not hasattr(result, "items"):
            raise TypeError(f"a columns batch function must return a dict of lists, got {type(result).__name__}")
        result = pa.table({str(name): to_array(values) for name, values in result.items()})
    if result.num_rows != rows:
        raise ValueError(f"batch function returned {result.num_rows} rows for {rows} records")
    return ArrowRecords(result)


def to_array(values: Any) -> pa.Array:
    if isinstance(values, pa.Array | pa.ChunkedArray):
        return values
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        # Mixed types in one column: keep the data, as JSON text, rather than fail the commit.
        return pa.array([None if v is None else json.dumps(v, default=str) for v in values], pa.string())
