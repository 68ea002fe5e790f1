"""The run loop: plan, dispatch batches to an engine, collect outcomes, commit, stop. (`api.py` builds a Run.)

    source -> plan (skip what the ledger has) -> batches -> engine -> outcomes -> Pending -> committer
                                       events -> observers (progress, run log)
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from . import job, poison
from .committer import Committer, Pending
from .dispatch import Dispatch
from .engines import BatchResult, Engine, make_engine
from .errors import DurabatchError, InputError
from .fanout import FanIn
from .ledger import Failure, ItemState, Ledger, RunDir
from .limits import ApiMetrics, Limits, LimitSpec
from .observe import Observer, Observers, Stats
from .observe.logs import RunLog
from .observe.progress import make_progress
from .observe.resources import MemoryWatch
from .plan import Plan, check_fingerprint, make_plan
from .retry import RetryPolicy, full_jitter, make_retryable
from .settings import JobSettings, parse_size
from .sources import Source
from .stopping import StopFlag, wall_deadline
from .work import ItemError, Work, cleanup, is_async_target

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


class _Interruptible:
    """Inside, a second Ctrl-C interrupts the user's code (never the runner's own bookkeeping)."""

    __slots__ = ("flag",)

    def __init__(self, flag: StopFlag):
        self.flag = flag

    def __enter__(self) -> None:
        self.flag.interrupt_on_urgent = True

    def __exit__(self, *exc: Any) -> None:
        self.flag.interrupt_on_urgent = False


class Run:
    """One execution of a job on its run directory (the CLI's `run`, the library's `run()`)."""

    def __init__(self, target: Any, source: Source, settings: JobSettings, rd: RunDir, ledger: Ledger,
                 observers: list[Observer], fanin: FanIn | None = None):
        self.target, self.source, self.settings, self.rd, self.ledger = target, source, settings, rd, ledger
        self.fanin = fanin
        self.key_column = settings.key or "_key"
        self.retry = RetryPolicy(max_attempts=settings.max_attempts,
                                 backoff=full_jitter(settings.backoff_base, settings.backoff_max),
                                 retryable=make_retryable(settings.retry_on, settings.fatal_on))
        progress = make_progress(settings.progress, settings.log_every)
        self.observers = Observers([o for o in (progress, RunLog(rd.logs / "run.log")) if o] + observers)
        self.stop = StopFlag()
        self.pending = Pending()
        self.started = time.time()
        self.deadline: tuple[float, str] | None = None
        self._slowest = 0.0  # the longest batch lately: how early to stop before a deadline
        self._last_commit = time.monotonic()
        self._guilt: dict[int, int] = {}  # deaths of worker processes pinned on items in this run
        self._solo_in_flight = False

    # -- the whole run -----------------------------------------------------------------------------------------
    def execute(self) -> RunSummary:
        t0 = time.monotonic()
        wall_deadline(self.settings.deadline, self.settings.deadline_at, time.time())  # bad values fail early
        # From here on a signal is a resumable stop, also while planning or while setup() loads a model.
        self.stop.install()
        try:
            return self._execute(t0)
        finally:
            self.stop.restore()

    def _execute(self, t0: float) -> RunSummary:
        current = job.fingerprint(self.target, self.settings, self.source.identity())
        if self.fanin is not None:
            current["fan_out"] = {"split": job.code_hash(self.fanin.split_fn),
                                  "combine": job.code_hash(self.fanin.combine_fn)}
        messages = check_fingerprint(self.ledger, current, self.settings.allow_changed)
        self._write_job_json(current)
        run_id = self.ledger.start_run(0)
        if self.settings.at_most_once:
            lost = poison.interrupted(self.ledger, self.rd, run_id)
            if lost:
                messages.append(f"{len(lost)} item(s) were interrupted mid-call by the last run's end and will not "
                                "be called again (at-most-once); see `durabatch export --failed`")
            review = poison.Review(set(), [])
        else:
            review = poison.review(self.ledger, self.rd, self.settings.quarantine_after, run_id)
        messages += [f"quarantined {f.key!r} (position {f.pos}): {f.message}" for f in review.quarantined]
        if review.suspects:
            messages.append(f"{len(review.suspects)} item(s) were in flight when the last run died: "
                            "running them one at a time")
        plan = make_plan(self.ledger, self.rd, self.source, self.settings)
        self.plan = plan
        self.stats = Stats(total=plan.total, already_done=plan.already_done + plan.already_failed,
                           source=self.source.describe(), run_dir=str(self.rd.path),
                           key_mode=f"column '{self.settings.key}'" if self.settings.key else "content hash")
        self.ledger.set_meta(total=plan.total, range=[plan.lo, plan.hi])
        self.observers.on_start(self.stats)
        for message in messages + plan.messages + self._resume_message(plan):
            self.observers.on_message(message)
        stopped, error = None, None
        if self.stop.requested and not plan.nothing_to_do:
            stopped = self.stop.reason  # signalled while planning: nothing started, nothing to finish
        elif not plan.nothing_to_do:
            stopped, error = self._work(run_id, t0, review.suspects)
        self.stats.elapsed = time.monotonic() - t0
        failed_total = sum(self.ledger.count_failures(s)
                           for s in (ItemState.FAILED, ItemState.QUARANTINED, ItemState.INTERRUPTED))
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

    def _work(self, run_id: int, t0: float, suspects: set[int]) -> tuple[str | None, BaseException | None]:
        self.engine_name = self.settings.engine or ("asyncio" if is_async_target(self.target) else
                                                    "inline" if self.settings.workers == 1 else "threads")
        self.limits = self._make_limits()
        if self.settings.item_timeout and self.engine_name == "threads":
            self.observers.on_message("--item-timeout is not enforced on the threads engine (a thread cannot be "
                                      "stopped); use --engine processes")
        engine = make_engine(self.engine_name, self.settings.workers, self.settings.item_timeout,
                             parse_size(self.settings.max_worker_memory), self.settings.concurrency, self.limits)
        try:
            with self._interruptible():  # a second Ctrl-C while setup() runs stops at once
                engine.start(Work(self.target, self.settings.batch_size is not None, self.settings.cleanup_every,
                                  columns=self.settings.batch_format == "columns"))
        except KeyboardInterrupt:
            engine.close(cancel=True)
            return self.stop.reason or "SIGINT", None
        self.memory = MemoryWatch(parse_size(self.settings.max_memory), parse_size(self.settings.max_gpu_memory))
        self.dispatch = Dispatch(self.source, self.plan, self.settings, suspects, self._bad_row, self.fanin)
        self.journal = poison.Journal(self.rd.inflight, durable=self.settings.at_most_once)
        self.committer = Committer(self.ledger, self.rd, self.settings.output_format, self.key_column, run_id)
        self.deadline = wall_deadline(self.settings.deadline, self.settings.deadline_at, self.started)
        if self.deadline:
            left = self.deadline[0] - time.time()
            self.observers.on_message(f"deadline: {self.deadline[1]}, in {left / 60:.1f} min")
        error: BaseException | None = None
        cancel = False
        try:
            try:
                self._loop(engine, t0)
            except DurabatchError as exc:
                error = exc  # finish what is in flight and commit it before reporting
                self.stop.request("error")
            except KeyboardInterrupt:
                self.stop.request("SIGINT")
                self.stop.request("SIGINT")
            cancel = self._drain(engine, t0)
        finally:
            engine.close(cancel=cancel)
            self._commit_now()
            try:
                self.committer.close()
            except BaseException as exc:  # noqa: BLE001
                error = error or exc
            # This process is alive: nothing in flight is a suspect. In at-most-once mode, calls whose outcome
            # was not committed (abandoned on a cold stop, or a failed final commit) must be reported next time.
            self.journal.close(clean=not self.settings.at_most_once or (not cancel and error is None))
            self._drain_commits()
        stopped = self.stop.reason if self.stop.requested and error is None else None
        return stopped, error

    def _make_limits(self) -> Limits | None:
        s = self.settings
        specs = {name: LimitSpec(spec.get("rpm"), spec.get("tpm")) for name, spec in s.limits.items()}
        if s.rpm or s.tpm or not specs:
            specs["default"] = LimitSpec(s.rpm, s.tpm)
        wanted = self.engine_name == "asyncio" or (self.engine_name == "threads" and (s.rpm or s.tpm or s.limits))
        if not wanted:
            return None
        return Limits(specs, s.limit_by, s.tokens_per_item,
                      ApiMetrics(s.price_input, s.price_output, s.max_tokens, s.max_cost))

    def _over_budget(self) -> str | None:
        """The engine refuses calls that could pass a budget and says so in its metrics."""
        return self.limits.metrics.over_budget if self.limits is not None else None

    # -- the loop ----------------------------------------------------------------------------------------------
    def _loop(self, engine: Engine, t0: float) -> None:
        dispatch = self.dispatch
        last_notice = 0.0
        while not self.stop.requested:
            for message in self.memory.check():
                self.observers.on_message(message)
                if self.memory.over:
                    cleanup()
            paused = self.memory.over and engine.in_flight() > 0  # never wait on nothing: go on one at a time
            while engine.in_flight() < engine.slots and not self._solo_in_flight and not paused:
                batch = dispatch.next_batch(idle=engine.in_flight() == 0)
                if batch is None:
                    break
                self.journal.dispatched(batch, batch.solo)
                self._solo_in_flight = batch.solo and self.engine_name != "processes"
                with self._interruptible():
                    engine.submit(batch)
            if dispatch.finished and not engine.in_flight():
                break
            wait = 0.05 if engine.in_flight() or not dispatch.source_done else 0.0
            for result in engine.poll(wait):
                self._collect(result)
            if not engine.in_flight() and dispatch.source_done:
                time.sleep(min(0.05, dispatch.next_retry_in() or 0.0))
            self._maybe_commit()
            now = time.monotonic()
            if now - last_notice >= 0.2:
                last_notice = now
                self._notify(engine, t0)
            if self.committer.error is not None:
                raise self.committer.error
            if self.deadline and time.time() + self._deadline_margin() >= self.deadline[0]:
                self.stop.request("deadline")
            budget = self._over_budget()
            if budget:
                self.observers.on_message(f"{budget}: stopping; run again with a larger budget to continue")
                self.stop.request("budget")

    def _deadline_margin(self) -> float:
        """Time to finish what is in flight and commit: twice the slowest recent batch, at least a second."""
        return max(1.0, 2 * self._slowest) + 0.5

    def _interruptible(self) -> _Interruptible:
        return _Interruptible(self.stop)

    def _drain(self, engine: Engine, t0: float) -> bool:
        """After a stop request: let in-flight batches finish within the grace period. True if some did not."""
        if not self.stop.requested:
            return False
        stop_starting = getattr(engine, "stop_starting", None)
        if stop_starting is not None:
            stop_starting()
        if self.stop.reason != "error" and engine.in_flight():
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

    def _bad_row(self, pos: int, where: str, message: str) -> None:
        if not self.settings.skip_bad_rows:
            raise InputError(f"{where}: {message}. Fix the row, or pass --skip-bad-rows to record it as a failure.")
        self.pending.failures.append(Failure(pos, None, "BadRow", f"{where}: {message}", "", 1))
        self.stats.failed += 1

    # -- outcomes ----------------------------------------------------------------------------------------------
    def _collect(self, result: BatchResult) -> None:
        batch, pending = result.batch, self.pending
        self.journal.finished(batch)
        if result.note:
            self.observers.on_message(result.note)
        if batch.solo:
            self._solo_in_flight = False
        if not result.errors and self.fanin is None:
            pending.extend(batch.positions, batch.keys, result.outputs)
            self.stats.done += len(batch.positions)
        elif not result.errors:
            for i, (pos, key) in enumerate(zip(batch.positions, batch.keys, strict=True)):
                self._succeeded(pos, key, batch.records[i], result.outputs[i])
        elif self.settings.at_most_once and any(e.error_type in ("WorkerDied", "ItemTimeout")
                                                for e in result.errors.values()):
            for i, (pos, key) in enumerate(zip(batch.positions, batch.keys, strict=True)):
                if i in result.errors:
                    self.pending.failures.append(Failure(pos, key, "Interrupted", poison.INTERRUPTED,
                                                         result.errors[i].message, 1, ItemState.INTERRUPTED))
                    self.stats.failed += 1
                else:
                    pending.add(pos, key, result.outputs[i])
                    self.stats.done += 1
        elif len(batch.positions) > 1 and all(e.error_type in ("WorkerDied", "ItemTimeout")
                                              for e in result.errors.values()):
            # The worker died or stalled under the whole batch: run its items alone to find the culprit.
            for pos, key, record in zip(batch.positions, batch.keys, batch.records, strict=True):
                self.dispatch.run_alone(pos, key, record, batch.attempt)
        else:
            for i, (pos, key) in enumerate(zip(batch.positions, batch.keys, strict=True)):
                error = result.errors.get(i)
                if error is None:
                    self._succeeded(pos, key, batch.records[i], result.outputs[i])
                elif error.error_type == "WorkerDied":
                    self._worker_died(pos, key, batch.records[i], error, batch.attempt)
                elif error.error_type != "NotStarted":  # not started because the run stopped: next run does it
                    self._failed(pos, key, batch.records[i], error, batch.attempt)
        self._slowest = max(result.seconds, self._slowest * 0.99)
        self.dispatch.observe(result.seconds, len(batch.positions))
        self._drain_fanin()

    def _failed(self, pos: int, key: Any, record: dict, error: ItemError, attempt: int) -> None:
        if self.retry.should_retry(error, attempt) and not self.stop.requested:
            if self.limits is not None:
                self.limits.metrics.retries += 1
            self.dispatch.retry_later(pos, key, record, attempt + 1, self.retry.delay(error, attempt))
            return
        self._finally_failed(record, Failure(pos, key, error.error_type, error.message, error.traceback, attempt))

    def _succeeded(self, pos: int, key: Any, record: dict, output: Any) -> None:
        if self.fanin is not None:
            self.fanin.done(record, output)  # a segment: its document completes when the last one does
            return
        self.pending.add(pos, key, output)
        self.stats.done += 1

    def _finally_failed(self, record: dict, failure: Failure) -> None:
        if self.fanin is not None:
            self.fanin.fail(record, failure)
            return
        self.pending.failures.append(failure)
        self.stats.failed += 1

    def _drain_fanin(self) -> None:
        """Documents whose last segment came back (or that failed) join the pending commit."""
        fanin = self.fanin
        if fanin is None or not (fanin.ready or fanin.failed):
            return
        for pos, key, output in fanin.ready:
            self.pending.add(pos, key, output)
        self.stats.done += len(fanin.ready)
        self.pending.failures.extend(fanin.failed)
        self.stats.failed += len(fanin.failed)
        fanin.ready.clear()
        fanin.failed.clear()

    def _worker_died(self, pos: int, key: Any, record: dict, error: ItemError, attempt: int) -> None:
        """A worker process died running this item alone: guilty once more; quarantined after K times."""
        guilt = self._guilt[pos] = self._guilt.get(pos, 0) + 1
        if guilt >= self.settings.quarantine_after:
            self._finally_failed(record, poison.worker_death_failure(pos, key, guilt, error.message))
            self.observers.on_message(f"quarantined {key!r}: {error.message} ({guilt} times)")
        elif not self.stop.requested:
            self.dispatch.run_alone(pos, key, record, attempt)

    # -- commits and events ------------------------------------------------------------------------------------
    def _maybe_commit(self) -> None:
        self._drain_fanin()  # documents with no segments complete without any batch
        pending = self.pending
        if not len(pending):
            return
        if len(pending) >= self.settings.commit_every or \
                time.monotonic() - self._last_commit >= self.settings.commit_seconds:
            self._commit_now()

    def _commit_now(self) -> None:
        self._last_commit = time.monotonic()
        if len(self.pending):
            if self.limits is not None:
                self.pending.meta = {"api": self.limits.metrics.snapshot()}
            self.committer.submit(self.pending)
            self.pending = Pending()
        self._drain_commits()

    def _drain_commits(self) -> None:
        while self.committer.committed:
            c = self.committer.committed.popleft()
            self.stats.committed += c.rows + c.failures
            if c.warning:
                self.observers.on_message(c.warning)
            self.observers.on_commit(self.stats, c.rows, c.failures, c.shard)

    def _notify(self, engine: Engine, t0: float) -> None:
        self._drain_commits()
        self.stats.in_flight = engine.in_flight()
        if self.limits is not None:
            self.stats.extra = self.limits.metrics.snapshot()
        self.stats.elapsed = time.monotonic() - t0
        self.observers.on_progress(self.stats)
