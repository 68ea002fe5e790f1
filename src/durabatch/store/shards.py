"""Shards: immutable output files, each a committed group of results.

`write_atomic` is the disk half of the commit protocol: write to a temporary name in the same directory, fsync,
rename, fsync the directory. Only then does the ledger list the shard; a shard it does not list is a crash
leftover (`remove_orphans`). A failed fsync is never retried on the same descriptor: the caller writes the shard
again under a new name."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Sequence
from itertools import chain
from operator import itemgetter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ..columns import ArrowRecords, to_array
from .ledger import Ledger, ShardRecord
from .rundir import RunDir, fsync_path

TMP_PREFIX = ".tmp-"
SUFFIX = {"parquet": ".parquet", "jsonl": ".jsonl"}


def build_table(key_column: str, keys: list, pieces: list[Sequence]) -> pa.Table:
    """Results as a table: the key column first, then the function's fields (a non-dict result is "result").
    `pieces` are lists of results or ArrowRecords (from a columns batch function), aligned with `keys`."""
    parts: list[pa.Table] = []
    rows: list = []
    at = 0  # where the current run of rows starts in keys
    for piece in pieces:
        if type(piece) is ArrowRecords:
            if rows:
                parts.append(_rows_table(key_column, keys[at:at + len(rows)], rows))
                at, rows = at + len(rows), []
            table = piece.table
            if key_column in table.column_names:
                table = table.drop_columns([key_column])
            parts.append(table.add_column(0, key_column, to_array(keys[at:at + len(piece)])))
            at += len(piece)
        else:
            rows += piece
    if rows or not parts:
        parts.append(_rows_table(key_column, keys[at:], rows))
    if len(parts) == 1:
        return parts[0]
    try:
        return pa.concat_tables(parts, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # e.g. a field that is a number in one piece, text in another
        rows = list(chain.from_iterable(p.drop_columns([key_column]).to_pylist() for p in parts))
        return _rows_table(key_column, keys, rows)


def _rows_table(key_column: str, keys: list, outputs: list) -> pa.Table:
    if set(map(type, outputs)) != {dict}:
        outputs = [o if type(o) is dict else {"result": o} for o in outputs]
    names = [n for n in dict.fromkeys(chain.from_iterable(outputs)) if n != key_column]
    columns = {key_column: keys}
    for name in names:
        try:
            columns[name] = list(map(itemgetter(name), outputs))  # in C
        except KeyError:  # a field some results lack
            columns[name] = [o.get(name) for o in outputs]
    return pa.table({n: to_array(v) for n, v in columns.items()})


SPANS_META = b"durabatch.spans"


def serialize(table: pa.Table, fmt: str, spans: list[tuple[int, int]] | None = None) -> bytes:
    """Shard bytes. A Parquet shard also carries the source positions of its rows in its footer, so that a lost
    ledger can be rebuilt from the shards (`verify --repair`)."""
    if fmt == "parquet":
        if spans is not None:
            table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                                   SPANS_META: json.dumps(spans).encode()})
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
    checksum = hashlib.blake2b(data, digest_size=16).hexdigest()
    return ShardRecord(name, rows, len(data), checksum, spans)


def remove_orphans(run_dir: RunDir, listed: set[str]) -> list[str]:
    """Delete shard files the ledger does not list (left by a crash between rename and ledger commit)."""
    removed = []
    for path in run_dir.shards.iterdir():
        if path.name not in listed:
            path.unlink()
            removed.append(path.name)
    return removed


def shard_spans(path: Path) -> list[tuple[int, int]] | None:
    """The positions a Parquet shard says it covers (from its footer), or None."""
    meta = pq.read_schema(path).metadata or {}
    raw = meta.get(SPANS_META)
    return [tuple(s) for s in json.loads(raw)] if raw else None


def read_shard(path: Path) -> pa.Table:
    if path.suffix == ".parquet":
        return pq.read_table(path)
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return pa.Table.from_pylist(rows)


def done_keys(rd: RunDir, ledger: Ledger, key_column: str) -> set:
    """Keys of every committed result, as text (the ledger keeps failure keys as text too)."""
    keys: set = set()
    for shard in ledger.shards():
        path = rd.shards / shard["name"]
        column = pq.read_table(path, columns=[key_column]).column(0) if path.suffix == ".parquet" \
            else read_shard(path).column(key_column)
        keys.update(str(k) for k in column.to_pylist())
    return keys
