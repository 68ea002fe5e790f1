"""`durabatch verify`: check every shard against the ledger and name what is wrong. `--repair` puts the items of
lost or corrupt shards back to pending (the next run redoes only them), removes crash leftovers, and rebuilds an
unreadable ledger from the Parquet shards' footers, which carry their source positions.

Nothing the user made is deleted: a damaged shard goes to run_dir/corrupt/, a damaged ledger (with its -wal and
-shm) to ledger.sqlite.corrupt-<time>. Only never-committed leftovers are removed, as the next run would do."""

from __future__ import annotations

import contextlib
import json
import shutil
import sqlite3
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .. import intervals
from ..errors import ConfigError, LedgerError, command
from ..sources.keys import all_distinct
from . import orphans, ranks, shards
from .export import _load
from .ledger import Ledger, ShardRecord
from .rundir import RunDir, lock_holder, run_lock
from .salvage import salvage

UNLIST = ("missing", "corrupt", "rows", "spans", "overlap")  # repair unlists these shards: their items are redone


@dataclass
class Problem:
    kind: str  # ledger | missing | corrupt | rows | spans | overlap | duplicate_keys | orphan
    file: str
    detail: str


@dataclass
class Report:
    run_dir: str
    shards: int = 0
    rows: int = 0
    problems: list[Problem] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    remaining: list[Problem] | None = None  # --repair only: what a second check after the repair still finds
    notes: list[str] = field(default_factory=list)
    running_pid: int | None = None

    @property
    def ok(self) -> bool:
        return not (self.problems if self.remaining is None else self.remaining)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}

    def render(self) -> str:
        lines = [f"{self.run_dir}: {self.shards:,} shards, {self.rows:,} rows listed in the ledger"]
        lines += [f"  note: {n}" for n in self.notes]
        lines += [f"  {p.kind}: {p.file}: {p.detail}" for p in self.problems]
        lines += [f"  repaired: {r}" for r in self.repaired]
        lines += [f"  still wrong: {p.kind}: {p.file}: {p.detail}" for p in self.remaining or []]
        repair = command("verify", self.run_dir, repair=True)  # as the caller writes it: CLI or Python
        if not self.ok:
            lines.append(f"  run `{repair}` to put the affected items back to pending" if self.remaining is None
                         else "  not repaired: move the shard file you do not trust out of shards/ and run "
                         f"`{repair}` again to redo its items")
        elif self.repaired:
            lines.append("  ok after repair: run the job again to redo the items put back to pending")
        else:
            lines.append("  ok: every listed shard is present, intact and matches the ledger")
        return "\n".join(lines)


def verify(run_dir: str | Path, *, repair: bool = False) -> Report:
    """Check every shard against the ledger: read-only, so safe while a job runs (unlisted files may then be
    commits in progress: not judged). repair=True (the CLI's --repair) also fixes what it finds: see
    `repair_run`."""
    if repair:
        return repair_run(run_dir)
    if ranks.ranks_of(run_dir):
        return _ranked(run_dir, verify)
    rd = _run_dir(run_dir)
    report = Report(str(rd.path))
    _check(rd, report, own_lock=False)
    return report


def repair_run(run_dir: str | Path) -> Report:
    """Check and fix under the run lock: refused (RunLockedError naming the pid) while a job runs, and no job can
    start in the middle of a repair."""
    if ranks.ranks_of(run_dir):
        return _ranked(run_dir, repair_run)
    rd = _run_dir(run_dir)
    with run_lock(rd):
        report = Report(str(rd.path))
        _check(rd, report, own_lock=True)
        if any(p.kind == "ledger" for p in report.problems):
            _rebuild_ledger(rd, report)
        elif report.problems:
            _unlist_and_clean(rd, report)
        after = Report(str(rd.path))
        _check(rd, after, own_lock=True)
        report.shards, report.rows, report.remaining = after.shards, after.rows, after.problems
    return report


def _ranked(run_dir: str | Path, one: Callable[[Path], Report]) -> Report:
    """A run split into ranks: each started rank checked (or repaired) on its own, problems named by rank; a key
    in two ranks is a problem too."""
    merged = Report(str(run_dir), remaining=None)
    started = [(k, rd) for k, rd in ranks.rank_dirs(run_dir) if rd.ledger.exists() or rd.shards.is_dir()]
    unstarted = sorted({k for k, _ in ranks.rank_dirs(run_dir)} - {k for k, _ in started})
    if unstarted:
        merged.notes.append(f"rank(s) {', '.join(map(str, unstarted))} not started yet")
    for k, rd in started:
        report = one(rd.path)
        merged.shards += report.shards
        merged.rows += report.rows
        merged.notes += [f"rank {k}: {n}" for n in report.notes]
        merged.problems += [Problem(p.kind, p.file, f"rank {k}: {p.detail}") for p in report.problems]
        merged.repaired += [f"rank {k}: {r}" for r in report.repaired]
        if report.remaining is not None:
            merged.remaining = (merged.remaining or []) + [Problem(p.kind, p.file, f"rank {k}: {p.detail}")
                                                           for p in report.remaining]
    if not merged.problems and not merged.remaining:
        try:
            with contextlib.ExitStack() as stack:
                runs = [(rd, stack.enter_context(contextlib.closing(Ledger.open_readonly(rd))).shards())
                        for _, rd in started if rd.ledger.exists()]
                ranks.refuse_shared_keys(runs, _load)
        except ConfigError as exc:
            merged.problems.append(Problem("duplicate_keys", str(run_dir), str(exc)))
    return merged


def _run_dir(run_dir: str | Path) -> RunDir:
    """A wrong path is a usage error (exit 2), never a ledger created in a random directory."""
    rd = RunDir(run_dir)
    if not rd.path.is_dir():
        raise ConfigError(f"{rd.path}: no such directory")
    if not (rd.ledger.exists() or rd.job.exists() or rd.shards.is_dir()):
        raise ConfigError(f"{rd.path}: not a durabatch run directory (no ledger.sqlite, job.json or shards/)")
    return rd


# -- checking --------------------------------------------------------------------------------------------------
def _check(rd: RunDir, report: Report, own_lock: bool) -> None:
    files = sorted(rd.shards.iterdir()) if rd.shards.is_dir() else []
    if not rd.ledger.exists():
        if rd.job.exists() or files:
            report.problems.append(Problem("ledger", str(rd.ledger), f"missing; the next run would delete the "
                                           f"{len(files):,} shard file(s) as uncommitted"))
        else:
            report.notes.append("no ledger yet: nothing was committed")
        return
    try:
        ledger = Ledger.open_readonly(rd)
        try:
            status = ledger.integrity()
            if status != "ok":
                raise LedgerError(f"the ledger is unreadable (integrity check: {status})")
            listed = ledger.shards()
            by_key = bool(ledger.get_meta("match_by_key"))
        finally:
            ledger.close()
    except (LedgerError, sqlite3.DatabaseError, ValueError) as exc:
        detail = str(exc).replace(f"{rd.ledger}: ", "")
        report.problems.append(Problem("ledger", str(rd.ledger), detail if "unreadable" in detail
                                       else f"unreadable: {detail}"))
        return
    report.shards, report.rows = len(listed), sum(s["rows"] for s in listed)
    keys: list[tuple[str, pa.Array]] = []
    for shard in listed:
        column = _check_shard(rd.shards / shard["name"], shard, report)
        if column is not None:
            keys.append((shard["name"], column))
    if not by_key:  # after an allowed input change, positions of old and new shards may legitimately overlap
        _check_overlaps(rd, listed, report)
    _check_keys(rd, keys, report)
    report.running_pid = None if own_lock else lock_holder(rd)
    if report.running_pid is not None:
        report.notes.append(f"a job is running (pid {report.running_pid}): files it has not listed yet may be "
                            "commits in progress and are not judged")
        return
    names = {s["name"] for s in listed}
    for path in files:
        if path.name not in names:
            what = "a partly written shard" if path.name.startswith(shards.TMP_PREFIX) else \
                "a shard whose commit never happened or was lost; adopted if it is a complete shard of this job " \
                "whose field types agree with the ledger's"
            report.problems.append(Problem("orphan", str(path), f"not listed in the ledger: {what} "
                                           "(left by an interrupted commit)"))


def _check_shard(path: Path, shard: dict, report: Report) -> pa.Array | None:
    """Present, the very bytes committed, readable, and saying what the ledger says. Returns its keys as text."""
    rows = shard["rows"]

    def bad(kind: str, detail: str) -> None:
        report.problems.append(Problem(kind, str(path), detail))

    if not path.is_file():
        return bad("missing", f"listed with {rows:,} rows, not on disk")
    size = path.stat().st_size
    if size != shard["bytes"]:
        return bad("corrupt", f"{size:,} bytes, the ledger says {shard['bytes']:,} (truncated or overwritten)")
    if shards.file_checksum(path) != shard["checksum"]:
        return bad("corrupt", "checksum differs from the ledger's: the file changed after its commit")
    if intervals.count(shard["spans"]) != rows:
        return bad("rows", f"the ledger lists {rows:,} rows but positions for {intervals.count(shard['spans']):,}")
    try:
        keys, num_rows, spans = _read_keys(path)
    except Exception as exc:  # noqa: BLE001 - any unreadable shard is named, whatever the reader says
        return bad("corrupt", f"unreadable: {exc}")
    if num_rows != rows:
        return bad("rows", f"{num_rows:,} rows in the file, the ledger says {rows:,}")
    if spans is not None and spans != [tuple(s) for s in shard["spans"]]:
        return bad("spans", "the positions in the file's footer differ from the ledger's")
    return keys


def _read_keys(path: Path) -> tuple[pa.Array, int, list[tuple[int, int]] | None]:
    """(keys, rows, footer spans). The checksum already vouches for the bytes: read the key column only."""
    if path.suffix == ".parquet":
        with pq.ParquetFile(path) as f:
            names = f.schema_arrow.names
            column = f.read(columns=names[:1]).column(0) if names else pa.chunked_array([], pa.string())
            num_rows = f.metadata.num_rows
        return _as_text(column), num_rows, shards.shard_spans(path)
    table = shards.read_shard(path)
    column = table.column(0) if table.num_columns else pa.chunked_array([], pa.string())
    return _as_text(column), table.num_rows, None


def _as_text(column: pa.ChunkedArray) -> pa.Array:
    try:
        return column.combine_chunks().cast(pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return pa.array([None if k is None else str(k) for k in column.to_pylist()], pa.string())


def _check_overlaps(rd: RunDir, listed: list[dict], report: Report) -> None:
    """Two listed shards covering one position would put its item in the output twice."""
    end, owner, flagged = -1, "", set()
    for start, stop, name in sorted((s, e, shard["name"]) for shard in listed for s, e in shard["spans"]):
        if start < end and name != owner and name not in flagged:
            flagged.add(name)
            report.problems.append(Problem("overlap", str(rd.shards / name),
                                           f"covers positions from {start:,} that {owner} covers too"))
        if stop > end:
            end, owner = stop, name


def _check_keys(rd: RunDir, keys: list[tuple[str, pa.Array]], report: Report) -> None:
    """Every key once across shards: Arrow decides; the slow Python pass only runs to name the shards."""
    if not keys or all_distinct(pa.chunked_array([k for _, k in keys], pa.string())):
        return
    first: dict[Any, str] = {}
    for name, column in keys:
        dupes = [(k, first[k]) for k in column.to_pylist() if k in first]
        first.update((k, name) for k in column.to_pylist() if k not in first)
        if dupes:
            report.problems.append(Problem("duplicate_keys", str(rd.shards / name), f"{len(dupes):,} key(s) also "
                                           f"in an earlier shard, e.g. {dupes[0][0]!r} (in {dupes[0][1]})"))


# -- repairing -------------------------------------------------------------------------------------------------
def _unlist_and_clean(rd: RunDir, report: Report) -> None:
    """Unlist lost or corrupt shards (their items go back to pending); settle unlisted files as the next run
    would: complete shards of this job adopted, never-committed leftovers removed."""
    bad = list(dict.fromkeys(Path(p.file).name for p in report.problems if p.kind in UNLIST))
    moved = {name for name in bad if _move_aside(rd.shards / name, rd)}  # first, so no crash can lose the file
    settled = None
    if bad or any(p.kind == "orphan" for p in report.problems):
        ledger = Ledger.open(rd)
        try:
            if bad:
                ledger.forget_shards(bad)
            if any(p.kind == "orphan" for p in report.problems):
                settled = orphans.settle(rd, ledger)
        finally:
            ledger.close()
    for name in bad:
        report.repaired.append(f"{name}: unlisted, its items are pending again"
                               + (" (file moved to corrupt/)" if name in moved else ""))
    for name in settled.adopted if settled else []:
        report.repaired.append(f"{name}: listed again (a complete shard of this job whose ledger commit was lost)")
    for name in settled.removed if settled else []:
        report.repaired.append(f"{name}: removed (its field types conflict with the ledger's: its items run again)"
                               if name in settled.conflicting else f"{name}: removed (never committed)")


def _rebuild_ledger(rd: RunDir, report: Report) -> None:
    """A new ledger from the Parquet shards' footers. Failure records have no other copy: they are lost, and
    failed or quarantined items will be tried again by the next run."""
    meta, sums = salvage(rd.ledger)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for suffix in ("", "-wal", "-shm"):
        old = rd.ledger.with_name(rd.ledger.name + suffix)
        if old.exists():
            old.rename(old.with_name(f"{old.name}.corrupt-{stamp}"))
            report.repaired.append(f"{old.name}: moved aside to {old.name}.corrupt-{stamp}")
    report.repaired.append("failure records are lost: failed and quarantined items will be tried again by the "
                           "next run")
    found: list[tuple[Path, list[tuple[int, int]], pa.Array]] = []
    for path in sorted(rd.shards.iterdir()) if rd.shards.is_dir() else []:
        if path.name.startswith(shards.TMP_PREFIX):
            path.unlink()
            report.repaired.append(f"{path.name}: removed (never committed)")
            continue
        why, spans, keys = _footer(path)
        if why is None and path.name in sums and shards.file_checksum(path) != sums[path.name]:
            why = "checksum differs from the old ledger's"
        if why is not None:
            _move_aside(path, rd)
            report.repaired.append(f"{path.name}: {why}; moved to corrupt/, its items will be redone")
            continue
        found.append((path, spans, keys))
    found = _drop_copies(found, rd, report)
    values = {k: _json(v) for k, v in meta.items()}
    if rd.job.exists():  # job.json is rewritten at every run's start: the fingerprint the next run must match
        values["fingerprint"] = _json(rd.job.read_text(), {}).get("fingerprint") or values.get("fingerprint")
    values = {k: v for k, v in values.items() if v is not None}
    all_spans = sorted(s for _, spans, _ in found for s in spans)
    if any(b[0] < a[1] for a, b in zip(all_spans, all_spans[1:], strict=False)) and not values.get("match_by_key"):
        values["match_by_key"] = True  # shards from two versions of the input: only keys identify items
        report.repaired.append("shard positions overlap while their keys do not (the input changed): done items "
                               "are matched by key from now on")
    ledger = Ledger.open(rd)
    try:
        if values:
            ledger.set_meta(**values)
        for path, spans, _ in found:
            ledger.register_shard(ShardRecord(path.name, intervals.count(spans), path.stat().st_size,
                                              shards.file_checksum(path), spans))
    finally:
        ledger.close()
    rows = sum(intervals.count(s) for _, s, _ in found)
    report.repaired.append(f"new ledger lists {len(found):,} shard(s), {rows:,} rows, "
                           f"from their footers{'; settings restored from the old ledger' if meta else ''}")


def _footer(path: Path) -> tuple[str | None, list[tuple[int, int]], pa.Array]:
    """(why it cannot be re-registered or None, spans, keys). No checksum to trust here: read it all."""
    if path.suffix != ".parquet":
        return "no positions in the file (only Parquet shards carry them)", [], pa.array([], pa.string())
    try:
        spans = shards.shard_spans(path)
        table = pq.read_table(path)
    except Exception as exc:  # noqa: BLE001
        return f"unreadable ({exc})", [], pa.array([], pa.string())
    if not spans or intervals.count(spans) != table.num_rows:
        return "its footer does not give its rows' positions", [], pa.array([], pa.string())
    return None, spans, _as_text(table.column(0))


def _drop_copies(found: list[tuple[Path, list[tuple[int, int]], pa.Array]], rd: RunDir,
                 report: Report) -> list[tuple[Path, list[tuple[int, int]], pa.Array]]:
    """A shard holding keys an earlier one holds is a copy: registering both would export those keys twice."""
    if not found or all_distinct(pa.chunked_array([k for _, _, k in found], pa.string())):
        return found
    seen: set[Any] = set()
    kept = []
    for entry in found:
        keys = entry[2].to_pylist()
        if seen.intersection(keys):
            _move_aside(entry[0], rd)
            report.repaired.append(f"{entry[0].name}: holds keys another shard holds; moved to corrupt/")
            continue
        seen.update(keys)
        kept.append(entry)
    return kept


def _move_aside(path: Path, rd: RunDir) -> bool:
    """Keep a damaged file for inspection in run_dir/corrupt/ instead of deleting it."""
    if not path.exists():
        return False
    aside = rd.path / "corrupt"
    aside.mkdir(exist_ok=True)
    target = aside / path.name
    if target.exists():
        target = aside / f"{path.name}.{time.time_ns()}"
    shutil.move(str(path), target)
    return True


def _json(text: str, default: Any = None) -> Any:
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return default
