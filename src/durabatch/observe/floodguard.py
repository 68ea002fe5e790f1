"""The log-flood guard (what really killed seed 001's run: 16,679 debug lines in seconds made training 100x
slower). Installed on request, it collapses repeated messages into one line with a count and warns once when
log volume passes a threshold.

    durabatch.guard_logs()                     # on the root logger's handlers
    durabatch.guard_logs(max_lines_per_second=50, logger=logging.getLogger("mypkg"))
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class FloodGuard(logging.Filter):
    """A repeat of the previous message (same logger, level and format string, whatever its arguments: per-step
    lines differ only in their numbers) is held back; the next different message first says how many were.
    Above max_lines_per_second (measured over 1 s),
    one warning says so."""

    def __init__(self, max_lines_per_second: float = 100.0, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.max_rate = max_lines_per_second
        self.clock = clock
        self.suppressed = 0  # repeats held back in all
        self._last: tuple | None = None
        self._repeats = 0
        self._window_start = clock()
        self._window_lines = 0
        self._warned = False

    def filter(self, record: logging.LogRecord) -> bool:
        self._count_rate(record)
        signature = (record.name, record.levelno, record.msg)
        if signature == self._last:
            self._repeats += 1
            self.suppressed += 1
            return False
        if self._repeats:
            record.msg = f"({self._repeats:,} more lines like the previous one collapsed) {record.msg}"
        self._last, self._repeats = signature, 0
        return True

    def flush_summary(self) -> str | None:
        """The pending repeat count, if any (call at the end of a run)."""
        if not self._repeats:
            return None
        text = f"{self._repeats:,} more lines like the previous one collapsed"
        self._repeats = 0
        return text

    def _count_rate(self, record: logging.LogRecord) -> None:
        now = self.clock()
        if now - self._window_start >= 1.0:
            self._window_start, self._window_lines = now, 0
        self._window_lines += 1
        if self._window_lines > self.max_rate and not self._warned:
            self._warned = True
            logging.getLogger("durabatch").warning(
                "log flood: more than %d lines per second (logger %r); repeated lines are being collapsed. "
                "Per-step debug logging can slow a loop down 100x.", self.max_rate, record.name)


def guard_logs(max_lines_per_second: float = 100.0, logger: logging.Logger | None = None) -> FloodGuard:
    """Install a FloodGuard on every handler of `logger` (default: the root logger)."""
    logger = logger or logging.getLogger()
    guard = FloodGuard(max_lines_per_second)
    handlers = logger.handlers or [logging.lastResort]
    for handler in handlers:
        if handler is not None:
            handler.addFilter(guard)
    return guard
