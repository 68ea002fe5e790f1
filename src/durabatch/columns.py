"""Columnar batches (`batch_format="columns"`): a batch function that takes and returns a dict of lists, the
shape of HF `datasets`' `map(batched=True)`. Records read by Arrow stay an Arrow table from the source to the
shard, so no dict per row is ever made on that path; anyone who indexes or iterates them gets plain dicts."""

from __future__ import annotations

import base64
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
    """Values as one Arrow array; TypeError naming two types when they have none in common (never rewritten)."""
    if isinstance(values, pa.Array | pa.ChunkedArray):
        return values
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as exc:
        kinds = list(dict.fromkeys(type(v).__name__ for v in values if v is not None))
        both = f" ({' and '.join(kinds[:2])})" if len(kinds) > 1 else ""
        raise TypeError(f"values of no common type{both}: {exc}") from None


ARROW_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError, TypeError,
                ValueError, RecursionError)


class FieldTypes:
    """One type per result field for the whole run, whatever the commit boundaries: the first non-null value of
    a field (in the order results arrive) fixes its type; a later value must join it. Null joins anything;
    integers and floats join as float; records (dicts) may differ in which fields they have, lists join when
    their items do. Any other mix (text where a number was, a bool where a number was...) is refused: that
    value's item fails, naming the field and both types. Kept in the ledger, so that a resume keeps the rule."""

    def __init__(self, stored: str | None = None):
        self.types: dict[str, pa.DataType] = {}
        if stored:
            schema = pa.ipc.read_schema(pa.py_buffer(base64.b64decode(stored)))
            self.types = {f.name: f.type for f in schema}
        self.changed = False
        self.rejected: dict[int, str] = {}  # of the last build: row index -> why its item fails

    def dump(self) -> str:
        schema = pa.schema([(name, kind) for name, kind in self.types.items()])
        return base64.b64encode(schema.serialize().to_pybytes()).decode()

    def join(self, name: str, kind: pa.DataType) -> bool:
        """Whether values of `kind` can go into field `name` (widening its type when they need it)."""
        known = self.types.get(name)
        if pa.types.is_null(kind) or known == kind:
            return True
        if known is None or pa.types.is_null(known):
            self.types[name], self.changed = kind, True
            return True
        if _text_or_bytes(known) != _text_or_bytes(kind):
            return False
        try:
            joined = pa.unify_schemas([pa.schema([(name, known)]), pa.schema([(name, kind)])],
                                      promote_options="permissive").field(name).type
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            return False
        if joined != known:
            self.types[name], self.changed = joined, True
        return True

    def admit(self, name: str, column: Any, base: int) -> bool:
        """Check a column of results (an Arrow array, or Python values Arrow could not put in one array): True
        when it all joins; else the items of the values that do not are added to `rejected` (by row, from
        `base`), one value at a time in order, so the outcome never depends on how results were grouped."""
        if isinstance(column, pa.Array | pa.ChunkedArray):
            if self.join(name, column.type):
                return True
            column = column.to_pylist()
        for i, value in enumerate(column):
            if value is None or base + i in self.rejected:
                continue
            try:
                kind = pa.array([value]).type
            except ARROW_ERRORS as exc:
                self.rejected[base + i] = f"result field '{name}': {_short(value)} cannot be stored ({exc})"
                continue
            if not self.join(name, kind):
                self.rejected[base + i] = (
                    f"result field '{name}' is {type(value).__name__} {_short(value)} ({kind}) here, but "
                    f"{self.types[name]} in earlier results: a field keeps one type for the whole run")
        return False


def _text_or_bytes(kind: pa.DataType) -> str:
    """str and bytes never join (Arrow would turn the text into bytes)."""
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind):
        return "text"
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or pa.types.is_binary_view(kind):
        return "bytes"
    return "other"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
