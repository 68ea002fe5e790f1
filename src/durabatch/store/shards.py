"""Shards: immutable output files, each a committed group of results.

`write_atomic` is the disk half of the commit protocol: write to a temporary name in the same directory, fsync,
rename, fsync the directory. Only then does the ledger list the shard; a shard it does not list is a crash
leftover, adopted when it proves to be this job's committed work, else removed (`orphans.settle`). A failed fsync
is never retried on the same descriptor: the caller writes the shard again under a new name."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Sequence
from itertools import chain
from operator import itemgetter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ..columns import ArrowRecords, FieldTypes, to_array
from .ledger import Ledger, ShardRecord
from .rundir import RunDir, fsync_path

TMP_PREFIX = ".tmp-"
SUFFIX = {"parquet": ".parquet", "jsonl": ".jsonl"}


def build_table(key_column: str, keys: list, pieces: list[Sequence], fields: FieldTypes | None = None) -> pa.Table:
    """Results as a table: the key column first, then the function's fields (a non-dict result is "result").
    `pieces` are lists of results or ArrowRecords (from a columns batch function), aligned with `keys`.
    Each field keeps one type (`FieldTypes`, checked a column at a time in Arrow): a row whose value cannot join
    its field's type is left out, and `fields.rejected` says why, by row index in `keys`."""
    fields = fields if fields is not None else FieldTypes()
    fields.rejected = {}
    parts: list[tuple[int, Any, dict[str, Any]]] = []  # (first row, piece, columns)
    at = 0
    for piece in _runs(pieces):
        columns = _columns(key_column, piece)
        for name, column in columns.items():
            fields.admit(name, column, at)
        parts.append((at, piece, columns))
        at += len(piece)
    tables = []
    for first, piece, columns in parts:
        bad = [i - first for i in fields.rejected if first <= i < first + len(piece)]
        if bad:  # rare: build this piece again without its rejected rows
            keep = sorted(set(range(len(piece))) - set(bad))
            piece = ArrowRecords(piece.table.take(keep)) if type(piece) is ArrowRecords else [piece[i] for i in keep]
            columns = _columns(key_column, piece, fields)
            piece_keys = [keys[first + i] for i in keep]
        else:
            piece_keys = keys[first:first + len(piece)]
        tables.append(pa.table({key_column: to_array(piece_keys), **columns}))
    if len(tables) == 1:
        return tables[0]
    return pa.concat_tables(tables, promote_options="permissive")  # joined types: null, int -> float, structs


def _runs(pieces: list[Sequence]) -> list[Sequence]:
    """Consecutive lists of results as one list; ArrowRecords as they are."""
    runs: list[Sequence] = []
    owned = False  # whether runs[-1] is a list made here (a caller's list is never extended)
    for piece in pieces:
        if type(piece) is not ArrowRecords and runs and type(runs[-1]) is not ArrowRecords:
            if not owned:
                runs[-1], owned = list(runs[-1]), True
            runs[-1] += piece  # type: ignore[operator]
        elif len(piece) or not runs:
            runs.append(piece)
            owned = False
    return runs


def _columns(key_column: str, piece: Sequence, fields: FieldTypes | None = None) -> dict[str, Any]:
    """A piece's fields as Arrow arrays; Python values where they have no common type. With `fields`: every
    column made in its field's type (the rows left all join it)."""
    if type(piece) is ArrowRecords:
        table = piece.table
        columns: dict[str, Any] = {n: table.column(n) for n in table.column_names if n != key_column}
    else:
        columns = _rows_table(key_column, piece)
    for name, values in columns.items():
        kind = fields.types.get(name) if fields is not None else None
        try:
            if isinstance(values, pa.Array | pa.ChunkedArray):
                columns[name] = values.cast(kind) if kind is not None and values.type != kind else values
            else:
                columns[name] = pa.array(values, kind) if kind is not None else to_array(values)
        except (TypeError, pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError):
            if fields is not None:
                raise
    return columns


def _rows_table(key_column: str, outputs: list) -> dict[str, list]:
    """Results (dicts, or anything else as {"result": value}) as lists of values by field."""
    if set(map(type, outputs)) != {dict}:
        outputs = [o if type(o) is dict else {"result": o} for o in outputs]
    names = [n for n in dict.fromkeys(chain.from_iterable(outputs)) if n != key_column]
    columns = {}
    for name in names:
        try:
            columns[name] = list(map(itemgetter(name), outputs))  # in C
        except KeyError:  # a field some results lack
            columns[name] = [o.get(name) for o in outputs]
    return columns


SPANS_META = b"durabatch.spans"
JOB_META = b"durabatch.job"


def serialize(table: pa.Table, fmt: str, spans: list[tuple[int, int]] | None = None, job: str | None = None) -> bytes:
    """Shard bytes. A Parquet shard also carries the source positions of its rows and its job's id in its footer,
    so that a lost ledger can be rebuilt from the shards (`verify --repair`), and a shard whose ledger commit was
    lost can be recognised as this job's and adopted (`orphans.settle`)."""
    if fmt == "parquet":
        extra = {SPANS_META: json.dumps(spans).encode()} if spans is not None else {}
        if job is not None:
            extra[JOB_META] = job.encode()
        if extra:
            table = table.replace_schema_metadata({**(table.schema.metadata or {}), **extra})
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="zstd", use_dictionary=False)  # keys, ids, texts: mostly unique
        return sink.getvalue().to_pybytes()
    lines = (json.dumps(row, default=str, ensure_ascii=False) for row in table.to_pylist())
    return ("\n".join(lines) + "\n").encode()


def write_atomic(directory: Path, data: bytes, rows: int, spans: list[tuple[int, int]], fmt: str) -> ShardRecord:
    """Make `data` durable under a fresh name; return what the ledger needs to list it."""
    name = f"{spans[0][0]:012d}-{uuid.uuid4().hex[:8]}{SUFFIX[fmt]}"
    tmp = directory / f"{TMP_PREFIX}{name}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, directory / name)
    fsync_path(directory)
    return ShardRecord(name, rows, len(data), hashlib.blake2b(data, digest_size=16).hexdigest(), spans)


def file_checksum(path: Path) -> str:
    """A shard file's checksum as the ledger keeps it (the same as write_atomic's of its bytes)."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def shard_spans(path: Path) -> list[tuple[int, int]] | None:
    """The positions a Parquet shard says it covers (from its footer), or None."""
    meta = pq.read_schema(path).metadata or {}
    raw = meta.get(SPANS_META)
    return [tuple(s) for s in json.loads(raw)] if raw else None


def read_shard(path: Path) -> pa.Table:
    return parse_shard(path.read_bytes(), path.suffix)


def parse_shard(data: bytes, suffix: str) -> pa.Table:
    """A shard's table from its bytes (read once: whoever checks their checksum parses the same bytes)."""
    if suffix == ".parquet":
        return pq.read_table(pa.BufferReader(data))
    rows = [json.loads(line) for line in data.decode().splitlines() if line.strip()]
    return pa.Table.from_pylist(rows)


def footer_spans(table: pa.Table) -> list[tuple[int, int]] | None:
    """The positions a parsed Parquet shard says it covers (from its footer), or None."""
    raw = (table.schema.metadata or {}).get(SPANS_META)
    return [tuple(s) for s in json.loads(raw)] if raw else None


def done_keys(rd: RunDir, ledger: Ledger, key_column: str) -> set:
    """Keys of every committed result, as text (the ledger keeps failure keys as text too)."""
    keys: set = set()
    for shard in ledger.shards():
        path = rd.shards / shard["name"]
        column = pq.read_table(path, columns=[key_column]).column(0) if path.suffix == ".parquet" \
            else read_shard(path).column(key_column)
        keys.update(str(k) for k in column.to_pylist())
    return keys
