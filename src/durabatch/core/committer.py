"""The commit path: finished results wait in a `Pending` buffer; the run loop encodes a full buffer into shard
bytes, and a background thread makes them a durable shard and ONE ledger transaction. Writes and fsync release
the GIL, so commits overlap with the work. The committer thread is the only user of the writer connection while
the run loop is going."""

from __future__ import annotations

import errno
import os
import queue
import shutil
import sqlite3
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from .. import intervals
from ..columns import FieldTypes
from ..errors import DiskFullError, DurabatchError
from ..store import shards
from ..store.ledger import Failure, Ledger, ShardRecord
from ..store.rundir import RunDir


@dataclass
class Pending:
    """Finished, not yet committed. Lost on a crash (and redone): the commit policy bounds its size."""

    positions: list[int] = field(default_factory=list)
    keys: list[Any] = field(default_factory=list)
    outputs: list[Sequence] = field(default_factory=list)  # pieces, in the order of positions: whole batches'
    # results as the engine returned them (lists, or ArrowRecords of a columns batch), or lists of single ones
    failures: list[Failure] = field(default_factory=list)
    meta: dict | None = None  # ledger meta to record in the same transaction (e.g. API metrics for `status`)
    shard: Shard | None = None  # the encoded results, once submitted
    written: ShardRecord | None = None  # a shard a worker already wrote (core/written.py): only listed here
    _singles: list | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.positions) + len(self.failures)

    def extend(self, positions: list[int], keys: list, outputs: Sequence) -> None:
        """A whole batch's results, kept as they came (no copy per item)."""
        self.positions.extend(positions)
        self.keys.extend(keys)
        self.outputs.append(outputs)

    def add(self, pos: int, key: Any, output: Any) -> None:
        self.positions.append(pos)
        self.keys.append(key)
        if not self.outputs or self.outputs[-1] is not self._singles:
            self._singles = []
            self.outputs.append(self._singles)
        self._singles.append(output)


@dataclass(frozen=True)
class Shard:
    data: bytes
    rows: int
    spans: list[tuple[int, int]]


@dataclass(frozen=True)
class Committed:
    rows: int
    failures: int
    shard: str | None
    bytes: int = 0
    warning: str | None = None


LOW_SPACE = 50 * 2**20  # warn below this much free space, or below 20 shards' worth, whichever is more


class Committer:
    def __init__(self, ledger: Ledger, run_dir: RunDir, fmt: str, key_column: str, run_id: int):
        self.ledger = ledger
        self.run_dir = run_dir
        self.fmt = fmt
        self.key_column = key_column
        self.run_id = run_id
        self.job_id = ledger.job_id()  # in every shard's footer: a shard whose commit is lost can be adopted
        self.fields = FieldTypes(ledger.get_meta("result_types"))  # one type per result field, run after run
        self.error: BaseException | None = None
        self._warned = False
        self.committed: deque[Committed] = deque()  # drained by the run loop for its observers
        self._queue: queue.Queue[Pending | None] = queue.Queue(maxsize=2)  # backpressure on a slow disk
        self._thread = threading.Thread(target=self._loop, name="durabatch-committer", daemon=True)
        self._thread.start()

    def submit(self, pending: Pending) -> None:
        """Encode the shard here, then hand it over. Encoding is mostly Python work that would only wait for the
        GIL in the background thread (at every handover); what the thread gets is pure I/O, and a queued commit
        holds compressed bytes instead of Python objects."""
        if self.error is not None:
            return
        try:
            pending.shard = encode(pending, self.fmt, self.key_column, self.job_id, self.fields)
        except BaseException as exc:  # noqa: BLE001 - handed to the run loop, like a failed write
            self.error = exc
            return
        self._queue.put(pending)

    def submit_written(self, pending: Pending) -> None:
        """A shard already written elsewhere (pending.written), with its failures: one ledger transaction."""
        if self.error is None:
            self._queue.put(pending)

    def close(self) -> None:
        """Commit everything submitted, then stop. Raises the first commit error."""
        self._queue.put(None)
        self._thread.join()
        if self.error is not None:
            raise self.error

    def wait_idle(self) -> None:
        """Until everything submitted is written (or failed): e.g. a suspect group's results, before the next group."""
        self._queue.join()

    def _loop(self) -> None:
        while True:
            pending = self._queue.get()
            if pending is None:
                self._queue.task_done()
                return
            if self.error is None:  # after a failed commit nothing more is committed; the run stops
                try:
                    done = commit(self.ledger, self.run_dir, pending, self.fmt, self.key_column, self.run_id)
                    del pending
                    pa.default_memory_pool().release_unused()  # keep Arrow's cached pages from piling up
                    self.committed.append(self._check_space(done))
                except BaseException as exc:  # noqa: BLE001 - handed to the run loop
                    self.error = _explain(exc, self.run_dir)
            self._queue.task_done()

    def _check_space(self, done: Committed) -> Committed:
        free = shutil.disk_usage(self.run_dir.shards).free
        if free < max(LOW_SPACE, 20 * done.bytes) and not self._warned:
            self._warned = True
            return Committed(done.rows, done.failures, done.shard, done.bytes,
                             f"low disk space: {free / 2**20:,.1f} MB free on {self.run_dir.shards}; "
                             "the run will stop cleanly if it runs out (nothing committed is lost)")
        return done


def encode(pending: Pending, fmt: str, key_column: str, job_id: str | None = None,
           fields: FieldTypes | None = None) -> Shard | None:
    """The shard's bytes, rows in source order; the Python objects are released."""
    if not pending.positions:
        return None
    table = shards.build_table(key_column, pending.keys, pending.outputs, fields)
    if fields is not None:
        _apply_field_types(pending, fields)
        if not pending.positions:
            return None
    positions = pending.positions
    if positions != sorted(positions):  # retries and parallel engines finish out of order
        order = sorted(range(len(positions)), key=positions.__getitem__)
        positions = [positions[i] for i in order]
        table = table.take(order)
    spans = intervals.from_sorted(positions)
    pending.keys, pending.outputs, pending._singles = [], [], None
    return Shard(shards.serialize(table, fmt, spans, job_id), table.num_rows, spans)


def _apply_field_types(pending: Pending, fields: FieldTypes) -> None:
    """Items whose result could not join a field's type fail (RELIABILITY #19); newly fixed types are recorded
    in the same ledger transaction as the shard."""
    if fields.rejected:
        for i, message in fields.rejected.items():
            pending.failures.append(Failure(pending.positions[i], pending.keys[i], "ResultTypeError", message, "", 1))
        pending.positions = [p for i, p in enumerate(pending.positions) if i not in fields.rejected]
    if fields.changed:
        pending.meta = {**(pending.meta or {}), "result_types": fields.dump()}
        fields.changed = False


def commit(ledger: Ledger, run_dir: RunDir, pending: Pending, fmt: str, key_column: str, run_id: int) -> Committed:
    """Shard durable first (temp, fsync, rename, fsync dir), then one ledger transaction lists it."""
    shard = pending.shard if pending.shard is not None or pending.written else encode(pending, fmt, key_column)
    record = pending.written
    if shard is not None:
        record = shards.write_atomic(run_dir.shards, shard.data, shard.rows, shard.spans, fmt)
    ledger.commit(record, pending.failures, run_id, pending.meta)
    return Committed(len(pending.positions), len(pending.failures), record.name if record else None,
                     record.bytes if record else 0)


def _explain(exc: BaseException, run_dir: RunDir) -> BaseException:
    disk_full = isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
    ledger_full = isinstance(exc, sqlite3.OperationalError) and "full" in str(exc)
    if disk_full or ledger_full:
        where = run_dir.ledger if ledger_full else getattr(exc, "filename", None) or run_dir.shards
        free = shutil.disk_usage(run_dir.path).free
        return DiskFullError(f"disk full while committing to {where} ({free:,} bytes free): {exc}. Nothing "
                             "committed was lost; free some space and run the same command again.")
    if isinstance(exc, OSError):
        return DurabatchError(f"could not commit to {run_dir.path}: {exc} ({os.strerror(exc.errno or 0)})")
    return exc
