"""One worker in the calling thread, no pool: the simplest engine, for debugging and for cheap functions."""

from __future__ import annotations

import time

from .base import Batch, BatchResult
from .user_fn import Work


class InlineEngine:
    pins_deaths = False
    slots = 1

    def __init__(self, item_timeout: float | None = None) -> None:
        self.item_timeout = item_timeout
        self._done: list[BatchResult] = []

    def start(self, work: Work) -> None:
        self.work = work
        work.prepare()

    def submit(self, batch: Batch) -> None:
        t0 = time.perf_counter()
        outputs, errors = self.work.execute(batch.records, self.item_timeout)
        self._done.append(BatchResult(batch, outputs, errors, time.perf_counter() - t0, self.work.take_note()))

    def poll(self, timeout: float) -> list[BatchResult]:
        done, self._done = self._done, []
        return done

    def in_flight(self) -> int:
        return len(self._done)

    def stop_starting(self) -> None:
        pass  # a batch handed over is running or about to: nothing to hold back

    def close(self, cancel: bool = False) -> None:
        self._done = []
        self.work.close()
