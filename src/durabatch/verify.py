"""`durabatch verify`: check every shard against the ledger, name what is wrong; `--repair` puts the items of
lost or corrupt shards back to pending (the next run redoes only them), removes crash leftovers, and rebuilds an
unreadable ledger from the Parquet shards' footers."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa

from . import shards
from .errors import LedgerError
from .ledger import Ledger, RunDir, ShardRecord, run_lock
from .plan import all_distinct


@dataclass
class Problem:
    kind: str  # ledger | missing | corrupt | rows | spans | orphan | duplicate_keys
    file: str
    detail: str


@dataclass
class Report:
    run_dir: str
    shards: int = 0
    rows: int = 0
    problems: list[Problem] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}

    def render(self) -> str:
        lines = [f"{self.run_dir}: {self.shards:,} shards, {self.rows:,} rows listed"]
        lines += [f"  {p.kind}: {p.file}: {p.detail}" for p in self.problems]
        lines += [f"  repaired: {r}" for r in self.repaired]
        if self.ok:
            lines.append("  ok: every listed shard is present, readable and matches the ledger")
        elif not self.repaired:
            lines.append("  run `durabatch verify --repair` to put the affected items back to pending")
        return "\n".join(lines)


def _checksum(path: Path) -> str:
    return hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()


def verify(run_dir: str | Path) -> Report:
    rd = RunDir(run_dir)
    report = Report(str(rd.path))
    try:
        ledger = Ledger.open_readonly(rd)
        status = ledger.conn.execute("PRAGMA integrity_check").fetchone()[0]
        if status != "ok":
            raise LedgerError(f"integrity check: {status}")
        listed = ledger.shards()
    except (LedgerError, sqlite3.DatabaseError) as exc:
        report.problems.append(Problem("ledger", str(rd.ledger), f"unreadable: {exc}"))
        return report
    ledger.close()
    report.shards = len(listed)
    report.rows = sum(s["rows"] for s in listed)
    keys: list[pa.Array] = []
    for shard in listed:
        keys.extend(_check_shard(rd, shard, report))
    names = {s["name"] for s in listed}
    for path in sorted(rd.shards.iterdir()) if rd.shards.exists() else []:
        if path.name not in names:
            kind = "a temporary file" if path.name.startswith(shards.TMP_PREFIX) else "not listed in the ledger"
            report.problems.append(Problem("orphan", str(path), f"{kind} (left by an interrupted commit)"))
    if keys and not all_distinct(pa.chunked_array(keys)):
        report.problems.append(Problem("duplicate_keys", str(rd.shards), "a key appears in more than one shard"))
    return report


def _check_shard(rd: RunDir, shard: dict, report: Report) -> list[pa.Array]:
    path = rd.shards / shard["name"]
    if not path.exists():
        report.problems.append(Problem("missing", str(path), f"listed with {shard['rows']:,} rows, not on disk"))
        return []
    if path.stat().st_size != shard["bytes"] or _checksum(path) != shard["checksum"]:
        report.problems.append(Problem("corrupt", str(path), "size or checksum differs from the ledger's"))
        return []
    try:
        table = shards.read_shard(path)
    except Exception as exc:  # noqa: BLE001 - any unreadable shard is named, whatever the reader says
        report.problems.append(Problem("corrupt", str(path), f"unreadable: {exc}"))
        return []
    if table.num_rows != shard["rows"]:
        report.problems.append(Problem("rows", str(path), f"{table.num_rows:,} rows, ledger says {shard['rows']:,}"))
        return []
    if path.suffix == ".parquet":
        spans = shards.shard_spans(path)
        if spans is not None and [tuple(s) for s in spans] != [tuple(s) for s in shard["spans"]]:
            report.problems.append(Problem("spans", str(path), "positions in the file differ from the ledger's"))
            return []
    return [table.column(0).combine_chunks().cast(pa.string())] if table.num_columns else []


def repair(run_dir: str | Path) -> Report:
    """Fix what verify found, under the run lock (never while a job runs)."""
    rd = RunDir(run_dir)
    report = verify(rd.path)
    if report.ok:
        return report
    with run_lock(rd):
        aside = rd.path / "corrupt"
        if any(p.kind == "ledger" for p in report.problems):
            report.repaired += _rebuild_ledger(rd, aside)
        else:
            bad = [p for p in report.problems if p.kind in ("missing", "corrupt", "rows", "spans")]
            ledger = Ledger.open(rd)
            try:
                ledger.forget_shards([Path(p.file).name for p in bad])
            finally:
                ledger.close()
            for problem in bad:
                _move_aside(Path(problem.file), aside)
                report.repaired.append(f"{Path(problem.file).name}: items put back to pending")
            for problem in (p for p in report.problems if p.kind == "orphan"):
                Path(problem.file).unlink(missing_ok=True)
                report.repaired.append(f"{Path(problem.file).name}: removed (not committed)")
    return report


def _move_aside(path: Path, aside: Path) -> None:
    if path.exists():
        aside.mkdir(exist_ok=True)
        shutil.move(str(path), aside / path.name)


def _rebuild_ledger(rd: RunDir, aside: Path) -> list[str]:
    """A new ledger from the Parquet shards' own footers; the old one kept aside for inspection."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    done = []
    for suffix in ("", "-wal", "-shm"):
        old = rd.ledger.with_name(rd.ledger.name + suffix)
        if old.exists():
            old.rename(old.with_name(f"{old.name}.corrupt-{stamp}"))
    done.append(f"ledger moved aside to {rd.ledger.name}.corrupt-{stamp}; failure records are lost")
    ledger = Ledger.open(rd)
    try:
        if rd.job.exists():
            ledger.set_meta(fingerprint=json.loads(rd.job.read_text())["fingerprint"])
        taken: list[tuple[int, int]] = []
        for path in sorted(rd.shards.iterdir()):
            spans = _readable_spans(path)
            if spans is None or any(s < te and ts < e for s, e in spans for ts, te in taken):
                _move_aside(path, aside)
                done.append(f"{path.name}: cannot be re-registered, moved to corrupt/; its items will be redone")
                continue
            data_rows = sum(e - s for s, e in spans)
            ledger.register_shard(ShardRecord(path.name, data_rows, path.stat().st_size, _checksum(path), spans))
            taken.extend(spans)
            done.append(f"{path.name}: re-registered ({data_rows:,} rows)")
    finally:
        ledger.close()
    return done


def _readable_spans(path: Path) -> list[tuple[int, int]] | None:
    if path.suffix != ".parquet" or path.name.startswith(shards.TMP_PREFIX):
        return None
    try:
        spans = shards.shard_spans(path)
        rows = shards.read_shard(path).num_rows
    except Exception:  # noqa: BLE001
        return None
    if not spans or sum(e - s for s, e in spans) != rows:
        return None
    return [tuple(s) for s in spans]
