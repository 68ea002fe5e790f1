"""The ledger: a SQLite database (WAL) in the run directory, the only judge of what is done.

Only this module writes SQL (rundir.py knows the directory's layout). One writer connection does every write and
checkpoint (SQLite before 3.51.3 can corrupt a WAL with two concurrent writers); `status` opens it read-only.
A shard row holds the positions it covers as a small blob of intervals, so a commit costs one row per shard,
not one per item."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from .. import intervals
from ..errors import LedgerError, command
from .rundir import RunDir, fsync_path

SCHEMA = """
CREATE TABLE meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE shards (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, rows INTEGER NOT NULL, bytes INTEGER NOT NULL,
    checksum TEXT NOT NULL, positions BLOB NOT NULL, first_pos INTEGER NOT NULL,
    committed_at REAL NOT NULL, run_id INTEGER);
CREATE TABLE failures (
    pos INTEGER PRIMARY KEY, key TEXT, state TEXT NOT NULL, error_type TEXT, message TEXT, traceback TEXT,
    attempts INTEGER NOT NULL, updated_at REAL NOT NULL, run_id INTEGER);
CREATE TABLE attempts (
    id INTEGER PRIMARY KEY, pos INTEGER NOT NULL, key TEXT, error_type TEXT, message TEXT, at REAL NOT NULL);
CREATE TABLE suspects (
    pos INTEGER PRIMARY KEY, key TEXT, guilt INTEGER NOT NULL, reason TEXT, updated_at REAL NOT NULL);
CREATE TABLE runs (
    id INTEGER PRIMARY KEY, pid INTEGER, host TEXT, started_at REAL NOT NULL, ended_at REAL,
    exit_code INTEGER, already_done INTEGER, done INTEGER, failed INTEGER);
INSERT INTO meta VALUES ('schema_version', '1');
"""


class ItemState(StrEnum):
    FAILED = "failed"  # finished with an error; `retry-failed` puts it back
    PENDING = "pending"  # put back by retry-failed: the next run does it
    QUARANTINED = "quarantined"  # killed its worker or the runner K times
    INTERRUPTED = "interrupted"  # at-most-once: the call may have happened; never re-called automatically


@dataclass(frozen=True, slots=True)
class ShardRecord:
    name: str
    rows: int
    bytes: int
    checksum: str
    spans: list[tuple[int, int]]


@dataclass(frozen=True, slots=True)
class Failure:
    pos: int
    key: Any
    error_type: str
    message: str
    traceback: str
    attempts: int
    state: ItemState = ItemState.FAILED


class Ledger:
    def __init__(self, conn: sqlite3.Connection, path: Path):
        self.conn = conn
        self.path = path

    # -- opening ---------------------------------------------------------------------------------------------
    @classmethod
    def open(cls, run_dir: RunDir, durable: bool = False) -> Ledger:
        """The writer connection. A ledger is created under a temporary name and renamed into place, so one
        killed while being created is simply created again."""
        path = run_dir.ledger
        try:
            if not path.exists():
                _create(path)
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.OperationalError) as exc:
            raise LedgerError(f"{path}: cannot create or open the ledger ({_reason(exc, path)})") from None
        try:
            conn.execute("PRAGMA busy_timeout = 5000")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                raise LedgerError(f"{path}: the file system does not support SQLite WAL (got {mode}); "
                                  "use a local disk for the run directory, not a network file system")
            conn.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
            conn.execute("SELECT v FROM meta WHERE k = 'schema_version'").fetchone()
        except sqlite3.DatabaseError as exc:
            conn.close()
            if _read_only(path):
                raise LedgerError(f"{path}: cannot write the ledger ({_reason(exc, path)})") from None
            raise LedgerError(f"{path}: the ledger is unreadable ({exc}); run "
                              f"`{command('verify', run_dir.path, repair=True)}` to rebuild it from the shards, or "
                              "move the run directory aside") from None
        return cls(conn, path)

    @classmethod
    def open_readonly(cls, run_dir: RunDir) -> Ledger:
        """A reader's connection (`status`, `export`, `report`, `verify`). On read-only media, where SQLite
        cannot create the -shm file a WAL reader needs, a finished ledger (no -wal left) is opened immutable:
        nobody can write it there."""
        if not run_dir.ledger.exists():
            raise LedgerError(f"{run_dir.path}: no ledger here (not a durabatch run directory?)")
        try:
            return cls(_connect_readonly(run_dir.ledger, immutable=False), run_dir.ledger)
        except sqlite3.OperationalError as exc:
            if not _cannot_open(exc) or not _read_only(run_dir.ledger):
                raise LedgerError(f"{run_dir.ledger}: the ledger is unreadable ({exc})") from None
        except sqlite3.DatabaseError as exc:
            raise LedgerError(f"{run_dir.ledger}: the ledger is unreadable ({exc})") from None
        wal = run_dir.ledger.with_name(run_dir.ledger.name + "-wal")
        if wal.exists() and wal.stat().st_size > 0:
            raise LedgerError(f"{run_dir.ledger}: on read-only media with commits still in its -wal file (the last "
                              "run was interrupted): copy the run directory to a writable disk to read it")
        try:
            return cls(_connect_readonly(run_dir.ledger, immutable=True), run_dir.ledger)
        except sqlite3.DatabaseError as exc:
            raise LedgerError(f"{run_dir.ledger}: the ledger is unreadable ({exc})") from None

    def close(self) -> None:
        self.conn.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    # -- meta ------------------------------------------------------------------------------------------------
    def get_meta(self, name: str) -> Any:
        row = self.conn.execute("SELECT v FROM meta WHERE k = ?", (name,)).fetchone()
        return json.loads(row[0]) if row else None

    def set_meta(self, **values: Any) -> None:
        with self.transaction() as c:
            c.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                          [(k, json.dumps(v)) for k, v in values.items()])

    def job_id(self) -> str | None:
        """A short id of the job, from its stored fingerprint: written into every Parquet shard's footer, so that
        a shard the ledger lost (a crash before its commit, a deleted -wal) is known to be this job's."""
        row = self.conn.execute("SELECT v FROM meta WHERE k = 'fingerprint'").fetchone()
        return job_id(json.loads(row[0])) if row else None

    # -- runs ------------------------------------------------------------------------------------------------
    def start_run(self) -> int:
        """A run begins: recorded with the items already finished (done, or failed for good) before it."""
        with self.transaction() as c:
            before = self.count_done() + c.execute("SELECT count(*) FROM failures WHERE state != ?",
                                                   (ItemState.PENDING.value,)).fetchone()[0]
            cur = c.execute("INSERT INTO runs (pid, host, started_at, already_done) VALUES (?, ?, ?, ?)",
                            (os.getpid(), os.uname().nodename, time.time(), before))
            return int(cur.lastrowid)

    def end_run(self, run_id: int, exit_code: int, done: int, failed: int) -> None:
        with self.transaction() as c:
            c.execute("UPDATE runs SET ended_at = ?, exit_code = ?, done = ?, failed = ? WHERE id = ?",
                      (time.time(), exit_code, done, failed, run_id))

    def runs(self) -> list[dict]:
        cur = self.conn.execute("SELECT * FROM runs ORDER BY id")
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur]

    # -- commits ---------------------------------------------------------------------------------------------
    def commit(self, shard: ShardRecord | None, failures: list[Failure], run_id: int, meta: dict | None = None) -> None:
        """ONE transaction: register the shard (already durable on disk) and record failures. Items of the
        shard that had failed before stop being failures."""
        now = time.time()
        with self.transaction() as c:
            if shard is not None:
                c.execute(
                    "INSERT INTO shards (name, rows, bytes, checksum, positions, first_pos, committed_at, run_id)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (shard.name, shard.rows, shard.bytes, shard.checksum, intervals.encode(shard.spans),
                     shard.spans[0][0], now, run_id))
                if self._has_failures:
                    c.executemany("DELETE FROM failures WHERE pos >= ? AND pos < ?", shard.spans)
            if failures:
                c.executemany(
                    "INSERT OR REPLACE INTO failures VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [(f.pos, _text(f.key), f.state.value, f.error_type, f.message, f.traceback, f.attempts,
                      now, run_id) for f in failures])
                c.executemany("INSERT INTO attempts (pos, key, error_type, message, at) VALUES (?, ?, ?, ?, ?)",
                              [(f.pos, _text(f.key), f.error_type, f.message, now) for f in failures])
                self._has_failures = True
            if meta:
                c.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                              [(k, json.dumps(v)) for k, v in meta.items()])

    _has_failures = True  # refined by load_state()

    # -- poison suspects ---------------------------------------------------------------------------------------
    def suspects(self) -> dict[int, tuple[str | None, int, str | None]]:
        """pos -> (key, guilt, reason) for items that were in flight when a runner died."""
        rows = self.conn.execute("SELECT pos, key, guilt, reason FROM suspects")
        return {pos: (key, guilt, reason) for pos, key, guilt, reason in rows}

    def save_suspects(self, rows: dict[int, tuple[str | None, int, str | None]], cleared: set[int]) -> None:
        now = time.time()
        with self.transaction() as c:
            c.executemany("DELETE FROM suspects WHERE pos = ?", [(p,) for p in cleared])
            c.executemany("INSERT OR REPLACE INTO suspects VALUES (?, ?, ?, ?, ?)",
                          [(p, _text(k), g, r, now) for p, (k, g, r) in rows.items()])

    # -- verify and repair -----------------------------------------------------------------------------------
    def forget_shards(self, names: list[str]) -> None:
        """Unlist shards (lost or corrupt): their items are pending again, and the next run redoes them."""
        with self.transaction() as c:
            c.executemany("DELETE FROM shards WHERE name = ?", [(n,) for n in names])

    def register_shard(self, shard: ShardRecord) -> None:
        self.adopt([shard])

    def adopt(self, shards: list[ShardRecord]) -> None:
        """List shards found whole on disk whose commit was lost, in ONE transaction; as in a commit, their items
        stop being failures."""
        now = time.time()
        with self.transaction() as c:
            c.executemany(
                "INSERT INTO shards (name, rows, bytes, checksum, positions, first_pos, committed_at, run_id)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, NULL)",
                [(s.name, s.rows, s.bytes, s.checksum, intervals.encode(s.spans), s.spans[0][0], now)
                 for s in shards])
            c.executemany("DELETE FROM failures WHERE pos >= ? AND pos < ?", [sp for s in shards for sp in s.spans])

    # -- reading ---------------------------------------------------------------------------------------------
    def shards(self) -> list[dict]:
        cur = self.conn.execute(
            "SELECT id, name, rows, bytes, checksum, positions, committed_at FROM shards ORDER BY first_pos, id")
        return [{"id": r[0], "name": r[1], "rows": r[2], "bytes": r[3], "checksum": r[4],
                 "spans": intervals.decode(r[5]), "committed_at": r[6]} for r in cur]

    def shard_names(self) -> set[str]:
        return {row[0] for row in self.conn.execute("SELECT name FROM shards")}

    def done_spans(self) -> list[tuple[int, int]]:
        spans: list[tuple[int, int]] = []
        for (blob,) in self.conn.execute("SELECT positions FROM shards"):
            spans.extend(intervals.decode(blob))
        return spans

    def failures(self, states: tuple[ItemState, ...] | None = None) -> list[dict]:
        sql = "SELECT pos, key, state, error_type, message, traceback, attempts, updated_at FROM failures"
        args: tuple = ()
        if states:
            sql += f" WHERE state IN ({','.join('?' * len(states))})"
            args = tuple(s.value for s in states)
        cur = self.conn.execute(sql + " ORDER BY pos", args)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur]

    def failed_positions(self) -> set[int]:
        """Items finished with an error: not redone until `retry-failed` puts them back."""
        rows = self.conn.execute("SELECT pos FROM failures WHERE state != ?", (ItemState.PENDING.value,))
        positions = {r[0] for r in rows}
        self._has_failures = bool(positions) or self.count_failures(ItemState.PENDING) > 0
        return positions

    def count_done(self) -> int:
        return int(self.conn.execute("SELECT coalesce(sum(rows), 0) FROM shards").fetchone()[0])

    def count_failures(self, state: ItemState = ItemState.FAILED) -> int:
        return int(self.conn.execute("SELECT count(*) FROM failures WHERE state = ?", (state.value,)).fetchone()[0])

    def failures_by_type(self) -> list[tuple[str, str, int, str | None]]:
        """(error type, state, count, an example message), grouped in SQL: a job where every item failed holds a
        million tracebacks, which `failures()` would load."""
        return list(self.conn.execute("SELECT coalesce(error_type, '?'), state, count(*), max(message) FROM failures "
                                      "GROUP BY 1, 2"))

    def shard_totals(self) -> tuple[int, int, float | None]:
        """(shards, bytes, time of the latest commit)."""
        n, size, latest = self.conn.execute(
            "SELECT count(*), coalesce(sum(bytes), 0), max(committed_at) FROM shards").fetchone()
        return int(n), int(size), latest

    def attempt_history(self) -> dict[int, list[dict]]:
        """pos -> every recorded failed attempt (error type, message, time), oldest first."""
        history: dict[int, list[dict]] = {}
        for pos, error_type, message, at in self.conn.execute(
                "SELECT pos, error_type, message, at FROM attempts ORDER BY id"):
            history.setdefault(pos, []).append({"error_type": error_type, "message": message, "at": at})
        return history

    def progress_mark(self) -> tuple:
        """Changes whenever a run gets anywhere: items done or failed, suspects found, groups split, guilt pinned."""
        c = self.conn
        return (self.count_done(), c.execute("SELECT count(*), group_concat(state) FROM failures").fetchone(),
                c.execute("SELECT count(*), coalesce(sum(guilt), 0) FROM suspects").fetchone(),
                self.get_meta("suspect_caps"))  # a suspect group split by a death is progress too

    def integrity(self) -> str:
        """SQLite's integrity check: 'ok', or what is wrong."""
        return str(self.conn.execute("PRAGMA integrity_check").fetchone()[0])

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[None]:
        """Reads inside see one state of the ledger, while a runner keeps committing (read-only connections)."""
        self.conn.execute("BEGIN")
        try:
            yield
        finally:
            self.conn.execute("ROLLBACK")

    def recent_commits(self, seconds: float) -> list[tuple[float, int]]:
        since = time.time() - seconds
        return list(self.conn.execute(
            "SELECT committed_at, rows FROM shards WHERE committed_at >= ? ORDER BY committed_at", (since,)))

    def put_back(self, states: tuple[ItemState, ...], error_type: str | None = None) -> int:
        """Mark failures as pending again so the next run does them; history stays in `attempts`."""
        sql = f"UPDATE failures SET state = ? WHERE state IN ({','.join('?' * len(states))})"
        args: list[Any] = [ItemState.PENDING.value, *(s.value for s in states)]
        if error_type:
            sql += " AND error_type = ?"
            args.append(error_type)
        with self.transaction() as c:
            return c.execute(sql, args).rowcount


def job_id(fingerprint: Any) -> str:
    """The id of the job a fingerprint describes (16 hex digits)."""
    text = json.dumps(fingerprint, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def _create(path: Path) -> None:
    """A new ledger, under a temporary name renamed into place (one killed while being created is made again)."""
    tmp = path.with_name(path.name + ".init")
    tmp.unlink(missing_ok=True)
    init = sqlite3.connect(tmp)
    init.executescript(SCHEMA)
    init.commit()
    init.close()
    fsync_path(tmp)
    os.replace(tmp, path)
    fsync_path(path.parent)


def _connect_readonly(path: Path, immutable: bool) -> sqlite3.Connection:
    uri = f"file:{path}?mode=ro" + ("&immutable=1" if immutable else "")
    conn = sqlite3.connect(uri, uri=True, check_same_thread=False)
    try:
        conn.execute("PRAGMA busy_timeout = 5000")
        conn.execute("SELECT count(*) FROM shards").fetchone()
    except BaseException:
        conn.close()
        raise
    return conn


def _cannot_open(exc: sqlite3.Error) -> bool:
    return "unable to open" in str(exc) or "readonly" in str(exc) or "read-only" in str(exc)


def _read_only(path: Path) -> bool:
    """The directory is on a read-only file system (or cannot be written)."""
    try:
        return bool(os.statvfs(path.parent).f_flag & os.ST_RDONLY) or not os.access(path.parent, os.W_OK)
    except OSError:
        return False


def _reason(exc: BaseException, path: Path) -> str:
    if isinstance(exc, OSError) and exc.errno is not None:
        return os.strerror(exc.errno).lower()
    return f"read-only file system: {exc}" if _read_only(path) else str(exc)


def _text(key: Any) -> str | None:
    return None if key is None else str(key)
