"""Inputs as a stream of (position, where, record): JSONL, CSV and Parquet files (a list or glob of them),
HF `datasets.Dataset` objects and Python iterables. Positions are stable while the input does not change,
which the job fingerprint checks through `identity()`."""

from __future__ import annotations

import csv
import glob
import hashlib
import json
import os
from collections.abc import Generator, Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from ..columns import ArrowRecords
from ..errors import ConfigError, InputError
from ..intervals import select
from .base import BadRow, Block, Source, Wanted
from .jsonl import first_wanted, jsonl_blocks, line_blocks, nests_deeply

FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv",
           ".parquet": "parquet", ".pq": "parquet"}


class FileSource:
    def __init__(self, paths: list[str]):
        self.paths = paths
        for path in paths:
            if Path(path).suffix.lower() not in FORMATS:
                raise ConfigError(f"{path}: unknown input format (expected .jsonl, .csv or .parquet)")

    def describe(self) -> str:
        return ", ".join(self.paths) if len(self.paths) <= 3 else f"{self.paths[0]} and {len(self.paths) - 1} more"

    def identity(self) -> dict:
        return {"kind": "files", "files": [_file_identity(p) for p in self.paths]}

    def count(self) -> int:
        return sum(_count_rows(p) for p in self.paths)

    def key_batches(self, key: str) -> Iterator[pa.Array]:
        """The keys of every file in order, in Arrow batches (memory: one batch). Raises if Arrow cannot read them."""
        for path in self.paths:
            yield from _arrow_key_batches(path, key)

    def key_column(self, key: str) -> pa.ChunkedArray | None:
        """All keys, read by Arrow in C, for the uniqueness check; None when Arrow cannot read them."""
        try:
            chunks = list(self.key_batches(key))
        except Exception:  # noqa: BLE001 - any trouble: the streaming pass checks row by row and names the row
            return None
        chunks = [_widened(c) for c in chunks]
        if len({c.type for c in chunks}) > 1:  # e.g. ints in one file, strings in another: the exact pass names them
            return None
        return pa.chunked_array(chunks, type=chunks[0].type if chunks else pa.string())

    def blocks(self, wanted: Wanted, end: int | None, columnar: bool = False) -> Iterator[Block]:
        """(positions, line numbers or row numbers, records or BadRows) of the wanted rows, a block at a time;
        `self.current` names the file being read. columnar=True: records Arrow read stay Arrow (ArrowRecords)."""
        pos = 0
        for path in self.paths:
            if end is not None and pos >= end:
                return
            self.current = path
            fmt = _fmt(path)
            if fmt == "jsonl":
                reader = jsonl_blocks(path, pos, wanted, end, BadRow, columnar=columnar)
            elif fmt == "parquet":
                reader = _parquet_blocks(path, pos, wanted, end, columnar)
            else:
                reader = in_blocks(_csv_rows(path, pos, wanted, end))
            try:
                pos = yield from reader  # where the next file's positions start
                if pos is None:  # `end` reached
                    return
            except csv.Error as exc:
                raise InputError(f"{path}: cannot read as CSV ({exc})") from None

    def rows(self, wanted: Wanted, end: int | None) -> Iterator[tuple[int, Any, Any]]:
        """(position, line number or row number, record or BadRow), one at a time."""
        for positions, lines, records in self.blocks(wanted, end):
            yield from zip(positions, lines, records, strict=True)

    def where(self, line: Any) -> str:
        return f"{self.current} line {line}" if _fmt(self.current) != "parquet" else f"{self.current} row {line}"


class IterableSource:
    def __init__(self, items: Iterable[Any], name: str = "python iterable"):
        self.items = items
        self.name = name

    def describe(self) -> str:
        return self.name

    def identity(self) -> dict:
        ident: dict[str, Any] = {"kind": "python", "type": type(self.items).__name__}
        if hasattr(self.items, "__len__"):
            ident["len"] = len(self.items)  # type: ignore[arg-type]
        return ident

    def count(self) -> int | None:
        return len(self.items) if hasattr(self.items, "__len__") else None  # type: ignore[arg-type]

    def key_batches(self, key: str) -> Iterator[pa.Array] | None:
        return None

    def key_column(self, key: str) -> pa.ChunkedArray | None:
        return None

    def where(self, line: Any) -> str:
        return f"{self.name} item {line}"

    def blocks(self, wanted: Wanted, end: int | None, columnar: bool = False) -> Iterator[Block]:
        return in_blocks(self.rows(wanted, end))

    def rows(self, wanted: Wanted, end: int | None) -> Iterator[tuple[int, Any, Any]]:
        for pos, record in enumerate(self.items):
            if end is not None and pos >= end:
                return
            if wanted(pos):
                if not isinstance(record, dict):
                    record = {"value": record}
                yield pos, pos, record


class DatasetSource:
    """A Hugging Face `datasets.Dataset`, read in Arrow batches."""

    def __init__(self, dataset: Any):
        self.dataset = dataset

    def describe(self) -> str:
        return f"datasets.Dataset ({len(self.dataset)} rows)"

    def identity(self) -> dict:
        return {"kind": "hf_dataset", "fingerprint": getattr(self.dataset, "_fingerprint", None),
                "rows": len(self.dataset)}

    def count(self) -> int:
        return len(self.dataset)

    def key_batches(self, key: str) -> Iterator[pa.Array] | None:
        return None

    def key_column(self, key: str) -> pa.ChunkedArray | None:
        if key not in self.dataset.column_names:
            return None
        return pa.chunked_array([pa.array(self.dataset[key]).cast(pa.string())])

    def where(self, line: Any) -> str:
        return f"dataset row {line}"

    def blocks(self, wanted: Wanted, end: int | None, columnar: bool = False) -> Iterator[Block]:
        if not columnar:
            return in_blocks(self.rows(wanted, end))
        return self._arrow_blocks(wanted, end)

    def _arrow_blocks(self, wanted: Wanted, end: int | None) -> Iterator[Block]:
        pos = 0
        for table in self.dataset.with_format("arrow").iter(batch_size=BLOCK_ROWS):
            if end is not None and pos >= end:
                return
            stop = table.num_rows if end is None else min(table.num_rows, end - pos)
            positions = select(wanted, pos, pos + stop)
            if positions:
                yield positions, positions, ArrowRecords(_rows_at(table, positions, pos, stop))
            pos += table.num_rows

    def rows(self, wanted: Wanted, end: int | None) -> Iterator[tuple[int, Any, Any]]:
        pos = 0
        for batch in self.dataset.iter(batch_size=1024):
            names = list(batch)
            for values in zip(*(batch[n] for n in names), strict=True):
                if end is not None and pos >= end:
                    return
                if wanted(pos):
                    yield pos, pos, dict(zip(names, values, strict=True))
                pos += 1


BLOCK_ROWS = 4096


def in_blocks(rows: Iterator[tuple[int, Any, Any]], size: int = BLOCK_ROWS) -> Generator[Block, None, Any]:
    """Rows grouped into blocks of `size`; returns what the rows generator returns."""
    block: Block = ([], [], [])
    while True:
        try:
            pos, line, record = next(rows)
        except StopIteration as stop:
            if block[0]:
                yield block
            return stop.value
        block[0].append(pos)
        block[1].append(line)
        block[2].append(record)
        if len(block[0]) >= size:
            yield block
            block = ([], [], [])


def open_source(source: Any) -> Source:
    """Turn what the user passed (paths, a glob, a Dataset, an iterable) into a Source."""
    if isinstance(source, str | os.PathLike):
        source = [source]
    if isinstance(source, list | tuple) and source and all(isinstance(s, str | os.PathLike) for s in source):
        return FileSource(expand_paths([str(s) for s in source]))
    if type(source).__name__ == "Dataset" and hasattr(source, "column_names"):
        return DatasetSource(source)
    if isinstance(source, Iterable):
        return IterableSource(source)
    raise ConfigError(f"cannot read a source of type {type(source).__name__}")


def expand_paths(patterns: list[str]) -> list[str]:
    paths: list[str] = []
    for pattern in patterns:
        if any(ch in pattern for ch in "*?["):
            matches = sorted(glob.glob(pattern, recursive=True))
            if not matches:
                raise ConfigError(f"input pattern '{pattern}' matches no file")
            paths.extend(matches)
        elif os.path.isdir(pattern):
            found = sorted(str(p) for p in Path(pattern).rglob("*") if p.suffix.lower() in FORMATS)
            if not found:
                raise ConfigError(f"input directory '{pattern}' holds no .jsonl, .csv or .parquet file")
            paths.extend(found)
        elif not os.path.exists(pattern):
            raise ConfigError(f"input file not found: {pattern}")
        else:
            paths.append(pattern)
    return paths


def _fmt(path: str) -> str:
    return FORMATS[Path(path).suffix.lower()]


def _file_identity(path: str) -> dict:
    """Name, size and a hash of samples across the file: cheap even for large files, and catches edits."""
    size = os.path.getsize(path)
    digest = hashlib.blake2b(digest_size=12)
    chunk = 1 << 20
    with open(path, "rb") as f:
        if size <= 16 * chunk:
            digest.update(f.read())
        else:
            for i in range(16):
                f.seek(i * (size - chunk) // 15)
                digest.update(f.read(chunk))
    return {"name": os.path.basename(path), "size": size, "hash": digest.hexdigest()}


def _count_rows(path: str) -> int:
    fmt = _fmt(path)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    with open(path, "rb") as f:
        count = sum(1 for line in f if not line.isspace())
    return count - 1 if fmt == "csv" and count else count


def _arrow_key_batches(path: str, key: str) -> Iterator[pa.Array]:
    """The key column of one file in Arrow batches, read in C with small blocks; raises if Arrow cannot."""
    fmt = _fmt(path)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(columns=[key], batch_size=1 << 16):
            yield batch.column(0)
        return
    if fmt == "csv":
        import pyarrow.csv as pcsv

        options = pcsv.ConvertOptions(include_columns=[key], column_types={key: pa.string()})
        for batch in pcsv.open_csv(path, convert_options=options):
            yield batch.column(0)
        return
    import pyarrow.json as pjson

    with open(path, "rb") as f:
        first = next((line for line in f if not line.isspace()), None)
    value = json.loads(first).get(key) if first else None
    # No key in the first row: read as text, so that a key missing everywhere shows as all nulls.
    key_type = pa.int64() if isinstance(value, int) else pa.string() if isinstance(value, str | None) else None
    if key_type is None:
        raise ValueError("key is neither an integer nor a string")
    schema = pa.schema([(key, key_type)])
    options = pjson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    with open(path, "rb") as f:
        for block in line_blocks(f, 1 << 20):
            if nests_deeply(block):  # Arrow's parser would overflow the C stack: the exact pass names the line
                raise ValueError("a line nests too deeply for Arrow")
            # Threads: nothing else runs while the keys are checked, and Arrow parses without the GIL.
            table = pjson.read_json(pa.py_buffer(block), read_options=pjson.ReadOptions(
                use_threads=True, block_size=1 << 18), parse_options=options)
            yield from table.column(0).chunks


def _widened(keys: pa.Array) -> pa.Array:
    """Integer keys as int64 and text as string, so that files typed differently by Arrow still compare."""
    if pa.types.is_integer(keys.type) and keys.type != pa.int64():
        return keys.cast(pa.int64())
    return keys.cast(pa.string()) if pa.types.is_large_string(keys.type) else keys


def _csv_rows(path: str, pos: int, wanted: Wanted, end: int | None) -> Generator:
    not_utf8: set[int] = set()  # line numbers; a row is bad if any of its lines is

    def text_lines(f: Iterable[bytes]) -> Iterator[str]:
        for lineno, raw in enumerate(f, 1):
            try:
                yield raw.decode("utf-8-sig" if lineno == 1 else "utf-8")  # a BOM is not part of the header
            except UnicodeDecodeError:
                not_utf8.add(lineno)
                yield raw.decode("utf-8", "replace")

    with open(path, "rb") as f:
        reader = csv.DictReader(text_lines(f))
        if reader.fieldnames is not None and 1 in not_utf8:
            raise InputError(f"{path} line 1: the header is not valid UTF-8 text")
        last = reader.line_num  # a row spans the lines after the previous row: a quoted field may hold newlines
        for record in reader:
            if end is not None and pos >= end:
                return
            lineno, first, last = reader.line_num, last + 1, reader.line_num
            if wanted(pos):
                if not_utf8 and not not_utf8.isdisjoint(range(first, lineno + 1)):
                    yield pos, lineno, BadRow(f"{path} line {lineno}", "not valid UTF-8 text")
                elif None in record or None in record.values():
                    n = len(reader.fieldnames or ())
                    got = n + len(record.get(None) or ()) - sum(v is None for v in record.values())
                    yield pos, lineno, BadRow(f"{path} line {lineno}", f"expected {n} fields, got {got}")
                else:
                    yield pos, lineno, record
            pos += 1
    return pos


def _parquet_blocks(path: str, pos: int, wanted: Wanted, end: int | None, columnar: bool,
                    columns: list[str] | None = None, batch_size: int = BLOCK_ROWS) -> Generator:
    """Blocks of `path`'s wanted rows (`columns`: only those, e.g. the driver's keys); returns like jsonl_blocks."""
    import pyarrow.parquet as pq

    first = pos
    reader = pq.ParquetFile(path)
    groups = []
    for group in range(reader.metadata.num_row_groups):  # row groups wholly before a rank's start: not read
        rows = reader.metadata.row_group(group).num_rows
        if not groups and pos + rows <= first_wanted(wanted):
            pos += rows
        else:
            groups.append(group)
    if not groups:
        return pos
    for batch in reader.iter_batches(batch_size=batch_size, row_groups=groups, columns=columns):
        if end is not None and pos >= end:
            return None
        stop = batch.num_rows if end is None else min(batch.num_rows, end - pos)
        positions = select(wanted, pos, pos + stop)
        if positions:
            table = _rows_at(pa.Table.from_batches([batch]), positions, pos, stop)
            rows = [p - first + 1 for p in positions]  # rows named from 1, like lines
            yield positions, rows, ArrowRecords(table) if columnar else table.to_pylist()
        pos += batch.num_rows
    return pos


def _rows_at(table: pa.Table, positions: list[int], pos: int, stop: int) -> pa.Table:
    """The rows of a block starting at `pos` that `positions` name (all of the first `stop`: a zero-copy slice)."""
    return table.slice(0, stop) if len(positions) == stop else table.take([p - pos for p in positions])
