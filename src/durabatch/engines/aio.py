"""Async functions on one event loop in a background thread. Every item is its own task: a new call starts the
moment one finishes (no batch barriers), up to a concurrency that adapts to 429s. Rate limits are shared by
all tasks; a 429 waits as Retry-After says and is retried without charging an attempt; per-item timeouts cancel
the call."""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
import warnings
from typing import Any

from ..errors import ConfigError, ErrorKind, ItemError
from ..policies.limits import Limits
from . import storable
from .base import NOT_STARTED, Batch, BatchResult, ResultQueue
from .rate_limited import LimitedCall
from .user_fn import Work, guarded, timed_out


class _Gate:
    """A semaphore whose size adapts: cut to 70% on a 429, +1 after `size` successes, up to `ceiling`."""

    def __init__(self, ceiling: int):
        self.ceiling = ceiling
        self.size = ceiling
        self.busy = 0
        self._wins = 0
        self._cond = asyncio.Condition()
        self.closed = False  # a stop: waiters go in at once, see the stop and leave without calling

    async def __aenter__(self) -> None:
        async with self._cond:
            await self._cond.wait_for(lambda: self.busy < self.size or self.closed)
            self.busy += 1

    async def close(self) -> None:
        async with self._cond:
            self.closed = True
            self._cond.notify_all()

    async def __aexit__(self, *exc: Any) -> None:
        async with self._cond:
            self.busy -= 1
            self._cond.notify_all()

    def cut(self) -> None:
        self.size = max(1, int(self.size * 0.7))
        self._wins = 0

    def win(self) -> None:
        self._wins += 1
        if self._wins >= self.size and self.size < self.ceiling:
            self.size += 1
            self._wins = 0


class AsyncEngine(ResultQueue):
    pins_deaths = False

    def __init__(self, concurrency: int, item_timeout: float | None = None, limits: Limits | None = None):
        self.concurrency = concurrency
        self.slots = concurrency * 4  # batches queued ahead so that a finishing call never waits for dispatch
        self.item_timeout = item_timeout
        self.limits = limits or Limits()
        ResultQueue.__init__(self)
        self._stopping = False
        self._tasks: set = set()

    def start(self, work: Work) -> None:
        work.prepare()
        if not work.is_async and not work.batched:
            raise ConfigError("the asyncio engine runs `async def` functions; use threads for sync ones")
        self.work = work
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="durabatch-asyncio", daemon=True)
        self._thread.start()
        self.gate = asyncio.run_coroutine_threadsafe(self._make_gate(), self.loop).result()

    async def _make_gate(self) -> _Gate:
        self._stop = asyncio.Event()  # made in the loop: set by stop_starting() to end every wait at once
        return _Gate(self.concurrency)

    async def _sleep(self, seconds: float) -> None:
        """Wait out a rate limit or a pause, unless a stop comes first (a warm stop never waits on no call)."""
        try:
            await asyncio.wait_for(self._stop.wait(), seconds)
        except TimeoutError:
            pass

    def submit(self, batch: Batch) -> None:
        self._in_flight += 1
        asyncio.run_coroutine_threadsafe(self._run_batch(batch), self.loop)

    async def _run_batch(self, batch: Batch) -> None:
        t0 = time.perf_counter()
        results = await asyncio.gather(*(self._run_item(r) for r in batch.records))
        outputs = [out for out, _ in results]
        errors = {i: err for i, (_, err) in enumerate(results) if err is not None}
        self._done.put(BatchResult(batch, outputs, errors, time.perf_counter() - t0))

    async def _run_item(self, record: dict) -> tuple[Any, ItemError | None]:
        limited = LimitedCall(self.limits, record)
        while True:
            wait, held = limited.wait()  # before taking a slot: waiting never holds one
            if wait > 0:
                await self._sleep(wait)
            if self._stopping:
                return None, NOT_STARTED
            if not held:  # the rate is still being found: ask again
                continue
            async with self.gate:
                pause = limited.pause_left()  # a 429 may have come in while this task waited for a slot
                if self._stopping:
                    return None, NOT_STARTED
                if pause <= 0:
                    if not limited.start():
                        self._stopping = True  # a budget would be passed: the runner sees it and stops
                        return None, NOT_STARTED
                    output, error = await self._call(record)
            if pause > 0:
                await self._sleep(pause)
            elif limited.finish(output, error):
                self.gate.cut()  # a 429: fewer calls at once, then the same call again
            else:
                if error is None:
                    self.gate.win()
                return output, error

    async def _call(self, record: dict) -> tuple[Any, ItemError | None]:
        """The call itself, within --item-timeout: (output, None) or (None, its error). Whatever the function
        raises is its error (or a 429 to wait out); a result past the deadline or that cannot be stored is void."""
        if not self.item_timeout:
            output, error = await guarded(self.work.call, record)
        else:
            t0 = time.monotonic()
            try:
                output, error = await asyncio.wait_for(guarded(self.work.call, record), self.item_timeout)
            except TimeoutError:
                return None, ItemError(ErrorKind.ITEM_TIMEOUT, f"no result after {self.item_timeout:g}s "
                                       "(--item-timeout); the call was cancelled", "", ("ItemTimeout", "TimeoutError"))
            if error is None and time.monotonic() - t0 > self.item_timeout:
                return None, timed_out(self.item_timeout, late=True)  # it swallowed the cancellation
        if error is None and (problem := storable.problem(output)) is not None:
            return None, storable.unstorable(problem)
        return output, error

    def stop_starting(self) -> None:
        """A stop was asked for (budget, deadline, signal): calls not yet started never start, and items waiting
        for the rate limit or a slot come back at once as NotStarted (the next run does them); the warm stop
        then waits only for calls really in flight."""
        self._stopping = True
        if hasattr(self, "loop"):
            asyncio.run_coroutine_threadsafe(self._wake_waiters(), self.loop)

    async def _wake_waiters(self) -> None:
        self._stop.set()
        await self.gate.close()

    def close(self, cancel: bool = False) -> None:
        if not hasattr(self, "loop"):  # stopped while setup() ran: no loop yet
            return

        async def cancel_all() -> None:
            for task in asyncio.all_tasks(self.loop):
                if task is not asyncio.current_task():
                    task.cancel()

        async def teardown() -> None:  # in the loop: clients close their connections before it stops
            result = self.work.teardown()
            if inspect.isawaitable(result):
                await result

        if cancel:
            asyncio.run_coroutine_threadsafe(cancel_all(), self.loop).result(timeout=5)
        try:
            asyncio.run_coroutine_threadsafe(teardown(), self.loop).result(timeout=10)
        except Exception as exc:  # noqa: BLE001 - cannot fail an item any more
            warnings.warn(f"teardown() failed: {type(exc).__name__}: {exc}", RuntimeWarning, stacklevel=1)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)


__all__ = ["AsyncEngine", ErrorKind.ITEM_TIMEOUT]
