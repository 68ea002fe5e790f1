"""The one rate-limited call loop, shared by the threads engine (sync clients) and the asyncio engine: wait for
the shared buckets, check the budget, call, and on a 429 wait as the provider said and call again. A 429 never
fails an item and never charges an attempt. `LimitedCall` holds the decisions; `call_sync` is the thread
adapter, and the asyncio engine awaits the same steps (engines/aio.py)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ..errors import ItemError
from ..policies.limits import Limits, is_rate_limited, reporting_to
from .base import NOT_STARTED

Outcome = tuple[Any, ItemError | None]  # (output, error): one of them is None


class LimitedCall:
    """One record's way through the limits. Per try: wait(), then start() (False: a budget would be passed, so
    the call must not happen), then the call, then finish(): True means it was a 429, go round again."""

    __slots__ = ("limits", "limiter", "estimate")

    def __init__(self, limits: Limits, record: dict):
        self.limits = limits
        self.limiter = limits.for_record(record)
        self.estimate = limits.estimate(record)

    def wait(self) -> tuple[float, bool]:
        """(seconds to wait before this try, held): held, its place in the buckets is reserved; else wait and
        ask again (a rate still being found may have grown meanwhile)."""
        return self.limiter.place(self.estimate)

    def pause_left(self) -> float:
        """A 429 elsewhere may have paused everyone since wait() was taken."""
        return self.limiter.pause_left()

    def start(self) -> bool:
        """Also makes `report_headers` inside the call reach this record's limiter."""
        reporting_to(self.limiter)
        return self.limits.metrics.try_start(self.estimate)

    def finish(self, output: Any, error: ItemError | None) -> bool:
        """Record a started call's outcome in the limiter and the metrics; True when it must be made again."""
        metrics = self.limits.metrics
        if error is not None and is_rate_limited(error):
            metrics.finished(None)
            metrics.rate_limited += 1
            if error.limit_rpm:
                self.limiter.on_headers(error.limit_rpm, None, None)
            self.limiter.on_rate_limited(error.retry_after if error.retry_after is not None else 1.0)
            return True
        usage = self.limits.usage_of(output) if error is None else None
        self.limiter.used(self.estimate, usage)
        if error is None:
            self.limiter.on_success()
        metrics.finished(usage)
        return False


def call_sync(limits: Limits, record: dict, call: Callable[[], Outcome], sleep: Callable[[float], Any] = time.sleep,
              stopping: Callable[[], bool] = lambda: False) -> Outcome:
    """A synchronous call under the limits, retried in place after 429s. `sleep` may return early and `stopping`
    say so: a warm stop never waits out a rate limit for a call that has not started (it is NotStarted, and the
    next run makes it)."""
    limited = LimitedCall(limits, record)
    while True:
        wait, held = limited.wait()
        if wait > 0:
            sleep(wait)
        if stopping():
            return None, NOT_STARTED
        if not held:
            continue
        if not limited.start():
            return None, NOT_STARTED
        output, error = call()
        if not limited.finish(output, error):
            return output, error
