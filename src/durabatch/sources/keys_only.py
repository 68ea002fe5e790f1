"""The driver's view of a file input when actors read the rows (`ray_reads = "actors"`): only the key column.

Blocks carry the positions (numbered exactly as FileSource numbers them) and a one-column table of keys; the rest
of each row is never parsed here: Parquet reads the key column's pages only, JSON lines are parsed by Arrow with a
one-field schema. Where Arrow cannot give the keys exactly (a malformed line, a line nesting too deeply, a missing
or null key, keys of two types, a BOM...), the rest of that file is read by FileSource's exact reader from the
block where the trouble began, each record cut to its key (a missing key stays missing) and bad rows passed on
as they are, so that the driver names the file and line of a bad row exactly as it does when it reads the rows.

Not checked here: a row whose key is readable but whose other fields are not (bad UTF-8 in another field, which
Arrow passes over when ignoring the field). The actor's RowReader gives that row's BadRow, as FileSource would."""

from __future__ import annotations

from collections.abc import Generator, Iterator
from itertools import repeat
from typing import Any

import pyarrow as pa
import pyarrow.json as pjson

from ..columns import ArrowRecords
from ..intervals import select
from .base import BadRow, Block, Wanted
from .files import FileSource, _fmt, _parquet_blocks
from .jsonl import SKIPPED, first_wanted, jsonl_blocks, nests_deeply, read_ahead
from .row_reader import refuse_csv

KEY_BLOCK = 1 << 22  # bytes of JSON lines parsed at a time: rows may be heavy (images, documents)
KEY_ROWS = 1 << 16  # Parquet keys read at a time


class KeysOnly:
    """A Source whose records are {key: value} only. Where-handles are (path, line or row number) tuples, since a
    block's rows may come from several files. JSON line numbers are exact (blank lines counted). CSV is refused:
    the actors cannot read it (quoted newlines make byte bookmarks unsafe), so neither does this view."""

    def __init__(self, source: FileSource, key: str):
        refuse_csv(source.paths)
        self.source, self.key = source, key

    @property
    def paths(self) -> list[str]:
        return self.source.paths

    def describe(self) -> str:
        return self.source.describe()

    def identity(self) -> dict:
        return self.source.identity()

    def count(self) -> int:
        return self.source.count()

    def key_batches(self, key: str) -> Iterator[pa.Array]:
        return self.source.key_batches(key)

    def key_column(self, key: str) -> pa.ChunkedArray | None:
        return self.source.key_column(key)

    def where(self, handle: Any) -> str:
        path, number = handle
        return f"{path} row {number}" if _fmt(path) == "parquet" else f"{path} line {number}"

    def blocks(self, wanted: Wanted, end: int | None, columnar: bool = False) -> Iterator[Block]:
        """(positions, (path, number) handles, ArrowRecords of the one key column, or after a fallback a list of
        {key: value} / {} / BadRow) of the wanted positions before `end`, in source order. `columnar` is ignored:
        keys are always a table where Arrow read them."""
        pos = 0
        for path in self.source.paths:
            if end is not None and pos >= end:
                return
            read = _parquet_keys if _fmt(path) == "parquet" else _jsonl_keys
            pos = yield from read(path, self.key, pos, wanted, end)
            if pos is None:  # `end` reached
                return

    def rows(self, wanted: Wanted, end: int | None) -> Iterator[tuple[int, Any, Any]]:
        for positions, handles, records in self.blocks(wanted, end):
            yield from zip(positions, handles, records, strict=True)


def _parquet_keys(path: str, key: str, pos: int, wanted: Wanted, end: int | None) -> Generator:
    """The key column's pages only; a file without the key column is read whole (Arrow would read no column at
    all), so that the driver names its rows as missing the key."""
    import pyarrow.parquet as pq

    columns = [key] if key in pq.ParquetFile(path).schema_arrow.names else None
    return (yield from _cut(_parquet_blocks(path, pos, wanted, end, True, columns, KEY_ROWS), path, key))


def _jsonl_keys(path: str, key: str, pos: int, wanted: Wanted, end: int | None) -> Generator:
    """Arrow parses each block for the key alone (in the read-ahead thread); the first block Arrow cannot read
    exactly hands the rest of the file to the exact reader, from that block's start."""
    skip = first_wanted(wanted)
    ahead = pos  # in the reader thread: where its next block starts at most (lines, blank ones included)
    kind: list[pa.DataType] = []  # the key's type in this file, fixed by the first block Arrow reads

    def parse(block: bytes, lines: int) -> Any:
        nonlocal ahead
        first, ahead = ahead, ahead + lines
        plain = block.startswith(b"{") and block.count(b"\n{") == lines - 1  # no blank line, no BOM
        if plain and first + lines <= skip:
            return SKIPPED  # wholly before the wanted range: counted, not parsed
        return _key_table(block, key, kind, plain, lines)

    offset = lineno = 0
    reader = read_ahead(path, KEY_BLOCK, parse)
    for block, lines, got in reader:
        if got is SKIPPED:
            pos += lines
        elif got is None:  # Arrow could not: the exact reader takes over where this block starts
            reader.close()
            exact = jsonl_blocks(path, pos, wanted, end, BadRow, columnar=True, start=(offset, pos, lineno))
            return (yield from _cut(exact, path, key))
        else:
            table, numbers = got
            rows = table.num_rows
            stop = rows if end is None else max(0, min(rows, end - pos))
            positions = select(wanted, pos, pos + stop)
            if positions:
                if len(positions) < rows:
                    picks = [p - pos for p in positions]
                    table, numbers = table.take(picks), [numbers[i] for i in picks]
                yield positions, list(zip(repeat(path), (lineno + n for n in numbers))), ArrowRecords(table)
            if stop < rows:
                return None
            pos += rows
        offset += len(block)
        lineno += lines
    return pos


def _key_table(block: bytes, key: str, kind: list[pa.DataType], plain: bool,
               lines: int) -> tuple[pa.Table, Any] | None:
    """The block's keys as a one-column table and each row's line number in the block (from 1), or None unless
    they are exactly what json.loads over each non-blank line gives: one object per line, a key in every one."""
    if block.startswith(b"\xef\xbb\xbf") or nests_deeply(block):  # json.loads refuses a BOM; deep nesting
        return None  # would overflow Arrow's C stack
    table = None
    for key_type in kind or (pa.int64(), pa.string()):  # an integer key, else text (any other: the exact reader)
        try:
            table = pjson.read_json(pa.py_buffer(block), read_options=pjson.ReadOptions(
                use_threads=True, block_size=len(block) + 1), parse_options=pjson.ParseOptions(
                explicit_schema=pa.schema([(key, key_type)]), unexpected_field_behavior="ignore"))
            table.validate(full=True)  # the UTF-8 of text keys
        except Exception:  # noqa: BLE001 - malformed line, keys of two types, duplicate key field...
            table = None
            continue
        break
    if table is None or table.column(0).null_count:  # a null or missing key: the exact reader tells which
        return None
    if table.num_rows:  # (a block of blank lines types nothing)
        kind[:] = [table.schema.field(0).type]
    if plain and table.num_rows == lines:  # every line starts an object and each gave one row
        return table, range(1, lines + 1)
    # Blank lines (Arrow skips them): each non-blank line must give one row, or a line held two objects.
    numbers = [n for n, line in enumerate(block.split(b"\n"), 1) if line.strip()]
    return (table, numbers) if len(numbers) == table.num_rows else None


def _cut(blocks: Generator, path: str, key: str) -> Generator[Block, None, int | None]:
    """The exact reader's blocks with each record cut to its key; returns what the reader returns."""
    while True:
        try:
            positions, numbers, records = next(blocks)
        except StopIteration as stop:
            return stop.value
        handles = list(zip(repeat(path), numbers))
        if type(records) is ArrowRecords and key in records.table.column_names:
            yield positions, handles, ArrowRecords(records.table.select([key]))
        else:
            yield positions, handles, [r if type(r) is BadRow else {key: r[key]} if key in r else {}
                                       for r in records]
