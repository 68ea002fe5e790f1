"""The layout of a run directory (ledger, shards, logs, job.json, lock, journal, checkpoints), the run lock, and
the one fsync helper of the store."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import DurabatchError, RunLockedError


class RunDir:
    """Paths inside a run directory."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.ledger = self.path / "ledger.sqlite"
        self.shards = self.path / "shards"
        self.logs = self.path / "logs"
        self.job = self.path / "job.json"
        self.lock = self.path / "lock"
        self.inflight = self.path / "inflight.journal"  # batches dispatched and not finished: poison suspects
        self.last_death = self.logs / "last_death.json"  # written by the supervisor: how the last runner died
        # written by the supervisor while it waits to restart the run (removed when that attempt ends or it stops):
        # its pid and start time, the next attempt and when; `status` says "restarting" instead of "died"
        self.restart_marker = self.logs / "supervisor.json"

    def create(self) -> None:
        try:
            for d in (self.path, self.shards, self.logs):
                d.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise not_writable(self, exc) from None

    def write_job(self, data: dict[str, Any]) -> None:
        """job.json: the resolved settings and the fingerprint, replaced atomically."""
        tmp = self.job.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2, default=str))
        tmp.replace(self.job)


@contextlib.contextmanager
def run_lock(run_dir: RunDir) -> Iterator[None]:
    """Hold an exclusive flock on run_dir/lock for the run; the kernel releases it even on SIGKILL."""
    try:
        fd = os.open(run_dir.lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise not_writable(run_dir, exc) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = lock_holder(run_dir)
            raise RunLockedError(
                f"run directory {run_dir.path} is in use by another durabatch process (pid {pid}); "
                "wait for it to finish or stop it first", pid) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)  # closing releases the flock


def lock_holder(run_dir: RunDir) -> int | None:
    """The pid of the process running this directory, or None when nobody is."""
    try:
        fd = os.open(run_dir.lock, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.read(fd, 64).decode().strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def move_aside(run_dir: RunDir, now: float | None = None) -> Path | None:
    """Start over without deleting anything: rename the run directory to a sibling RUN_DIR.old-YYYYMMDD-HHMMSS
    (a -2, -3... suffix when that exists) and return where it went; None when there is nothing to move. Done
    under the run lock, so a running job is never moved from under itself."""
    path = Path(os.path.abspath(run_dir.path))
    if not path.is_dir() or not any(path.iterdir()):
        return None
    if (path / "ranks").is_dir():
        raise DurabatchError(f"{path} holds a ranked job (ranks/): starting fresh moves only a single run's "
                             "directory; rename it yourself once no rank runs")
    if not (run_dir.ledger.exists() or run_dir.job.exists()):
        raise DurabatchError(f"{path} is not a durabatch run directory (no ledger.sqlite): not moving it aside; "
                             "choose another run directory")
    if Path.cwd() == path or path in Path.cwd().parents:
        raise DurabatchError(f"{path} holds the current directory: start fresh from outside it")
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    target, n = path.with_name(f"{path.name}.old-{stamp}"), 1
    while target.exists() or target.is_symlink():  # never overwrite an earlier one
        n += 1
        target = path.with_name(f"{path.name}.old-{stamp}-{n}")
    with run_lock(run_dir):  # RunLockedError (pid named) while another process runs this directory
        path.rename(target)
    fsync_path(path.parent)  # the rename survives a crash: the next run never finds the old ledger there
    return target


def not_writable(run_dir: RunDir, exc: OSError) -> DurabatchError:
    """A run directory that cannot be written (read-only media, no permission): one readable line."""
    reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
    return DurabatchError(f"cannot write to the run directory {run_dir.path} ({reason}: {exc.filename}); a "
                          "finished run there can still be read with `durabatch status`, `export` and `report`")


def fsync_path(path: Path) -> None:
    """fsync a file or a directory by path (a directory after a rename in it makes the rename durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
