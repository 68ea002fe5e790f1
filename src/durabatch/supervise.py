"""Supervised restart: run the job in a child process and restart it after an abnormal death (a signal, the OOM
killer, an unexpected exit code), resuming each time. It stops with a report when restarts stop making progress
(a crash loop), not after a fixed count. This replaces the bash restart loop of seed 000.

Exit codes pass through (0, 1, 2, 75); giving up on a crash loop or after --restarts exits 70 (EX_SOFTWARE)."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import psutil

from . import environment
from .core import quarantine
from .engines.lifeline import die_with_parent
from .policies.stopping import STOP_SIGNALS
from .store.ledger import Ledger
from .store.ranks import left_to_do
from .store.rundir import RunDir

EXIT_GAVE_UP = 70
NORMAL_EXITS = (0, 1, 2, 75)
STALL_LIMIT = 3  # restarts in a row without progress that make a crash loop


def describe_exit(code: int) -> str:
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
        hint = " (also what the OOM killer sends)" if -code == signal.SIGKILL else ""
        return f"killed by signal {-code} ({name}){hint}"
    return f"exited with code {code}"


def progress_mark(rd: RunDir) -> tuple | None:
    """What changes when a run gets anywhere: items done or failed, suspects found, guilt pinned."""
    if not rd.ledger.exists():
        return None
    try:
        ledger = Ledger.open_readonly(rd)
    except Exception:  # noqa: BLE001 - a ledger killed while being created: no progress yet
        return None
    try:
        return ledger.progress_mark()
    finally:
        ledger.close()


def unfinished(rd: RunDir) -> int | None:
    """Items the ledger does not count as finished (done, failed, quarantined or interrupted); None when it cannot
    say (no ledger, or a source of unknown length). A run's exit code 0 is believed only when this is 0."""
    return left_to_do(rd)


def _stops_with(supervisor: int) -> Callable[[], None]:
    """In the child, between fork and exec: a SIGTERM (a warm stop) when the supervisor dies, even by SIGKILL."""
    return lambda: die_with_parent(supervisor, signal.SIGTERM)


def _mark_restart(rd: RunDir, attempt: int, at: float, last_exit: str) -> None:
    """While the run waits for its restart no process holds the run lock: this marker tells `durabatch status`
    (observe/status.py) that the supervisor is there and when it starts the next attempt. Its own start time goes
    with its pid, so that a reader can tell this process from a later one given the same pid."""
    me = psutil.Process()
    marker = {"pid": me.pid, "created": me.create_time(), "attempt": attempt, "next_attempt_at": at,
              "last_exit": last_exit}
    tmp = rd.restart_marker.with_suffix(".tmp")
    with contextlib.suppress(OSError):  # a full disk costs status its "restarting", never the restart itself
        tmp.write_text(json.dumps(marker))
        tmp.replace(rd.restart_marker)  # a reader never sees half of it; no fsync: it means nothing after a reboot


def _unmark_restart(rd: RunDir) -> None:
    with contextlib.suppress(FileNotFoundError):
        rd.restart_marker.unlink()


class _Stops:
    """Stop signals while supervising: forwarded to the running attempt (once: it has its own session), and they
    end the wait between attempts at once (a write to a pipe; time.sleep would sleep on after the handler)."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self.child: subprocess.Popen | None = None
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_write, False)
        self._previous = {sig: signal.signal(sig, self._forward) for sig in STOP_SIGNALS}

    def _forward(self, signum: int, frame: object) -> None:
        self.received.append(signum)
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_write, b"!")
        if self.child is not None and self.child.poll() is None:
            self.child.send_signal(signum)

    def wait(self, seconds: float) -> None:
        select.select([self._wake_read], [], [], seconds)

    def close(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        os.close(self._wake_read)
        os.close(self._wake_write)


def _give_up(stalls: int, stall_limit: int, restarts: int, max_restarts: int | None, code: int,
             rd: RunDir) -> str | None:
    """Why supervision ends here (a crash loop, or the --restarts budget spent), or None to restart."""
    if stalls >= stall_limit:
        return (f"giving up: {stalls} restarts in a row made no progress (a crash loop); last: {describe_exit(code)}"
                f". See {rd.logs / 'run.log'} and `durabatch status {rd.path}`.")
    if max_restarts is not None and restarts >= max_restarts:
        return f"giving up after {restarts} restart(s) (--restarts {max_restarts})"
    return None


class _Log:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path

    def __call__(self, text: str) -> None:
        line = f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {text}"
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
        print(f"[durabatch supervise] {text}", file=sys.stderr, flush=True)


def supervise(run_args: Sequence[str], run_dir: str, max_restarts: int | None = None, delay: float = 1.0,
              stall_limit: int = STALL_LIMIT) -> int:
    """Run `durabatch run *run_args` until it ends normally; restart it after abnormal deaths."""
    rd = RunDir(run_dir)
    log = _Log(rd.logs / "supervise.log")
    env = {**environment.variables(), environment.SUPERVISED: "1"}
    command = [sys.executable, "-m", "durabatch", "run", *run_args]
    stops = _Stops()
    restarts, stalls, wait = 0, 0, delay
    try:
        while not stops.received:  # a stop signal between attempts ends supervision too
            before = progress_mark(rd)
            child = stops.child = subprocess.Popen(command, env=env, start_new_session=True,  # signals reach it once
                                                   preexec_fn=_stops_with(os.getpid()))
            log(f"attempt {restarts + 1}: started pid {child.pid}")
            code = child.wait()
            _unmark_restart(rd)  # the attempt it announced has ended; a new marker if there is a next one
            log(f"attempt {restarts + 1}: pid {child.pid} {describe_exit(code)}")
            # Judged by the ledger, not the exit code: a function that ends the process can exit 0 mid-job.
            left = unfinished(rd) if code == 0 else None
            if left:
                log(f"attempt {restarts + 1}: exit code 0, but the ledger says {left:,} item(s) are not finished: "
                    "an abnormal end")
            if (code in NORMAL_EXITS and not left) or stops.received:
                return code if code in NORMAL_EXITS and not left else 75
            quarantine.record_death(rd, "exited with code 0 before the job was finished" if left else
                                    describe_exit(code))
            progressed = progress_mark(rd) != before
            stalls = 0 if progressed else stalls + 1
            verdict = _give_up(stalls, stall_limit, restarts, max_restarts, code, rd)
            if verdict:
                log(verdict)
                return EXIT_GAVE_UP
            wait = delay if progressed else min(wait * 2, 60.0)
            _mark_restart(rd, restarts + 2, time.time() + wait, describe_exit(code))
            log(f"restarting in {wait:.1f}s ({'progress made' if progressed else f'no progress x{stalls}'})")
            stops.wait(wait)
            restarts += 1
        log(f"stopped by {signal.Signals(stops.received[0]).name} between attempts")
        return 75
    finally:
        _unmark_restart(rd)
        stops.close()
