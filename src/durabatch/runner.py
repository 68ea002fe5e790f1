"""The run loop: plan, dispatch batches to an engine, collect outcomes, commit, stop.

    source -> plan (skip what the ledger has) -> batches -> engine -> outcomes -> Pending -> committer
                                       events -> observers (progress, run log)
"""

from __future__ import annotations

import hashlib
import heapq
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from . import job
from .committer import Committer, Pending
from .engines import Batch, BatchResult, Engine, make_engine
from .errors import ConfigError, DurabatchError, InputError
from .ledger import Failure, ItemState, Ledger, RunDir, run_lock
from .observe import Observer, Observers, Stats
from .observe.logs import RunLog
from .observe.progress import make_progress
from .plan import Plan, check_fingerprint, make_plan
from .retry import RetryPolicy, full_jitter, make_retryable
from .settings import JobSettings
from .sources import BadRow, Source, open_source
from .stopping import StopFlag, wall_deadline
from .work import ItemError, Work, resolve

EXIT_DONE, EXIT_FAILED, EXIT_USAGE, EXIT_STOPPED = 0, 1, 2, 75


@dataclass(frozen=True)
class RunSummary:
    exit_code: int
    total: int | None
    already_done: int
    done: int  # committed by this run
    failed: int  # failed in this run
    failed_total: int  # failures in the ledger for the whole job
    stopped: str | None  # why the run stopped early, if it did
    elapsed: float
    run_dir: str

    def __str__(self) -> str:
        state = {0: "finished", 1: "finished with failed items", 75: f"stopped early ({self.stopped})"}
        text = (f"{state.get(self.exit_code, self.exit_code)}: {self.done:,} done in this run, "
                f"{self.already_done:,} before, {self.failed_total:,} failed; {self.elapsed:.1f}s")
        if self.exit_code == EXIT_STOPPED:
            text += f". Run the same command again to resume ({self.run_dir})."
        elif self.failed_total:
            text += f". See `durabatch export {self.run_dir} --failed --to failed.jsonl`."
        return text


def run(fn: Any, source: Any = None, *, key: str | None = None, run_dir: str | None = None,
        batch_size: int | None = None, workers: int = 1, engine: str | None = None,
        observers: list[Observer] | None = None, **settings: Any) -> RunSummary:
    """Run fn over source as a durable job in run_dir; re-running the same call resumes.

    fn: a function (record -> dict), a batch function (with batch_size: records -> list), a class (instantiated
    once per worker, setup() called) or "package.module:name". Other settings: see JobSettings."""
    values = {"key": key, "run_dir": run_dir, "batch_size": batch_size, "workers": workers, "engine": engine,
              **settings}
    from .settings import merge

    config = merge(("arguments", {k: v for k, v in values.items() if v is not None}))
    return run_job(fn, source, config, observers or [])


def run_job(fn: Any, source: Any, settings: JobSettings, observers: list[Observer]) -> RunSummary:
    if settings.run_dir is None:
        raise ConfigError("run_dir is required: where the ledger and results of this job live")
    target = resolve(fn) if isinstance(fn, str) else fn
    if target is None:
        raise ConfigError("fn is required: package.module:callable")
    src = open_source(source if source is not None else settings.input or _missing_input())
    rd = RunDir(settings.run_dir)
    rd.create()
    with run_lock(rd):
        ledger = Ledger.open(rd)
        try:
            return _Run(target, src, settings, rd, ledger, observers).execute()
        finally:
            ledger.close()


def _missing_input() -> Any:
    raise ConfigError("no input: pass --input FILE (or source= in Python)")


class _Run:
    def __init__(self, target: Any, source: Source, settings: JobSettings, rd: RunDir, ledger: Ledger,
                 observers: list[Observer]):
        self.target, self.source, self.settings, self.rd, self.ledger = target, source, settings, rd, ledger
        self.key_column = settings.key or "_key"
        self.retry = RetryPolicy(max_attempts=settings.max_attempts,
                                 backoff=full_jitter(settings.backoff_base, settings.backoff_max),
                                 retryable=make_retryable(settings.retry_on, settings.fatal_on))
        progress = make_progress(settings.progress, settings.log_every)
        self.observers = Observers([o for o in (progress, RunLog(rd.logs / "run.log")) if o] + observers)
        self.stop = StopFlag()
        self.pending = Pending()
        # Items waiting to run again: (ready_at, attempt, solo, pos, key, record); solo ones run alone.
        self._retries: list[tuple[float, int, bool, int, Any, dict]] = []
        self._next_id = 0
        self._chunk = 1 if settings.batch_size is None else settings.batch_size
        self._seen: dict[Any, str] | None = None
        self._source_done = False
        self.started = time.time()
        self.deadline: tuple[float, str] | None = None
        self._slowest = 0.0  # the longest batch lately: how early to stop before a deadline
        self._last_commit = time.monotonic()

    # -- the whole run -----------------------------------------------------------------------------------------
    def execute(self) -> RunSummary:
        t0 = time.monotonic()
        wall_deadline(self.settings.deadline, self.settings.deadline_at, time.time())  # bad values fail early
        current = job.fingerprint(self.target, self.settings, self.source.identity())
        messages = check_fingerprint(self.ledger, current, self.settings.allow_changed)
        self._write_job_json(current)
        plan = make_plan(self.ledger, self.rd, self.source, self.settings)
        self.plan = plan
        self.stats = Stats(total=plan.total, already_done=plan.already_done + plan.already_failed,
                           source=self.source.describe(), run_dir=str(self.rd.path),
                           key_mode=f"column '{self.settings.key}'" if self.settings.key else "content hash")
        if plan.check_keys_in_stream:
            self._seen = {}
        self.ledger.set_meta(total=plan.total, range=[plan.lo, plan.hi])
        run_id = self.ledger.start_run(self.stats.already_done)
        self.observers.on_start(self.stats)
        for message in messages + plan.messages + self._resume_message(plan):
            self.observers.on_message(message)
        stopped, error = None, None
        if not plan.nothing_to_do:
            stopped, error = self._work(run_id, t0)
        self.stats.elapsed = time.monotonic() - t0
        failed_total = self.ledger.count_failures(ItemState.FAILED) + self.ledger.count_failures(ItemState.QUARANTINED)
        code = EXIT_USAGE if error else EXIT_STOPPED if stopped else EXIT_FAILED if failed_total else EXIT_DONE
        self.ledger.end_run(run_id, code, self.stats.done, self.stats.failed)
        self.observers.on_end(self.stats, code, stopped or (str(error) if error else None))
        if error is not None:
            raise error
        return RunSummary(code, plan.total, self.stats.already_done, self.stats.done, self.stats.failed,
                          failed_total, stopped, self.stats.elapsed, str(self.rd.path))

    def _resume_message(self, plan: Plan) -> list[str]:
        if plan.nothing_to_do:
            return [f"nothing to do: all {plan.total:,} items are already finished "
                    f"({plan.already_failed:,} of them failed)"]
        if plan.already_done or plan.already_failed:
            return [f"resuming: {plan.already_done:,} items already done, {plan.already_failed:,} failed earlier, "
                    f"{plan.total - plan.already_done - plan.already_failed:,} to go" if plan.total is not None
                    else f"resuming: {plan.already_done:,} items already done"]
        return []

    def _write_job_json(self, fingerprint: dict) -> None:
        data = {"settings": self.settings.model_dump(), "fingerprint": fingerprint}
        tmp = self.rd.job.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2, default=str))
        tmp.replace(self.rd.job)

    def _work(self, run_id: int, t0: float) -> tuple[str | None, BaseException | None]:
        engine = make_engine(self._engine_name(), self.settings.workers)
        engine.start(Work(self.target, batched=self.settings.batch_size is not None))
        self.committer = Committer(self.ledger, self.rd, self.settings.output_format, self.key_column, run_id)
        self.stop.install()
        self.deadline = wall_deadline(self.settings.deadline, self.settings.deadline_at, self.started)
        if self.deadline:
            left = self.deadline[0] - time.time()
            self.observers.on_message(f"deadline: {self.deadline[1]}, in {left / 60:.1f} min")
        error: BaseException | None = None
        cancel = False
        try:
            try:
                self._loop(engine, t0)
            except (InputError, DurabatchError) as exc:
                error = exc  # finish what is in flight and commit it before reporting
                self.stop.request("error")
            except KeyboardInterrupt:
                self.stop.request("SIGINT")
                self.stop.request("SIGINT")
            cancel = self._drain(engine, t0)
        finally:
            self.stop.restore()
            engine.close(cancel=cancel)
            self._commit_now()
            try:
                self.committer.close()
            except BaseException as exc:  # noqa: BLE001
                error = error or exc
            self._drain_commits()
        stopped = self.stop.reason if self.stop.requested and error is None else None
        return stopped, error

    def _engine_name(self) -> str:
        return self.settings.engine or ("inline" if self.settings.workers == 1 else "threads")

    # -- the loop ----------------------------------------------------------------------------------------------
    def _loop(self, engine: Engine, t0: float) -> None:
        items = self._items()
        last_notice = 0.0
        while not self.stop.requested:
            while engine.in_flight() < engine.slots:
                batch = self._next_batch(items)
                if batch is None:
                    break
                with self._interruptible():
                    engine.submit(batch)
            if self._source_done and not engine.in_flight() and not self._retries:
                break
            wait = 0.05 if engine.in_flight() else (0.05 if self._retries else 0.0)
            for result in engine.poll(wait):
                self._collect(result)
            if self._retries and not engine.in_flight():
                time.sleep(min(0.05, max(0.0, self._retries[0][0] - time.monotonic())))
            self._maybe_commit()
            now = time.monotonic()
            if now - last_notice >= 0.2:
                last_notice = now
                self._notify(engine, t0)
            if self.committer.error is not None:
                raise self.committer.error
            if self.deadline and time.time() + self._deadline_margin() >= self.deadline[0]:
                self.stop.request("deadline")

    def _deadline_margin(self) -> float:
        """Time to finish what is in flight and commit: twice the slowest recent batch, at least a second."""
        return max(1.0, 2 * self._slowest) + 0.5

    def _interruptible(self) -> Any:
        flag = self.stop

        class _Ctx:
            def __enter__(self) -> None:
                flag.interrupt_on_urgent = True

            def __exit__(self, *exc: Any) -> None:
                flag.interrupt_on_urgent = False

        return _Ctx()

    def _drain(self, engine: Engine, t0: float) -> bool:
        """After a stop request: let in-flight batches finish within the grace period. True if some did not."""
        if not self.stop.requested:
            return False
        if self.stop.reason not in ("error",) and engine.in_flight():
            self.observers.on_message(f"{self.stop.reason}: finishing {engine.in_flight()} batch(es) in flight "
                                      f"(up to {self.settings.grace_seconds:.0f}s), then committing; "
                                      "press Ctrl-C again to stop at once")
        grace = self.settings.grace_seconds if self.stop.reason != "error" else 1e9
        if self.deadline:
            grace = min(grace, max(0.0, self.deadline[0] - time.time() - 0.5))
        limit = time.monotonic() + grace
        while engine.in_flight() and not self.stop.urgent and time.monotonic() < limit:
            for result in engine.poll(0.05):
                self._collect(result)
            self._notify(engine, t0)
        return engine.in_flight() > 0

    def _items(self) -> Iterator[tuple[int, Any, dict]]:
        """Keyed records to do, in source order. Bad rows become failures or stop the run, naming the row."""
        plan, key, src = self.plan, self.settings.key, self.source
        seen, skip_keys = self._seen, plan.skip_keys
        for pos, line, record in src.rows(plan.wanted, plan.hi):
            if type(record) is BadRow:
                self._bad_row(pos, record.where, record.message)
                continue
            if key is None:
                value = hashlib.blake2b(json.dumps(record, sort_keys=True, default=str).encode(),
                                        digest_size=8).hexdigest()
            else:
                value = record.get(key)
                if value is None:
                    self._bad_row(pos, src.where(line), f"no key column '{key}' in this row (columns: "
                                  f"{', '.join(map(str, record)) or 'none'})" if key not in record
                                  else f"key column '{key}' is null")
                    continue
            if skip_keys is not None and str(value) in skip_keys:
                continue
            if seen is not None:
                if value in seen:
                    if self.settings.dedupe:
                        continue
                    raise InputError(f"duplicate key {self.key_column}={value!r}: {seen[value]} and "
                                     f"{src.where(line)}. Pass --dedupe to keep the first occurrence.")
                seen[value] = src.where(line)
            yield pos, value, record

    def _bad_row(self, pos: int, where: str, message: str) -> None:
        if not self.settings.skip_bad_rows:
            raise InputError(f"{where}: {message}. Fix the row, or pass --skip-bad-rows to record it as a failure.")
        self.pending.failures.append(Failure(pos, None, "BadRow", f"{where}: {message}", "", 1))
        self.stats.failed += 1

    def _next_batch(self, items: Iterator) -> Batch | None:
        """Retries that are due first, then the next records of the source; None when nothing is ready now."""
        size = self._chunk
        if self._retries and self._retries[0][0] <= time.monotonic():
            _, attempt, solo, *_ = self._retries[0]
            picked = [heapq.heappop(self._retries)]
            while not solo and self._retries and len(picked) < size and self._retries[0][0] <= time.monotonic() \
                    and self._retries[0][1] == attempt and not self._retries[0][2]:
                picked.append(heapq.heappop(self._retries))
            return self._batch([p[3] for p in picked], [p[4] for p in picked], [p[5] for p in picked], attempt)
        if self._source_done:
            return None
        positions, keys, records = [], [], []
        for pos, key, record in items:
            positions.append(pos)
            keys.append(key)
            records.append(record)
            if len(positions) >= size:
                break
        else:
            self._source_done = True
        return self._batch(positions, keys, records, 1) if positions else None

    def _batch(self, positions: list, keys: list, records: list, attempt: int) -> Batch:
        self._next_id += 1
        return Batch(self._next_id, positions, keys, records, attempt)

    def _collect(self, result: BatchResult) -> None:
        batch, pending = result.batch, self.pending
        if not result.errors:
            pending.positions.extend(batch.positions)
            pending.keys.extend(batch.keys)
            pending.outputs.extend(result.outputs)
            self.stats.done += len(batch.positions)
        elif len(batch.positions) > 1 and all(e.error_type == "WorkerDied" for e in result.errors.values()):
            # The worker died under the whole batch: run its items alone to find the one that kills it.
            now = time.monotonic()
            for pos, key, record in zip(batch.positions, batch.keys, batch.records, strict=True):
                heapq.heappush(self._retries, (now, batch.attempt, True, pos, key, record))
        else:
            for i, (pos, key) in enumerate(zip(batch.positions, batch.keys, strict=True)):
                error = result.errors.get(i)
                if error is None:
                    pending.positions.append(pos)
                    pending.keys.append(key)
                    pending.outputs.append(result.outputs[i])
                    self.stats.done += 1
                else:
                    self._failed(pos, key, batch.records[i], error, batch.attempt)
        self._slowest = max(result.seconds, self._slowest * 0.99)
        if self.settings.batch_size is None and batch.positions:
            self._adapt_chunk(result.seconds / len(batch.positions))

    def _failed(self, pos: int, key: Any, record: dict, error: ItemError, attempt: int) -> None:
        if self.retry.should_retry(error, attempt) and not self.stop.requested:
            ready = time.monotonic() + self.retry.delay(error, attempt)
            heapq.heappush(self._retries, (ready, attempt + 1, False, pos, key, record))
            return
        self.pending.failures.append(Failure(pos, key, error.error_type, error.message, error.traceback, attempt))
        self.stats.failed += 1

    def _adapt_chunk(self, per_item: float) -> None:
        # Per-record functions are sent in chunks of about 20 ms of work: cheap functions amortise dispatch,
        # slow ones keep every worker busy to the end. Never more than one commit's worth.
        target = int(0.02 / per_item) if per_item > 0 else 1000
        self._chunk = max(1, min(1000, self.settings.commit_every, target))

    def _maybe_commit(self) -> None:
        pending = self.pending
        if not len(pending):
            return
        if len(pending) >= self.settings.commit_every or \
                time.monotonic() - self._last_commit >= self.settings.commit_seconds:
            self._commit_now()

    def _commit_now(self) -> None:
        self._last_commit = time.monotonic()
        if len(self.pending):
            self.committer.submit(self.pending)
            self.pending = Pending()
        self._drain_commits()

    def _drain_commits(self) -> None:
        while self.committer.committed:
            c = self.committer.committed.popleft()
            self.stats.committed += c.rows + c.failures
            self.observers.on_commit(self.stats, c.rows, c.failures, c.shard)

    def _notify(self, engine: Engine, t0: float) -> None:
        self._drain_commits()
        self.stats.in_flight = engine.in_flight()
        self.stats.elapsed = time.monotonic() - t0
        self.observers.on_progress(self.stats)
