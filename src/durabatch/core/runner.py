"""The run loop: plan, dispatch batches to an engine, collect outcomes, commit, stop. (`api.py` builds the Job.)

    source -> plan (skip what the ledger has) -> batches -> engine -> outcomes -> Pending -> committer
                                       events -> observers (progress, run log)
"""

from __future__ import annotations

import time
from typing import Any

from ..engines.base import Batch, BatchResult, Engine
from ..engines.user_fn import cleanup
from ..errors import DurabatchError, ErrorKind, ExitCode, InputError, option
from ..policies.memory import MemoryWatch
from ..policies.stopping import STOP_SIGNALS, StopFlag
from ..store.ledger import Failure, ItemState, Ledger
from ..store.rundir import RunDir
from . import actor_reads, quarantine, watchdog, written
from .committer import Committer, Pending
from .dispatch import BATCH_SECONDS, Dispatch
from .events import Observers, Stats
from .failfast import REASON as FAILFAST
from .failfast import FailFast
from .journal import Journal
from .outcomes import INTERRUPTED, Action, Outcome, Rules, abandoned, decide
from .plan import check_fingerprint, make_plan
from .spec import Job
from .summary import RunSummary, resume_message


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

    def __init__(self, job: Job, rd: RunDir, ledger: Ledger):
        self.job, self.rd, self.ledger = job, rd, ledger
        self.engine: Engine = job.engine
        self.rules = Rules(job.retry, job.safety.at_most_once, job.safety.quarantine_after)
        self.observers = Observers(job.observers)
        self.stop = StopFlag(grace=job.stop.grace_seconds, announce=self.observers.on_message)
        self.failfast = FailFast(job.stop.max_consecutive_failures)
        self.pending = Pending()
        self.deadline = job.stop.deadline
        self._slowest = 0.0  # the longest batch lately: how early to stop before a deadline
        self._last_commit = time.monotonic()
        self._guilt: dict[int, int] = {}  # deaths of worker processes pinned on items in this run
        self._solo_in_flight = False
        self._commit_after_group = False
        self._caps: dict[int, int] = {}
        self._flying: dict[int, Batch] = {}  # submitted, not yet collected (an inline call may never return)
        # Workers that read records or write shards themselves (Ray actors): their I/O errors are sorted out here.
        self._worker_io = getattr(job.engine, "reader", None) is not None or getattr(job.engine, "writes_shards", False)
        self._worker_error: DurabatchError | None = None  # an unreadable input or unwritable run directory: stop

    # -- the whole run -----------------------------------------------------------------------------------------
    def execute(self) -> RunSummary:
        t0 = time.monotonic()
        # From here on a signal is a resumable stop, also while planning or while setup() loads a model.
        self.stop.install()
        # Outside the process: ends it when a thread stuck in C code holding the GIL makes a stop impossible.
        dog = watchdog.start(self.job.stop.grace_seconds, STOP_SIGNALS)
        try:
            return self._execute(t0)
        finally:
            if dog is not None:
                dog.close()
            self.stop.restore()

    def _execute(self, t0: float) -> RunSummary:
        job = self.job
        messages = check_fingerprint(self.ledger, job.fingerprint, job.safety.allow_changed)
        self.rd.write_job({"settings": job.description, "fingerprint": job.fingerprint})
        run_id = self.ledger.start_run()
        suspects, notes, self._caps = quarantine.after_last_run(job.safety, self.ledger, self.rd, run_id)
        plan = self.plan = make_plan(self.ledger, self.rd, job.source, job.keys, job.selection)
        self.stats = Stats(total=plan.total, already_done=plan.already_done + plan.already_failed,
                           source=job.source.describe(), run_dir=str(self.rd.path),
                           key_mode=f"column '{job.keys.column}'" if job.keys.column else "content hash")
        self.ledger.set_meta(total=plan.total, range=[plan.lo, plan.hi])
        self.observers.on_start(self.stats)
        for message in messages + notes + plan.messages + resume_message(plan):
            self.observers.on_message(message)
        stopped, error = None, None
        if self.stop.requested and not plan.nothing_to_do:
            stopped = self.stop.reason  # signalled while planning: nothing started, nothing to finish
        elif not plan.nothing_to_do:
            stopped, error = self._work(run_id, t0, suspects)
        self.stats.elapsed = time.monotonic() - t0
        self.stats.in_flight = 0
        if self.job.limits is not None:  # the final line shows the last calls' figures, not a notice 0.2 s old
            self.stats.extra = self.job.limits.metrics.snapshot()
        failed_total = sum(self.ledger.count_failures(s)
                           for s in (ItemState.FAILED, ItemState.QUARANTINED, ItemState.INTERRUPTED))
        code = ExitCode.USAGE if error else ExitCode.FAILED if stopped == FAILFAST else \
            ExitCode.STOPPED if stopped else ExitCode.FAILED if failed_total else ExitCode.DONE
        self.ledger.end_run(run_id, code, self.stats.done, self.stats.failed)
        self.observers.on_end(self.stats, code, stopped or (str(error) if error else None))
        if error is not None:
            raise error
        return RunSummary(code, plan.total, self.stats.already_done, self.stats.done, self.stats.failed,
                          failed_total, stopped, self.stats.elapsed, str(self.rd.path),
                          quarantined=self.ledger.count_failures(ItemState.QUARANTINED))

    def _work(self, run_id: int, t0: float, suspects: set[int]) -> tuple[str | None, BaseException | None]:
        job, engine = self.job, self.engine
        for message in job.messages:
            self.observers.on_message(message)
        try:
            with self._interruptible():  # a second Ctrl-C while setup() runs stops at once
                engine.start(job.work)
        except KeyboardInterrupt:
            engine.close(cancel=True)
            return self.stop.reason or "SIGINT", None
        self.dispatch = Dispatch(job.source, self.plan, job.keys, job.batching, job.commit.every_items, suspects,
                                 self._bad_row, job.fanin, caps=self._caps, pins_deaths=engine.pins_deaths,
                                 batch_seconds=getattr(engine, "batch_seconds", BATCH_SECONDS))
        self.journal = Journal(self.rd.inflight, durable=job.safety.at_most_once)
        self.committer = Committer(self.ledger, self.rd, job.commit.output_format, job.keys.output_column, run_id)
        written.attach(engine, self.committer, self.rd)
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
            self._abandon(engine)
            engine.close(cancel=cancel)
            self._commit_now()
            try:
                self.committer.close()
            except BaseException as exc:  # noqa: BLE001
                error = error or exc
            # This process is alive: nothing in flight is a suspect. In at-most-once mode, calls whose outcome
            # was not committed (abandoned on a cold stop, or a failed final commit) must be reported next time.
            self.journal.close(clean=not job.safety.at_most_once or (not cancel and error is None))
            self._drain_commits()
            for message in written.settle_leftovers(engine, self.rd, self.ledger):
                self.observers.on_message(message)
        stopped = self.stop.reason if self.stop.requested and error is None else None
        return stopped, error

    def _over_budget(self) -> str | None:
        """The engine refuses calls that could pass a budget and says so in its metrics."""
        limits = self.job.limits
        return limits.metrics.over_budget if limits is not None else None

    # -- the loop ----------------------------------------------------------------------------------------------
    def _loop(self, engine: Engine, t0: float) -> None:
        dispatch = self.dispatch
        last_notice = 0.0
        while not self.stop.requested:
            # Never wait on nothing: with nothing in flight, go on one batch at a time.
            paused = _memory_over(self.job.memory, self.observers) and engine.in_flight() > 0
            while engine.in_flight() < engine.slots and not self._solo_in_flight and not paused:
                batch = dispatch.next_batch(idle=engine.in_flight() == 0)
                if batch is None:
                    break
                self.journal.dispatched(batch, batch.solo)
                self._solo_in_flight = batch.solo and not engine.pins_deaths
                self._flying[batch.id] = batch
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
            if self._commit_after_group:
                self._commit_after_group = False
                self._commit_now()
                self.committer.wait_idle()
            now = time.monotonic()
            if now - last_notice >= 0.2:
                last_notice = now
                self._notify(engine, t0)
            if self.committer.error is not None:
                raise self.committer.error
            if self._worker_error is not None:
                raise self._worker_error
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
        engine.stop_starting()
        if self.stop.reason != "error" and engine.in_flight():
            self.observers.on_message(f"{self.stop.reason}: finishing {engine.in_flight()} batch(es) in flight "
                                      f"(up to {self.job.stop.grace_seconds:.0f}s), then committing; "
                                      "press Ctrl-C again to stop at once")
        grace = self.job.stop.grace_seconds if self.stop.reason != "error" else 1e9
        if self.deadline:
            grace = min(grace, max(0.0, self.deadline[0] - time.time() - 0.5))
        limit = time.monotonic() + grace
        while engine.in_flight() and not self.stop.urgent and time.monotonic() < limit:
            for result in engine.poll(0.05):
                self._collect(result)
            self._notify(engine, t0)
        return engine.in_flight() > 0

    def _abandon(self, engine: Engine) -> None:
        """Calls that did not return (past the grace period, or on a second signal) are recorded as interrupted.
        At least once, the next run does them again (state pending); at most once, never by itself."""
        try:
            for result in engine.poll(0):  # what came back meanwhile, and what never started
                self._collect(result)
        except Exception:  # noqa: BLE001 - stopping: whatever is not collected is recorded below
            pass
        failures, message = abandoned(list(self._flying.values()), self.job.safety.at_most_once)
        self._flying.clear()
        self.pending.failures.extend(failures)
        self.stats.failed += sum(f.state is ItemState.INTERRUPTED for f in failures)
        if message:
            self.observers.on_message(message)

    def _bad_row(self, pos: int, where: str, message: str) -> None:
        if not self.job.keys.skip_bad_rows:
            raise InputError(f"{where}: {message}. Fix the row, or pass {option('skip_bad_rows')} to record it as a "
                             "failure.")
        self.pending.failures.append(Failure(pos, None, ErrorKind.BAD_ROW, f"{where}: {message}", "", 1))
        self.stats.failed += 1

    # -- outcomes ----------------------------------------------------------------------------------------------
    def _collect(self, result: BatchResult) -> None:
        batch = result.batch
        self.journal.finished(batch)
        self._flying.pop(batch.id, None)
        self._slowest = max(result.seconds, self._slowest * 0.99)
        self.dispatch.observe(result.seconds, len(batch.positions))
        if result.written is not None:  # the worker wrote the batch's shard: listed now; its errors go on below
            result = written.record(self.committer, result, self.stats, self.failfast)
            batch = result.batch
        if self._worker_io:  # rows a worker could not read are this run's bad rows
            result, bad, stop = actor_reads.sort_out(result, self.job.keys.skip_bad_rows)
            batch, self._worker_error = result.batch, self._worker_error or stop
            self.pending.failures.extend(bad)
            self.stats.failed += len(bad)
        if result.note:
            self.observers.on_message(result.note)
        if batch.solo:
            self._solo_in_flight = False
            self._commit_after_group = len(batch.positions) > 1  # its results survive the next group's death
        if not result.errors and self.job.fanin is None:  # the hot path: a whole batch's results as one piece
            self.pending.extend(batch.positions, batch.keys, result.outputs)
            self.stats.done += len(batch.positions)
            self.failfast.succeeded()
        else:
            outcomes = decide(result.errors, batch.positions, batch.attempt, self.rules, self.stop.requested,
                              self._guilt)
            for i, outcome in enumerate(outcomes):
                output = result.outputs[i] if outcome.action is Action.DONE else None
                self._apply(outcome, batch.positions[i], batch.keys[i], batch.records[i], output, batch.attempt)
        self._drain_fanin()

    def _apply(self, outcome: Outcome, pos: int, key: Any, record: dict, output: Any, attempt: int) -> None:
        action, error = outcome.action, outcome.error
        if outcome.guilt:
            self._guilt[pos] = outcome.guilt
        if action is Action.DONE:
            self._succeeded(record, pos, key, output)
        elif action is Action.RETRY:
            if self.job.limits is not None:
                self.job.limits.metrics.retries += 1
            again = error is not None and error.error_type == ErrorKind.WORKER_LOST  # not a failed attempt
            self.dispatch.retry_later(pos, key, record, attempt + (not again), outcome.delay)
        elif action is Action.RUN_ALONE:
            self.dispatch.run_alone(pos, key, record, attempt)
        elif action is Action.FAILED:
            self._finally_failed(record, Failure(pos, key, error.error_type, error.message, error.traceback, attempt))
            if self.failfast.failed(error.error_type, error.message):
                self.observers.on_message(self.failfast.tripped or "")
                self.stop.request(FAILFAST)
        elif action is Action.QUARANTINED:
            self._finally_failed(record, quarantine.worker_death_failure(pos, key, outcome.guilt, error.message))
            self.observers.on_message(f"quarantined {key!r}: {error.message} ({outcome.guilt} times)")
        elif action is Action.INTERRUPTED:
            self.pending.failures.append(Failure(pos, key, ErrorKind.INTERRUPTED, INTERRUPTED, error.message, 1,
                                                 ItemState.INTERRUPTED))
            self.stats.failed += 1
        # Action.REDO: nothing to record; the next run does the item

    def _succeeded(self, record: dict, pos: int, key: Any, output: Any) -> None:
        self.failfast.succeeded()
        if self.job.fanin is not None:
            self.job.fanin.done(record, output)  # a segment: its document completes when the last one does
            return
        self.pending.add(pos, key, output)
        self.stats.done += 1

    def _finally_failed(self, record: dict, failure: Failure) -> None:
        if self.job.fanin is not None:
            self.job.fanin.fail(record, failure)
            return
        self.pending.failures.append(failure)
        self.stats.failed += 1

    def _drain_fanin(self) -> None:
        """Documents whose last segment came back (or that failed) join the pending commit."""
        if self.job.fanin is not None and (self.job.fanin.ready or self.job.fanin.failed):
            ready, failed = self.job.fanin.take_finished()
            for pos, key, output in ready:
                self.pending.add(pos, key, output)
            self.pending.failures.extend(failed)
            self.stats.done, self.stats.failed = self.stats.done + len(ready), self.stats.failed + len(failed)

    # -- commits and events ------------------------------------------------------------------------------------
    def _maybe_commit(self) -> None:
        self._drain_fanin()  # documents with no segments complete without any batch
        pending = self.pending
        if not len(pending):
            return
        if len(pending) >= self.job.commit.every_items or \
                time.monotonic() - self._last_commit >= self.job.commit.every_seconds:
            self._commit_now()

    def _commit_now(self) -> None:
        self._last_commit = time.monotonic()
        if len(self.pending):
            if self.job.limits is not None:
                learned = self.job.limits.learned()  # kept for the next run: it starts near the limit
                metrics = self.job.limits.metrics  # totals of all runs (seeded), and their history for charts
                self.pending.meta = {"api": metrics.snapshot(), "api_history": metrics.mark(time.time(),
                                                                                            self.committer.run_id),
                                     **({"learned_limits": learned} if learned else {})}
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
        if self.job.limits is not None:
            self.stats.extra = self.job.limits.metrics.snapshot()
        self.stats.elapsed = time.monotonic() - t0
        self.observers.on_progress(self.stats)


def _memory_over(memory: MemoryWatch | None, observers: Observers) -> bool:
    """Above the memory limit: dispatch pauses (after a cleanup) until it falls."""
    if memory is None:
        return False
    for message in memory.check():
        observers.on_message(message)
        if memory.over:
            cleanup()
    return memory.over
