"""A job through a provider's Batch API, durable at every instant:

    plan items in no live chunk -> request file (fsync) -> chunk recorded in the ledger (the intent) -> upload,
    record the file id -> look for a batch carrying the chunk's id in its metadata, else create one -> record its
    id -> poll with backoff -> download output and error files -> ONE commit (shard + failures) -> chunk done

A kill anywhere leaves a state the next run finishes from: a planned chunk is uploaded (its file is on disk), an
uploaded one is adopted by listing batches (the kill may have fallen between create and record) or created, a
submitted one is polled. An item belongs to one live chunk at most, so it is never billed twice; items already
committed are skipped when a chunk's results are committed again after a kill."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..columns import FieldTypes
from ..core.committer import Pending, commit, encode
from ..core.events import Observer, Observers, Stats
from ..core.plan import Plan, check_fingerprint, make_plan
from ..core.spec import Keys, Selection
from ..core.summary import RunSummary, resume_message
from ..errors import ConfigError, ExitCode, InputError, option
from ..intervals import Intervals
from ..policies.stopping import StopFlag
from ..sources.base import BadRow, Source
from ..store import batch_chunks as store
from ..store.batch_chunks import Chunk, ChunkState
from ..store.ledger import Failure, ItemState, Ledger
from ..store.rundir import RunDir, fsync_path
from .lines import LineResult, Prices, default_output, estimate_cost, read_results, request_line
from .provider import BatchInfo, Provider

MAX_POLL_ERRORS = 10  # consecutive failed polls of the provider before the run gives up (resumable)


@dataclass
class BatchJob:
    """What a Batch-API run is given (made by the edge from the settings)."""

    provider: Provider
    build: Callable[[dict], dict]  # record -> one request body
    parse: Callable[[dict, dict], Any] | None  # (record, response body) -> the item's result
    source: Source
    fingerprint: dict[str, Any]
    description: dict[str, Any]
    keys: Keys
    selection: Selection = Selection()
    output_format: str = "parquet"
    poll_max: float = 60.0  # polls back off from 1 s (or less) to this
    prices: Prices | None = None
    max_cost: float | None = None
    allow_changed: bool = False
    observers: list[Observer] = field(default_factory=list)


class BatchRun:
    def __init__(self, job: BatchJob, rd: RunDir, ledger: Ledger):
        self.job, self.rd, self.ledger = job, rd, ledger
        self.provider = job.provider
        self.observers = Observers(job.observers)
        self.stop = StopFlag()
        self.folder = rd.path / "batch_requests"
        self.job_id = ""
        self.stopped: str | None = None

    def execute(self) -> RunSummary:
        self.stop.install()
        try:
            return self._execute(time.monotonic())
        finally:
            self.stop.restore()

    def _execute(self, t0: float) -> RunSummary:
        job, ledger = self.job, self.ledger
        if job.keys.column is None:
            raise ConfigError(f"{option('batch_api', None)} needs {option('key', None)}: each request's custom_id is "
                              "its item's key")
        messages = check_fingerprint(ledger, job.fingerprint, job.allow_changed)
        self.rd.write_job({"settings": job.description, "fingerprint": job.fingerprint})
        store.ensure(ledger)
        self.run_id = ledger.start_run()
        self.job_id = ledger.job_id() or "job"
        plan = make_plan(ledger, self.rd, job.source, job.keys, job.selection)
        if plan.skip_keys is not None:
            raise ConfigError(f"{option('batch_api', None)} cannot resume a job whose input changed "
                              f"({option('allow_changed')})")
        self.stats = Stats(total=plan.total, already_done=plan.already_done + plan.already_failed,
                           source=job.source.describe(), run_dir=str(self.rd.path), key_mode=job.keys.column)
        ledger.set_meta(total=plan.total, range=[plan.lo, plan.hi])
        self.observers.on_start(self.stats)
        for message in messages + plan.messages + resume_message(plan):
            self.observers.on_message(message)
        self._work(plan)
        return self._end(t0)

    def _end(self, t0: float) -> RunSummary:
        self.stats.elapsed = time.monotonic() - t0
        failed_total = sum(self.ledger.count_failures(s)
                           for s in (ItemState.FAILED, ItemState.QUARANTINED, ItemState.INTERRUPTED))
        code = ExitCode.STOPPED if self.stopped else ExitCode.FAILED if failed_total else ExitCode.DONE
        self.ledger.end_run(self.run_id, code, self.stats.done, self.stats.failed)
        self.observers.on_end(self.stats, code, self.stopped)
        return RunSummary(code, self.stats.total, self.stats.already_done, self.stats.done, self.stats.failed,
                          failed_total, self.stopped, self.stats.elapsed, str(self.rd.path))

    def _work(self, plan: Plan) -> None:
        try:
            self._steps(plan)
        except Exception as exc:
            if not _provider_error(exc):
                raise
            if getattr(exc, "status_code", None) in (400, 401, 403, 404):
                raise ConfigError(f"the provider refused a request: {type(exc).__name__}: {exc}") from None
            self.observers.on_message(f"the provider failed ({type(exc).__name__}: {exc}): stopping. Run the same "
                                      "command again to resume; no item is ever submitted twice")
            self.stopped = "provider error"

    def _steps(self, plan: Plan) -> None:
        self.folder.mkdir(exist_ok=True)
        live = store.chunks(self.ledger, live_only=True)
        self._remove_stray_files({c.id for c in live})
        for chunk in live:  # left by an earlier run: finish submitting them first
            self._submit(chunk)
        if live:
            self.observers.on_message(f"resuming {len(live)} batch(es) submitted earlier")
        taken = {p for c in live for p in c.positions}
        if not self.stop.requested and not plan.nothing_to_do:
            self._plan_chunks(plan, taken)
        if not self.stop.requested:
            self._poll()
        if self.stop.requested and not self.stopped:
            self.stopped = self.stop.reason

    # -- planning and submitting -------------------------------------------------------------------------------
    def _plan_chunks(self, plan: Plan, taken: set[int]) -> None:
        """Cut the items in no live chunk into chunks within the provider's limits; submit each as it fills."""
        lines: list[bytes] = []
        positions: list[int] = []
        keys: list[Any] = []
        size, cost = 0, 0.0
        failures: list[Failure] = []
        wanted = (lambda p: plan.wanted(p) and p not in taken) if taken else plan.wanted
        for block_positions, wheres, records in self.job.source.blocks(wanted, plan.hi):
            for pos, where, record in zip(block_positions, wheres, records, strict=True):
                line, key, item_cost = self._request(pos, where, record, failures)
                if line is None:
                    continue
                if lines and (len(lines) >= self.provider.max_requests or size + len(line) > self.provider.max_bytes):
                    if not self._new_chunk(lines, positions, keys, cost):
                        return self._commit_failures(failures)
                    lines, positions, keys, size, cost = [], [], [], 0, 0.0
                lines.append(line)
                positions.append(pos)
                keys.append(key)
                size += len(line)
                cost += item_cost
            if self.stop.requested:
                return self._commit_failures(failures)
        if lines:
            self._new_chunk(lines, positions, keys, cost)
        self._commit_failures(failures)

    def _request(self, pos: int, where: Any, record: Any, failures: list[Failure]) -> tuple[bytes | None, Any, float]:
        """An item's request line, key and estimated cost; a bad row or a failing build() is a failure instead."""
        if isinstance(record, BadRow):
            return self._bad(pos, None, record.where, record.message, failures)
        column = self.job.keys.column
        if not isinstance(record, dict) or record.get(column) is None:
            return self._bad(pos, None, self.job.source.where(where), f"no key '{column}'", failures)
        key = record[column]
        try:
            body = self.job.build(record)
            if not isinstance(body, dict):
                raise TypeError(f"build() returned {type(body).__name__}, not a request body (dict)")
        except Exception as exc:  # noqa: BLE001 - the item's failure
            failures.append(Failure(pos, key, type(exc).__name__, str(exc), "", 1))
            self.stats.failed += 1
            return None, key, 0.0
        return (request_line(str(key), body, self.provider.endpoint), key,
                estimate_cost(body, self.job.prices, self.provider.discount))

    def _bad(self, pos: int, key: Any, where: str, message: str, failures: list[Failure]) -> tuple[None, Any, float]:
        if not self.job.keys.skip_bad_rows:
            raise InputError(f"{where}: {message}. Fix the row, or pass {option('skip_bad_rows')} to record it as a "
                             "failure.")
        failures.append(Failure(pos, key, "BadRow", f"{where}: {message}", "", 1))
        self.stats.failed += 1
        return None, key, 0.0

    def _new_chunk(self, lines: list[bytes], positions: list[int], keys: list[Any], cost: float) -> bool:
        """Write the request file, record the chunk (the intent), then submit it. False: over the budget."""
        seq, spent = store.totals(self.ledger)
        if self.job.max_cost is not None and spent + cost > self.job.max_cost:
            self.observers.on_message(f"{option('max_cost', self.job.max_cost)}: the next {len(lines):,} requests are "
                                      f"estimated at {cost:.4f} (already submitted: {spent:.4f}); not submitting. "
                                      "Run again with a larger budget to continue")
            self.stopped = "budget"
            return False
        order = sorted(range(len(positions)), key=positions.__getitem__)
        chunk = Chunk(uuid.uuid4().hex[:20], seq, self.provider.name, ChunkState.PLANNED,
                      [positions[i] for i in order], [keys[i] for i in order], cost, planned_at=time.time())
        _write_atomic(self._file(chunk), b"".join(lines))
        store.add(self.ledger, chunk)
        self._submit(chunk)
        return True

    def _submit(self, chunk: Chunk) -> None:
        if chunk.state is ChunkState.PLANNED:
            chunk.file_id = self.provider.upload_file(self._file(chunk))
            chunk.state = ChunkState.UPLOADED
            store.update(self.ledger, chunk)
        if chunk.state is ChunkState.UPLOADED:
            info = self._find(chunk)
            adopted = info is not None
            if info is None:
                assert chunk.file_id is not None
                info = self.provider.create_batch(chunk.file_id, {"durabatch_job": self.job_id,
                                                                  "durabatch_chunk": chunk.id,
                                                                  "durabatch_seq": str(chunk.seq)})
            chunk.batch_id, chunk.batch_status, chunk.counts = info.id, info.status, info.counts
            chunk.state = ChunkState.SUBMITTED
            store.update(self.ledger, chunk)
            self.observers.on_message(f"batch {info.id}: {len(chunk.positions):,} requests"
                                      + (" (adopted: created before the last run ended)" if adopted else ""))

    def _find(self, chunk: Chunk) -> BatchInfo | None:
        """The batch created for this chunk by a run killed before it could record the id, if any."""
        for info in self.provider.list_batches(since=chunk.planned_at - 600):
            if info.metadata.get("durabatch_chunk") == chunk.id:
                return info
        return None

    # -- waiting and collecting --------------------------------------------------------------------------------
    def _poll(self) -> None:
        delay, errors = min(1.0, self.job.poll_max), 0
        while not self.stop.requested:
            live = store.chunks(self.ledger, live_only=True)
            if not live:
                return
            try:
                for chunk in live:
                    self._check(chunk)
                errors = 0
            except Exception as exc:  # noqa: BLE001 - the provider is unreachable for now: keep polling
                errors += 1
                if errors >= MAX_POLL_ERRORS:
                    raise
                self.observers.on_message(f"polling the batches failed ({type(exc).__name__}: {exc}); again in "
                                          f"{delay:.0f}s")
            if store.chunks(self.ledger, live_only=True):
                self._sleep(delay)
                delay = min(delay * 1.5, self.job.poll_max)

    def _check(self, chunk: Chunk) -> None:
        if chunk.state is not ChunkState.SUBMITTED:
            self._submit(chunk)
        assert chunk.batch_id is not None
        info = self.provider.get_batch(chunk.batch_id)
        if (info.status, info.counts) != (chunk.batch_status, chunk.counts):
            chunk.batch_status, chunk.counts = info.status, info.counts
            store.update(self.ledger, chunk)
            self.observers.on_message(f"batch {info.id}: {info.status} {_counts(info.counts)}")
        if info.terminal:
            self._collect(chunk, info)

    def _sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self.stop.requested and time.monotonic() < end:
            time.sleep(min(0.05, end - time.monotonic()))

    def _collect(self, chunk: Chunk, info: BatchInfo) -> None:
        """Download what the batch produced and commit every item of the chunk: a result or a failure."""
        results: dict[str, LineResult] = {}
        for file_id in (info.output_file_id, info.error_file_id):
            if file_id:
                results.update(read_results(self.provider.download(file_id)))
        done, failed = Intervals(self.ledger.done_spans()), self.ledger.failed_positions()
        todo = [(p, k) for p, k in zip(chunk.positions, chunk.keys, strict=True) if p not in done and p not in failed]
        records = self._records([p for p, _ in todo]) if self.job.parse and todo else {}
        pending = Pending()
        for pos, key in todo:
            self._outcome(pending, pos, key, results.get(str(key)), info, records.get(pos))
        if len(pending):
            self._commit(pending)
        chunk.state = ChunkState.DONE
        store.update(self.ledger, chunk)
        self._file(chunk).unlink(missing_ok=True)
        self.observers.on_message(f"batch {info.id} {info.status}: committed {len(pending.positions):,} results, "
                                  f"{len(pending.failures):,} failures")

    def _outcome(self, pending: Pending, pos: int, key: Any, result: LineResult | None, info: BatchInfo,
                 record: dict | None) -> None:
        if result is None:
            why = "; ".join(info.errors) or f"the batch ended {info.status} without a result for this request"
            result = LineResult(None, f"Batch{info.status.title()}", why)
        if result.body is not None:
            try:
                output = self.job.parse(record or {}, result.body) if self.job.parse else default_output(result.body)
            except Exception as exc:  # noqa: BLE001 - the item's failure
                result = LineResult(None, type(exc).__name__, f"parse(): {exc}")
            else:
                pending.add(pos, key, output)
                self.stats.done += 1
                return
        pending.failures.append(Failure(pos, key, result.error_type or "BatchRequestError", result.message or "", "",
                                        1))
        self.stats.failed += 1

    def _records(self, positions: list[int]) -> dict[int, Any]:
        wanted = set(positions)
        out = {}
        for block_positions, _, records in self.job.source.blocks(wanted.__contains__, max(wanted) + 1):
            out.update(zip(block_positions, records, strict=True))
        return out

    def _commit(self, pending: Pending) -> None:
        fmt, column = self.job.output_format, self.job.keys.output_column
        pending.shard = encode(pending, fmt, column, self.ledger.job_id(), FieldTypes(self.ledger.get_meta(
            "result_types")))
        done = commit(self.ledger, self.rd, pending, fmt, column, self.run_id)
        self.stats.committed += done.rows + done.failures
        self.observers.on_commit(self.stats, done.rows, done.failures, done.shard)

    def _commit_failures(self, failures: list[Failure]) -> None:
        if failures:
            self.ledger.commit(None, failures, self.run_id)

    # -- files -------------------------------------------------------------------------------------------------
    def _file(self, chunk: Chunk) -> Path:
        return self.folder / f"{chunk.id}.jsonl"

    def _remove_stray_files(self, live: set[str]) -> None:
        """Request files of chunks never recorded (a kill between writing and recording) or already done."""
        for path in self.folder.iterdir():
            if path.stem not in live:
                path.unlink(missing_ok=True)


def _provider_error(exc: BaseException) -> bool:
    """An error of the provider's client or of the network (matched by module, not imported)."""
    return isinstance(exc, ConnectionError | TimeoutError) or any(
        cls.__module__.split(".")[0] in ("openai", "httpx", "anthropic") for cls in type(exc).__mro__)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_path(path.parent)


def _counts(counts: dict) -> str:
    return f"({counts.get('completed', 0)}/{counts.get('total', 0)} done, {counts.get('failed', 0)} failed)" \
        if counts else ""
