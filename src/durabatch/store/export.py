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

from ..errors import DiskFullError, DurabatchError, LedgerError, command, run_again
from . import ranks
from .ledger import Ledger
from .rundir import RunDir, fsync_path
from .shards import footer_spans, parse_shard

WINDOW_BYTES = 256 * 2**20  # decoded result bytes held at once, roughly
MIN_WINDOW, MAX_WINDOW = 10_000, 2_000_000  # positions per window


class UnfinishedError(DurabatchError):
    """Export of a job that is not finished, without partial=True (CLI: exit 2)."""


def export(run_dir: str | os.PathLike, to: str | os.PathLike, failed: bool = False, partial: bool = False,
           include_failed: bool = False) -> int:
    """Merge the committed results (or the failures) into one Parquet or JSONL file, in source order.
    Returns the number of rows written. A job that is not finished is refused (UnfinishedError, saying how many
    of how many items are done) unless partial=True. include_failed=True adds the failed, quarantined and
    interrupted items as rows too, with the columns `_status` (done, failed...) and `_error` ("Type: message").
    A run split into ranks is merged: rank order is source order, and a key found in two ranks is refused.
    Every shard is checked against what the ledger recorded (checksum, rows, positions) as it is read: a changed
    one stops the export. The file appears whole and durable or not at all (written aside, fsynced, renamed,
    directory fsynced); nothing is left behind on an error."""
    dirs = [rd for _, rd in ranks.rank_dirs(run_dir)] or [RunDir(run_dir)]
    to = Path(to)
    if to.suffix not in (".parquet", ".jsonl", ".ndjson", ".json"):
        raise ValueError(f"{to}: export writes .parquet or .jsonl")
    if not failed and not partial:
        _refuse_unfinished(run_dir, dirs)
    tmp = to.with_name(f".{to.name}.tmp")
    try:
        to.parent.mkdir(parents=True, exist_ok=True)
        ledgers = [(rd, Ledger.open_readonly(rd)) for rd in dirs if rd.ledger.exists() or len(dirs) == 1]
        try:
            with _Writer(tmp) as out:
                if failed:
                    tables = [_failures_table(ledger) for _, ledger in ledgers]
                    tables = [t for t in tables if t.num_rows] or tables[:1]  # an empty one has text columns
                    out.write(pa.concat_tables(tables, promote_options="permissive") if tables else pa.table({}))
                else:
                    _merge_runs(ledgers, out, include_failed)
        finally:
            for _, ledger in ledgers:
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


def _refuse_unfinished(run_dir: str | os.PathLike, dirs: list[RunDir]) -> None:
    left = [ranks.left_to_do(rd) for rd in dirs]
    if len(dirs) == 1 and left[0] in (0, None):
        return  # a single run whose total is unknown (an iterable without a length) cannot be judged
    if all(n == 0 for n in left):
        return
    done, total = ranks.done_of_total(dirs)
    where = ""
    if len(dirs) > 1:
        names = [str(k) for k, n in enumerate(left) if n != 0]
        unstarted = [str(k) for k, rd in enumerate(dirs) if not rd.ledger.exists()]
        where = f"; rank{'s' if len(names) > 1 else ''} {', '.join(names)} unfinished" + (
            f" ({', '.join(unstarted)} not started)" if unstarted else "")
    raise UnfinishedError(f"{run_dir}: the job is not finished: {done:,} of {total} items done{where}. Run it to "
                          "the end (the same command resumes), or pass --partial to export what is done")


def _merge_runs(ledgers: list[tuple[RunDir, Ledger]], out: _Writer, include_failed: bool) -> None:
    """One run, or the ranks of a split run one after the other (rank order is source order)."""
    runs = [(rd, ledger.shards(), _failure_rows(rd, ledger) if include_failed else None) for rd, ledger in ledgers]
    if len(runs) > 1:
        ranks.refuse_shared_keys([(rd, shards) for rd, shards, _ in runs], _load)
    schemas = [_common_schema(rd, shards) for rd, shards, _ in runs if shards]
    done_schema = pa.unify_schemas(schemas, promote_options="permissive") if schemas else pa.schema([])
    failures = [None if f is None else _keys_as(f, done_schema) for _, _, f in runs]
    schemas += [f.schema.remove(f.schema.get_field_index("_pos")) for f in failures if f is not None]
    if not schemas:
        out.write(pa.table({}))
        return
    schema = pa.unify_schemas(schemas, promote_options="permissive")
    for (rd, shards, _), fails in zip(runs, failures, strict=True):
        _merge_results(rd, shards, out, schema, fails)


def _keys_as(failures: pa.Table, schema: pa.Schema) -> pa.Table:
    """Failure keys (text in the ledger) in the type of the results' key column, when they convert."""
    name = failures.column_names[0]
    if name not in schema.names:
        return failures
    with contextlib.suppress(pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return failures.set_column(0, name, failures.column(0).cast(schema.field(name).type))
    return failures


def _write_error(exc: OSError, to: Path) -> DurabatchError:
    text = " ".join(str(exc).split())
    if exc.errno in (errno.ENOSPC, errno.EDQUOT) or "No space left" in text or "quota" in text.lower():
        with contextlib.suppress(OSError):
            text = f"{shutil.disk_usage(to.parent).free:,} bytes free"
        return DiskFullError(f"disk full while writing {to} ({text}); nothing was written: free some space or "
                             "export to another disk")
    reason = os.strerror(exc.errno).lower() if exc.errno else text
    return DurabatchError(f"cannot write {to} ({reason}); nothing was written")


def _merge_results(rd: RunDir, shards: list[dict], out: _Writer, schema: pa.Schema,
                   failures: pa.Table | None = None) -> None:
    """Windows of source positions in order; each takes the rows of every shard it meets (a shard of retried
    items may span many windows), sorts them by position and writes them. `failures` (with `_pos`) joins in as
    one more shard whose rows are already in memory."""
    cache: dict[str, tuple[pa.Table, pa.Array]] = {}  # shards that reach into the next window
    if failures is not None and failures.num_rows:
        pos = failures.column("_pos").combine_chunks()
        shards = [*shards, {"name": "<failures>", "spans": [[pos[0].as_py(), pos[-1].as_py() + 1]]}]
        cache["<failures>"] = (_conform(failures.drop_columns(["_pos"]), schema), pos)
    if not shards:
        return
    bounds = [(s["spans"][0][0], s["spans"][-1][1]) for s in shards]
    window = _window(rd, shards)
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
        if failures is not None:  # --include-failed: done rows say so
            index = merged.column_names.index("_status")
            merged = merged.set_column(index, "_status", pc.fill_null(merged.column("_status"), "done"))
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
    return LedgerError(f"{rd.shards / shard['name']}: {detail}; export refused, nothing written. Run "
                       f"`{command('verify', rd.path, repair=True)}` to put its items back to pending, then "
                       f"{run_again()}")


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


def _failure_rows(rd: RunDir, ledger: Ledger) -> pa.Table:
    """Failed, quarantined and interrupted items as export rows: the key, `_status`, `_error`, and `_pos` (where
    they go). Keys are text in the ledger; the merge gives them the results' key type."""
    rows = [f for f in ledger.failures() if f["state"] != "pending"]
    keys = pa.array([f["key"] for f in rows], pa.string() if rows else pa.null())
    return pa.table({ranks.key_column(rd): keys, "_status": pa.array([f["state"] for f in rows], pa.string()),
                     "_error": pa.array([f"{f['error_type']}: {f['message']}" for f in rows], pa.string()),
                     "_pos": pa.array([f["pos"] for f in rows], pa.int64())})


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
