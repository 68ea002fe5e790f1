"""A pool of daemon threads, each with its own prepared copy of the work (its own model, client...).

Daemon threads, so that a second Ctrl-C can leave a stuck call behind and exit. A thread cannot be killed:
for per-item timeouts on stuck synchronous code, use the processes engine."""

from __future__ import annotations

import queue
import threading
import time

from ..errors import ItemError
from ..policies.limits import Limits, is_rate_limited
from .base import NOT_STARTED, Batch, BatchResult, drain
from .user_fn import Work


class ThreadEngine:
    pins_deaths = False
    def __init__(self, workers: int, limits: Limits | None = None):
        self.limits = limits
        self.slots = workers * 2  # one queued behind each running batch keeps every thread busy
        self.workers = workers
        self._todo: queue.Queue = queue.Queue()
        self._done: queue.Queue = queue.Queue()
        self._in_flight = 0
        self._ready = threading.Barrier(workers + 1)
        self._setup_error: BaseException | None = None

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
        """Sync API calls under the same limits as the asyncio engine: wait for the bucket, retry 429s."""
        assert self.limits is not None
        outputs: list = [None] * len(records)
        errors: dict = {}
        for i, record in enumerate(records):
            while True:
                limiter, estimate = self.limits.wait_sync(record)
                if not self.limits.metrics.try_start(estimate):
                    outputs[i], errors[i] = None, NOT_STARTED
                    break
                out, errs = work.execute([record])
                if errs and is_rate_limited(errs[0]):
                    self.limits.metrics.finished(None)
                    self.limits.metrics.rate_limited += 1
                    limiter.on_rate_limited(errs[0].retry_after if errs[0].retry_after is not None else 1.0)
                    continue
                usage = self.limits.usage_of(out[0]) if not errs else None
                limiter.used(estimate, usage)
                if not errs:
                    limiter.on_success()
                self.limits.metrics.finished(usage)
                outputs[i] = out[0]
                if errs:
                    errors[i] = errs[0]
                break
        return outputs, errors

    def submit(self, batch: Batch) -> None:
        self._in_flight += 1
        self._todo.put(batch)

    def poll(self, timeout: float) -> list[BatchResult]:
        results = drain(self._done, timeout)
        self._in_flight -= len(results)
        return results

    def in_flight(self) -> int:
        return self._in_flight

    def stop_starting(self) -> None:
        pass  # a batch handed over is running or about to: nothing to hold back

    def close(self, cancel: bool = False) -> None:
        for _ in self._threads:
            self._todo.put(None)
        if not cancel:
            for t in self._threads:
                t.join()
