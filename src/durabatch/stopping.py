"""Stopping: signal handlers only set a flag; the run loop acts on it. The first Ctrl-C/SIGTERM asks for a warm
stop (finish in-flight work within the grace period, commit, exit 75); the second asks for a cold stop (commit
what is finished and exit at once)."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from types import FrameType

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopFlag:
    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.reason: str | None = None
        self.requested_at: float | None = None
        self.urgent = False
        self._previous: dict[int, object] = {}
        self.interrupt_on_urgent = False  # inline engine: a second signal interrupts the user's code

    def request(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
            self.requested_at = self.clock()
        else:
            self.urgent = True

    @property
    def requested(self) -> bool:
        return self.reason is not None

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.request(signal.Signals(signum).name)
        if self.urgent and self.interrupt_on_urgent:
            raise KeyboardInterrupt

    def install(self) -> None:
        """Install handlers (main thread only; elsewhere Python does not allow it and stopping is the caller's)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._on_signal)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()
