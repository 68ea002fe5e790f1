"""`durabatch export`: the committed results merged into one Parquet or JSONL file in source order, a window of
positions at a time, so that memory stays bounded whatever the size of the job (or the failures, as a table)."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..errors import DurabatchError
from .ledger import Ledger
from .rundir import RunDir
from .shards import read_shard

WINDOW_BYTES = 256 * 2**20  # decoded result bytes held at once, roughly
MIN_WINDOW, MAX_WINDOW = 10_000, 2_000_000  # positions per window


def export(run_dir: str | os.PathLike, to: str | os.PathLike, failed: bool = False) -> int:
    """Merge the committed results (or the failures) into one Parquet or JSONL file, in source order.
    Returns the number of rows written. The file appears whole or not at all (written aside, then renamed)."""
    rd = RunDir(run_dir)
    to = Path(to)
    if to.suffix not in (".parquet", ".jsonl", ".ndjson", ".json"):
        raise ValueError(f"{to}: export writes .parquet or .jsonl")
    to.parent.mkdir(parents=True, exist_ok=True)
    tmp = to.with_name(f".{to.name}.tmp")
    ledger = Ledger.open_readonly(rd)
    try:
        with _Writer(tmp) as out:
            if failed:
                out.write(_failures_table(ledger))
            else:
                _merge_results(rd, ledger.shards(), out)
    finally:
        ledger.close()
    os.replace(tmp, to)
    return out.rows


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
    table = read_shard(rd.shards / shard["name"])
    positions = pa.concat_arrays([pa.array(range(s, e), pa.int64()) for s, e in shard["spans"]])
    if len(positions) != table.num_rows:
        raise DurabatchError(f"{rd.shards / shard['name']}: {table.num_rows} rows but the ledger lists "
                             f"{len(positions)}; run `durabatch verify --repair {rd.path}`")
    return _conform(table, schema), positions


def _common_schema(rd: RunDir, shards: list[dict]) -> pa.Schema:
    """One schema for every shard: columns in order of first appearance, types widened (an int column that is
    a float elsewhere becomes float; a column all null in one shard takes the others' type)."""
    schemas = [pq.read_schema(rd.shards / s["name"]) if s["name"].endswith(".parquet")
               else read_shard(rd.shards / s["name"]).schema for s in shards]
    try:
        return pa.unify_schemas([s.remove_metadata() for s in schemas], promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise DurabatchError(f"{rd.path}: shards disagree on a column's type and cannot be merged ({exc})") from None


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    columns = [table.column(f.name).cast(f.type) if f.name in table.column_names else pa.nulls(table.num_rows,
               f.type) for f in schema]
    return pa.Table.from_arrays(columns, schema=schema)


def _window(rd: RunDir, shards: list[dict]) -> int:
    """Positions per window, from the decoded size of a row (Parquet footers say it)."""
    sample = [s for s in shards if s["name"].endswith(".parquet")][:20]
    rows = sum(s["rows"] for s in sample)
    decoded = sum(pq.ParquetFile(rd.shards / s["name"]).metadata.row_group(0).total_byte_size
                  for s in sample if s["rows"])
    per_row = decoded / rows if rows and decoded else 1024
    return int(min(MAX_WINDOW, max(MIN_WINDOW, WINDOW_BYTES // max(per_row, 1))))


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
