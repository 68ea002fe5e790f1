"""Metrics by step (`ckpt.log(loss=...)`), apart from checkpoints: RUN_DIR/checkpoints/steps.jsonl.

Cheap on the training thread: a call adds its values to running sums (about a microsecond); a row (the mean of
each metric since the last row, and how many calls it averages) is made at most every `interval` seconds, and rows
are appended to the file in one write every FLUSH_SECONDS (and at each checkpoint, a stop and the end). A kill -9
loses at most the rows since the last flush. The interval grows with the session's length (INTERVAL_FLOOR
seconds, or the elapsed time over TARGET_ROWS), so a 20-second run gets ~400 points and a 10-hour run ~2,000, and
the file stays small whatever the speed.

JSON lines, not SQLite: appending a line is the whole write path (no lock, no journal, nothing a kill -9 can
leave half-done but the last line), readers (status, report, the dashboard) open it read-only while it grows and
skip a torn last line, and it reads like metrics.jsonl beside it. Each session (process start) writes a first
line {"session": time, "start_step": step, "total": steps}: a reader drops the rows of earlier sessions past that
step (the steps a killed session ran beyond its last checkpoint are run again, and the curve shows the run that
counts); `status` reads the total there before the first checkpoint stores it (the line is "total"-less when the
loop did not say)."""

from __future__ import annotations

import atexit
import contextlib
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .writer_process import STEPS

INTERVAL_FLOOR = 0.05  # s between rows at the start of a session: ~20 points a second
TARGET_ROWS = 2000  # rows per session, about, once it is long enough
FLUSH_SECONDS = 2.0


class StepLog:
    """The appending side, owned by a Checkpointer."""

    def __init__(self, directory: Path, clock: Callable[[], float] = time.time):
        self.path = Path(directory) / STEPS
        self.clock = clock
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}  # per metric: a reward logged at episode ends, a loss every step
        self._calls = 0
        self._lines: list[str] = []
        self._started: float | None = None
        self._next_row = 0.0
        self._next_flush = 0.0
        self.last: dict[str, Any] | None = None  # the latest row: the progress line shows it
        self._owner = os.getpid()  # a forked child (a DataLoader worker) must not write its copy of the buffer

    def start(self, step: int, total: int | None = None) -> None:
        """A new session from `step` (towards `total`, when known)."""
        if self._started is None:  # a loop of the user's own (no range()) that ends normally loses nothing
            atexit.register(self.flush)
        self._started = now = self.clock()
        self._lines.append(json.dumps({"session": now, "start_step": step, **({"total": total} if total else {})}))
        self._next_row, self._next_flush = now, now + FLUSH_SECONDS

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if self._started is None:
            self.start(step)
        sums, counts = self._sums, self._counts
        for name, value in metrics.items():
            sums[name] = sums.get(name, 0.0) + float(value)
            counts[name] = counts.get(name, 0) + 1
        self._calls += 1
        now = self.clock()
        if now >= self._next_row:
            self._row(step, now)
            if now >= self._next_flush:
                self.flush()

    def _row(self, step: int, now: float) -> None:
        n = self._calls
        values = {k: v / self._counts[k] for k, v in self._sums.items()}
        self.last = {"step": step, "time": now, "n": n, "metrics": values}
        clean = {k: (v if math.isfinite(v) else str(v)) for k, v in values.items()}  # nan/inf are not JSON
        self._lines.append(json.dumps({"step": step, "time": now, "n": n, "metrics": clean}))
        self._sums, self._counts, self._calls = {}, {}, 0
        assert self._started is not None
        self._next_row = now + max(INTERVAL_FLOOR, (now - self._started) / TARGET_ROWS)

    def flush(self, step: int | None = None) -> None:
        """Append the rows made so far (first the values averaged since the last row, given the current step)."""
        if os.getpid() != self._owner:
            return
        if self._calls and step is not None:
            self._row(step, self.clock())
        if self._lines:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write("\n".join(self._lines) + "\n")
            self._lines = []
        self._next_flush = self.clock() + FLUSH_SECONDS


def read_steps(directory: Path) -> list[dict[str, Any]]:
    """The rows of RUN_DIR/checkpoints/steps.jsonl that the run as it stands went through, by step, each with its
    session's start time: a session's first line drops the earlier sessions' rows past its start (re-run after a
    resume); a torn line is skipped."""
    path = Path(directory) / STEPS
    rows: list[dict[str, Any]] = []
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return rows
    session = 0.0
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            row = json.loads(line)
            if not isinstance(row, dict):
                continue
            if "session" in row and isinstance(row.get("start_step"), int):
                rows = [r for r in rows if r["step"] <= row["start_step"]]
                session = row["session"]
            elif isinstance(row.get("step"), int) and isinstance(row.get("metrics"), dict):
                rows.append({**row, "session": session})
    return rows


def session_total(directory: Path) -> int | None:
    """The total the latest session said it runs to (its first line); None when it did not say, or no file."""
    try:
        data = (Path(directory) / STEPS).read_bytes()
    except OSError:
        return None
    at = data.rfind(b'\n{"session"') + 1  # the start of a line, not a metric of that name
    if at == 0 and not data.startswith(b'{"session"'):
        return None
    with contextlib.suppress(ValueError):
        total = json.loads(data[at:].split(b"\n", 1)[0]).get("total")
        return total if isinstance(total, int) else None
    return None


def last_step_row(directory: Path, tail_bytes: int = 65536) -> dict[str, Any] | None:
    """The newest row, reading only the end of the file (status on a long run)."""
    path = Path(directory) / STEPS
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, 2) - tail_bytes))
            lines = f.read().decode("utf-8", errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        with contextlib.suppress(ValueError):
            row = json.loads(line)
            if isinstance(row, dict) and isinstance(row.get("step"), int) and isinstance(row.get("metrics"), dict):
                return row
    return None
