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


def _wait(seconds: float, wake: int) -> None:
    """Sleep, unless a stop signal comes: its handler writes to `wake` (time.sleep would sleep on after it)."""
    select.select([wake], [], [], seconds)


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
    forwarded: list[int] = []
    child: subprocess.Popen | None = None
    wake_read, wake_write = os.pipe()  # a stop signal between attempts ends the wait at once
    os.set_blocking(wake_write, False)

    def forward(signum: int, frame: object) -> None:
        forwarded.append(signum)
        with contextlib.suppress(BlockingIOError):
            os.write(wake_write, b"!")
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in STOP_SIGNALS}
    restarts, stalls, wait = 0, 0, delay
    try:
        while not forwarded:  # a stop signal between attempts ends supervision too
            before = progress_mark(rd)
            child = subprocess.Popen(command, env=env, start_new_session=True,  # our signals reach it once
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
            if (code in NORMAL_EXITS and not left) or forwarded:
                return code if code in NORMAL_EXITS and not left else 75
            quarantine.record_death(rd, "exited with code 0 before the job was finished" if left else
                                    describe_exit(code))
            progressed = progress_mark(rd) != before
            stalls = 0 if progressed else stalls + 1
            if stalls >= stall_limit:
                log(f"giving up: {stalls} restarts in a row made no progress (a crash loop); last: "
                    f"{describe_exit(code)}. See {rd.logs / 'run.log'} and `durabatch status {run_dir}`.")
                return EXIT_GAVE_UP
            if max_restarts is not None and restarts >= max_restarts:
                log(f"giving up after {restarts} restart(s) (--restarts {max_restarts})")
                return EXIT_GAVE_UP
            wait = delay if progressed else min(wait * 2, 60.0)
            _mark_restart(rd, restarts + 2, time.time() + wait, describe_exit(code))
            log(f"restarting in {wait:.1f}s ({'progress made' if progressed else f'no progress x{stalls}'})")
            _wait(wait, wake_read)
            restarts += 1
        log(f"stopped by {signal.Signals(forwarded[0]).name} between attempts")
        return 75
    finally:
        _unmark_restart(rd)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        os.close(wake_read)
        os.close(wake_write)
