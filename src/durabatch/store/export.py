"""`durabatch export`: the committed results merged into one Parquet or JSONL file in source order, a window of
positions at a time, so that memory stays bounded whatever the size of the job (or the failures, as a table)."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..errors import DiskFullError, DurabatchError, LedgerError
from .ledger import Ledger
from .rundir import RunDir, fsync_path
from .shards import footer_spans, parse_shard

WINDOW_BYTES = 256 * 2**20  # decoded result bytes held at once, roughly
MIN_WINDOW, MAX_WINDOW = 10_000, 2_000_000  # positions per window


def export(run_dir: str | os.PathLike, to: str | os.PathLike, failed: bool = False) -> int:
    """Merge the committed results (or the failures) into one Parquet or JSONL file, in source order.
    Returns the number of rows written. Every shard is checked against what the ledger recorded (checksum, rows,
    positions) as it is read: a changed one stops the export. The file appears whole and durable or not at all
    (written aside, fsynced, renamed, directory fsynced); nothing is left behind on an error."""
    rd = RunDir(run_dir)
    to = Path(to)
    if to.suffix not in (".parquet", ".jsonl", ".ndjson", ".json"):
        raise ValueError(f"{to}: export writes .parquet or .jsonl")
    tmp = to.with_name(f".{to.name}.tmp")
    try:
        to.parent.mkdir(parents=True, exist_ok=True)
        ledger = Ledger.open_readonly(rd)
        try:
            with _Writer(tmp) as out:
                if failed:
                    out.write(_failures_table(ledger))
                else:
                    _merge_results(rd, ledger.shards(), out)
        finally:
            ledger.close()
        fsync_path(tmp)
        os.replace(tmp, to)
        fsync_path(to.parent)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise _write_error(exc, to) from None
        raise
    return out.rows


def _write_error(exc: OSError, to: Path) -> DurabatchError:
    text = " ".join(str(exc).split())
    if exc.errno in (errno.ENOSPC, errno.EDQUOT) or "No space left" in text or "quota" in text.lower():
        with contextlib.suppress(OSError):
            text = f"{shutil.disk_usage(to.parent).free:,} bytes free"
        return DiskFullError(f"disk full while writing {to} ({text}); nothing was written: free some space or "
                             "export to another disk")
    reason = os.strerror(exc.errno).lower() if exc.errno else text
    return DurabatchError(f"cannot write {to} ({reason}); nothing was written")


def _merge_results(rd: RunDir, shards: list[dict], out: _Writer) -> None:
    """Windows of source positions in order; each takes the rows of every shard it meets (a shard of retried
    items may span many windows), sorts them by position and writes them."""
    if not shards:
        out.write(pa.table({}))
        return
    schema = _common_schema(rd, shards)
    bounds = [(s["spans"][0][0], s["spans"][-1][1]) for s in shards]
    window = _window(rd, shards)
    cache: dict[str, tuple[pa.Table, pa.Array]] = {}  # shards that reach into the next window
    lo, hi = min(b[0] for b in bounds), max(b[1] for b in bounds)
    while lo < hi:
        lo = min(b[0] if b[0] > lo else lo for b in bounds if b[1] > lo)  # skip gaps with no shard
        end = lo + window
        parts, positions = [], []
        for shard, (first, last) in zip(shards, bounds, strict=True):
            if last <= lo or first >= end:
                continue
            table, pos = cache.pop(shard["name"], None) or _read(rd, shard, schema)
            if first >= lo and last <= end:
                parts.append(table)
                positions.append(pos)
                continue
            inside = pc.and_(pc.greater_equal(pos, lo), pc.less(pos, end))
            parts.append(table.filter(inside))
            positions.append(pos.filter(inside))
            if last > end:
                cache[shard["name"]] = (table, pos)
        merged = pa.concat_tables(parts)
        order = pa.concat_arrays(positions)
        if len(order) > 1 and not pc.all(pc.greater(order[1:], order[:-1])).as_py():
            merged = merged.take(pc.sort_indices(order))
        out.write(merged)
        lo = end


def _read(rd: RunDir, shard: dict, schema: pa.Schema) -> tuple[pa.Table, pa.Array]:
    table = _load(rd, shard)
    positions = pa.concat_arrays([pa.array(range(s, e), pa.int64()) for s, e in shard["spans"]])
    if len(positions) != table.num_rows:
        raise _refuse(rd, shard, f"{table.num_rows:,} rows but the ledger lists positions for {len(positions):,}")
    return _conform(table, schema), positions


def _load(rd: RunDir, shard: dict) -> pa.Table:
    """The shard, checked against what the ledger recorded at its commit. Its bytes are read once: hashed, and
    parsed from the same buffer, so the check costs a hash."""
    path = rd.shards / shard["name"]
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise _refuse(rd, shard, f"listed with {shard['rows']:,} rows, not on disk") from None
    except OSError as exc:
        raise _refuse(rd, shard, f"unreadable ({exc.strerror or exc})") from None
    if len(data) != shard["bytes"]:
        raise _refuse(rd, shard, f"{len(data):,} bytes, the ledger recorded {shard['bytes']:,} (truncated or "
                      "overwritten)")
    if hashlib.blake2b(data, digest_size=16).hexdigest() != shard["checksum"]:
        raise _refuse(rd, shard, "its checksum differs from the ledger's: the file changed after its commit")
    try:
        table = parse_shard(data, path.suffix)
    except Exception as exc:  # noqa: BLE001 - whatever the reader says, the shard is named
        raise _refuse(rd, shard, f"unreadable although its checksum matches ({exc})") from None
    spans = footer_spans(table) if path.suffix == ".parquet" else None
    if table.num_rows != shard["rows"] or (spans is not None and spans != [tuple(s) for s in shard["spans"]]):
        raise _refuse(rd, shard, "its rows or positions differ from the ledger's")
    return table


def _refuse(rd: RunDir, shard: dict, detail: str) -> LedgerError:
    detail = " ".join(detail.split())
    return LedgerError(f"{rd.shards / shard['name']}: {detail}; export refused, nothing written. Run `durabatch "
                       f"verify {rd.path} --repair` to put its items back to pending, then run the job again")


def _schema(rd: RunDir, shard: dict) -> pa.Schema:
    """A shard's schema: a Parquet footer after a size check (the full check comes when its rows are read)."""
    path = rd.shards / shard["name"]
    if not path.name.endswith(".parquet"):
        return _load(rd, shard).schema
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise _refuse(rd, shard, f"listed with {shard['rows']:,} rows, not on disk") from None
    if size != shard["bytes"]:
        raise _refuse(rd, shard, f"{size:,} bytes, the ledger recorded {shard['bytes']:,} (truncated or "
                      "overwritten)")
    try:
        return pq.read_schema(path)
    except Exception as exc:  # noqa: BLE001
        raise _refuse(rd, shard, f"unreadable ({exc})") from None


def _common_schema(rd: RunDir, shards: list[dict]) -> pa.Schema:
    """One schema for every shard: columns in order of first appearance, types widened (an int column that is
    a float elsewhere becomes float; a column all null in one shard takes the others' type)."""
    schemas = [_schema(rd, s) for s in shards]
    try:
        return pa.unify_schemas([s.remove_metadata() for s in schemas], promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        for shard in shards:  # a damaged footer can say anything: name a shard that changed, if one did
            _load(rd, shard)
        raise DurabatchError(f"{rd.path}: shards disagree on a column's type and cannot be merged ({exc})") from None


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    columns = [table.column(f.name).cast(f.type) if f.name in table.column_names else pa.nulls(table.num_rows,
               f.type) for f in schema]
    return pa.Table.from_arrays(columns, schema=schema)


def _window(rd: RunDir, shards: list[dict]) -> int:
    """Positions per window, from the decoded size of a row (Parquet footers say it)."""
    sample = [s for s in shards if s["name"].endswith(".parquet")][:20]
    rows = sum(s["rows"] for s in sample)
    decoded = sum(_decoded_size(rd.shards / s["name"]) for s in sample if s["rows"])
    per_row = decoded / rows if rows and decoded else 1024
    return int(min(MAX_WINDOW, max(MIN_WINDOW, WINDOW_BYTES // max(per_row, 1))))


def _decoded_size(path: Path) -> int:
    """The first row group's decoded size from the footer (0 if the footer does not say: it is checked later)."""
    try:
        return max(0, pq.ParquetFile(path).metadata.row_group(0).total_byte_size)
    except Exception:  # noqa: BLE001
        return 0


def _failures_table(ledger: Ledger) -> pa.Table:
    rows = ledger.failures()
    history = ledger.attempt_history()
    for row in rows:
        row["history"] = json.dumps(history.get(row["pos"], []))
    if not rows:
        return pa.table({n: pa.array([], pa.string()) for n in
                         ("key", "state", "error_type", "message", "attempts", "traceback")})
    return pa.Table.from_pylist(rows)


class _Writer:
    """Parquet (one row group per window) or JSON lines, appended table by table."""

    def __init__(self, path: Path):
        self.path = path
        self.rows = 0
        self._parquet: pq.ParquetWriter | None = None
        self._text: Any = None

    def __enter__(self) -> _Writer:
        if self.path.name.endswith(".parquet.tmp"):
            self._text = None
        else:
            self._text = open(self.path, "w", encoding="utf-8")  # noqa: SIM115 - closed in __exit__
        return self

    def write(self, table: pa.Table) -> None:
        self.rows += table.num_rows
        if self._text is not None:
            for batch in table.to_batches(65536):
                buf = io.StringIO()
                for row in batch.to_pylist():
                    buf.write(json.dumps(row, default=str, ensure_ascii=False) + "\n")
                self._text.write(buf.getvalue())
            return
        if self._parquet is None:
            self._parquet = pq.ParquetWriter(self.path, table.schema)
        self._parquet.write_table(table)

    def __exit__(self, *exc: object) -> None:
        if self._text is not None:
            self._text.close()
        elif self._parquet is not None:
            self._parquet.close()
        elif exc[0] is None:
            pq.write_table(pa.table({}), self.path)
