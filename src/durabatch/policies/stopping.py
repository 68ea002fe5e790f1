"""Stopping: signal handlers only set a flag; the run loop acts on it. The first Ctrl-C/SIGTERM asks for a warm
stop (finish in-flight work within the grace period, commit, exit 75); the second asks for a cold stop (commit
what is finished and exit at once)."""

from __future__ import annotations

import re
import signal
import threading
import time
from collections.abc import Callable
from datetime import datetime
from types import FrameType

from ..errors import ConfigError, StopInterrupt

# SIGUSR1 is Slurm's warning signal (--signal=USR1@120): the same graceful path as SIGTERM.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)


class StopFlag:
    """grace: seconds after the first stop signal at which the stop turns cold by itself, as if a second signal
    came (None: never). Then code running in the main thread (the inline engine's call) is interrupted.
    announce: says that a stop was asked for while the main thread is in the user's code (the run loop, which
    otherwise says it, is not running then); called from a thread of its own, never inside the handler."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, grace: float | None = None,
                 announce: Callable[[str], None] | None = None):
        self.clock = clock
        self.grace = grace
        self.announce = announce
        self.reason: str | None = None
        self.requested_at: float | None = None
        self.urgent = False
        self._previous: dict[int, object] = {}
        self.interrupt_on_urgent = False  # inline engine: a second signal interrupts the user's code
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None

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
            raise StopInterrupt  # a KeyboardInterrupt the function raises itself is only its item's failure
        if not self.urgent and self.interrupt_on_urgent and self.announce is not None:
            grace = "" if self.grace is None else f" (up to {self.grace:.0f}s)"
            message = (f"{self.reason}: stopping after the work in progress{grace}, then committing; "
                       "press Ctrl-C again to stop at once")
            threading.Thread(target=self.announce, args=(message,), daemon=True).start()
        if self.grace is not None and self._timer is None and self._previous:
            self._timer = threading.Timer(self.grace, self._grace_over)
            self._timer.daemon = True
            self._timer.start()

    def _grace_over(self) -> None:
        """The grace period ended: a cold stop. A call in the main thread (blocked in C code that releases the GIL,
        e.g. a sleep or a socket read) is woken by a signal aimed at that thread, whose handler interrupts it."""
        with self._lock:
            if not self._previous or self.urgent:
                return  # the run already ended, or a second signal came
            self.urgent = True
            if self.interrupt_on_urgent:
                signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)

    def install(self) -> None:
        """Install handlers (main thread only; elsewhere Python does not allow it and stopping is the caller's)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._on_signal)

    def restore(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
            for sig, handler in self._previous.items():
                signal.signal(sig, handler)  # type: ignore[arg-type]
            self._previous.clear()


_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_duration(text: str) -> float:
    """'11h30m', '90m', '45s', '1d2h' or plain seconds."""
    text = text.strip().lower()
    try:
        return float(text)
    except ValueError:
        pass
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([dhms])", text)
    if not parts or re.sub(r"(\d+(?:\.\d+)?)\s*([dhms])", "", text).strip():
        raise ConfigError(f"deadline '{text}': expected a duration like 11h30m, 90m or 45s")
    return sum(float(n) * _UNITS[u] for n, u in parts)


def parse_time(text: str) -> float:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"deadline_at '{text}': expected an ISO time like 2026-11-24T18:00:00") from None
    return moment.timestamp()  # a naive time is local time


def wall_deadline(deadline: str | None, deadline_at: str | None, started: float,
                  slurm_end: str | None = None) -> tuple[float, str] | None:
    """The earliest of --deadline (from start), --deadline-at and Slurm's job end time (SLURM_JOB_END_TIME, read
    by the caller), as (epoch, origin)."""
    candidates = []
    if deadline:
        candidates.append((started + parse_duration(deadline), f"--deadline {deadline}"))
    if deadline_at:
        candidates.append((parse_time(deadline_at), f"--deadline-at {deadline_at}"))
    if slurm_end and slurm_end.isdigit():
        candidates.append((float(slurm_end), "the Slurm job's end time"))
    return min(candidates) if candidates else None
