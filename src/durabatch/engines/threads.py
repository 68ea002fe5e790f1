"""A pool of daemon threads, each with its own prepared copy of the work (its own model, client...).

Daemon threads, so that a stop can leave a stuck call behind (after the grace period, or on a second Ctrl-C) and
exit. A thread cannot be killed: for per-item timeouts on stuck synchronous code, use the processes engine. Code
that holds the GIL while stuck (a catastrophic regex) freezes the whole process; core/watchdog.py ends it."""

from __future__ import annotations

import queue
import threading
import time

from ..errors import ItemError
from ..policies.limits import Limits
from .base import NOT_STARTED, Batch, BatchResult, ResultQueue
from .rate_limited import call_sync
from .user_fn import Work


class ThreadEngine(ResultQueue):
    pins_deaths = False
    def __init__(self, workers: int, limits: Limits | None = None):
        self.limits = limits
        self.slots = workers * 2  # one queued behind each running batch keeps every thread busy
        self.workers = workers
        self._todo: queue.Queue = queue.Queue()
        ResultQueue.__init__(self)
        self._ready = threading.Barrier(workers + 1)
        self._setup_error: BaseException | None = None
        self._stopping = threading.Event()  # a warm stop: rate-limit waits end, calls not started do not start

    def start(self, work: Work) -> None:
        self._threads = []
        for i in range(self.workers):
            t = threading.Thread(target=self._worker, args=(work.copy(),),
                                 name=f"durabatch-worker-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        self._ready.wait()
        if self._setup_error is not None:
            raise self._setup_error

    def _worker(self, work: Work) -> None:
        try:
            work.prepare()
        except BaseException as exc:  # noqa: BLE001 - reported by start()
            self._setup_error = exc
        try:
            self._ready.wait()
        except threading.BrokenBarrierError:  # the run was stopped at once while setup() ran (a second Ctrl-C)
            return
        if self._setup_error is not None:
            return
        while True:
            batch = self._todo.get()
            if batch is None:
                work.close()
                return
            t0 = time.perf_counter()
            try:
                outputs, errors = self._limited(work, batch.records) if self.limits else work.execute(batch.records)
            except BaseException as exc:  # noqa: BLE001 - never lose a batch: fail its items
                error = ItemError.from_exception(exc)
                outputs, errors = [None] * len(batch.records), dict.fromkeys(range(len(batch.records)), error)
            self._done.put(BatchResult(batch, outputs, errors, time.perf_counter() - t0, work.take_note()))

    def _limited(self, work: Work, records: list[dict]) -> tuple[list, dict]:
        """Sync API calls under the same limits as the asyncio engine (engines/rate_limited.py)."""
        assert self.limits is not None
        outputs: list = [None] * len(records)
        errors: dict = {}
        for i, record in enumerate(records):
            outputs[i], error = call_sync(self.limits, record, lambda r=record: _one(work, r),
                                          sleep=self._stopping.wait, stopping=self._stopping.is_set)
            if error is not None:
                errors[i] = error
        return outputs, errors

    def submit(self, batch: Batch) -> None:
        self._in_flight += 1
        self._todo.put(batch)

    def stop_starting(self) -> None:
        """Batches queued behind the running ones never start: they come back as NotStarted; so do the calls of
        running batches still waiting for a rate limit."""
        self._stopping.set()
        while True:
            try:
                batch = self._todo.get_nowait()
            except queue.Empty:
                return
            if batch is None:  # closing already: leave the worker's stop sign in place
                self._todo.put(None)
                return
            n = len(batch.records)
            self._done.put(BatchResult(batch, [None] * n, dict.fromkeys(range(n), NOT_STARTED), 0.0))

    def close(self, cancel: bool = False) -> None:
        for _ in self._threads:
            self._todo.put(None)
        if not cancel:
            for t in self._threads:
                t.join()


def _one(work: Work, record: dict) -> tuple[object, ItemError | None]:
    outputs, errors = work.execute([record])
    return outputs[0], errors.get(0)
