"""The run's watchdog: a tiny process that ends the run when a stop cannot work in it.

A thread stuck in C code that holds the GIL (a catastrophic regular expression, a C extension's long loop) stops
every other thread of the process, the signal handlers and the runner's loop included: no Python code can run until
the call returns, which may be never. Nothing inside the process can help, so a process outside it watches:

- Python's C-level signal handler writes each signal's number to a wakeup fd without needing the GIL; that fd is a
  pipe to the watchdog, which so learns of every stop signal even when the runner cannot act on it;
- a runner thread (which needs the GIL) writes a heartbeat to a second pipe every half second.

When the grace period after the first stop signal is over (at once after a second), and no heartbeat came for a
few seconds, the runner is frozen: the watchdog says why and kills it (SIGKILL; its worker processes die with it).
What was committed is safe (the commit protocol survives any kill); the calls in flight are redone by the next run.
The heartbeat pipe's end (the runner ended, or closed it) ends the watchdog."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

SILENT = 5.0  # seconds without a heartbeat that make a runner frozen, once its stop is overdue
BEAT = 0.5

_SCRIPT = r"""
import os, select, signal, sys, time
grace, sig_fd, beat_fd, silent = float(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
runner, stops, due = os.getppid(), {int(s) for s in sys.argv[5].split(",")}, None
last = time.monotonic()
while os.getppid() == runner:
    ready = select.select([sig_fd, beat_fd], [], [], 0.5)[0]
    now = time.monotonic()
    if beat_fd in ready:
        if not os.read(beat_fd, 4096):
            break
        last = now
    if sig_fd in ready:
        signals = [s for s in os.read(sig_fd, 4096) if s in stops]
        if signals:
            due = now + grace if due is None and len(signals) == 1 else now
    if due is not None and now >= due and now - last >= silent:
        sys.stderr.write(
            f"durabatch: the run did not stop {grace:g}s after the stop signal and no Python code has run in it for "
            f"{now - last:.0f}s: a thread is stuck in C code that holds the GIL (e.g. a catastrophic regular "
            "expression), which nothing inside the process can interrupt. Killing it (SIGKILL). What was committed "
            "is safe, and the same command resumes; the calls in flight run again, one at a time (one that hangs "
            "the run 3 times is quarantined). For such code use --engine processes with --item-timeout: a stuck "
            "worker process is killed and replaced.\n")
        sys.stderr.flush()
        os.kill(runner, signal.SIGKILL)
        break
"""


class Watchdog:
    """Started by the run in its main thread, after its signal handlers are installed; close() when it ends."""

    def __init__(self, grace: float, stop_signals: tuple[int, ...]):
        sig_r, self._sig_w = os.pipe()
        beat_r, self._beat_w = os.pipe()
        os.set_blocking(self._sig_w, False)
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _SCRIPT, repr(grace), str(sig_r), str(beat_r), repr(SILENT),
                 ",".join(str(int(s)) for s in stop_signals)],
                pass_fds=(sig_r, beat_r), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        finally:
            os.close(sig_r)
            os.close(beat_r)
        self._previous = signal.set_wakeup_fd(self._sig_w, warn_on_full_buffer=False)
        self._closed = threading.Event()
        self._beats = threading.Thread(target=self._beat, name="durabatch-heartbeat", daemon=True)
        self._beats.start()

    def _beat(self) -> None:
        while not self._closed.wait(BEAT):
            try:
                os.write(self._beat_w, b".")
            except OSError:
                return  # the watchdog is gone (or closed)

    def close(self) -> None:
        signal.set_wakeup_fd(self._previous)
        self._closed.set()
        self._beats.join(timeout=5)  # never a write to a closed (and maybe reused) descriptor
        for fd in (self._beat_w, self._sig_w):
            os.close(fd)  # the end of the heartbeat pipe ends the watchdog (within half a second)
        # Reaped in the background: waiting for a process that may still be starting would slow every run's end.
        threading.Thread(target=self.process.wait, name="durabatch-watchdog-reaper", daemon=True).start()


def start(grace: float, stop_signals: tuple[int, ...]) -> Watchdog | None:
    """A watchdog, when this is the main thread (only there are signals handled) and a process can be started."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_kill"):
        return None
    try:
        return Watchdog(grace, stop_signals)
    except OSError:
        return None
