"""Progress on screen: a live bar on a terminal; elsewhere (CI, nohup, Slurm logs) one plain line every few
seconds, never a flood."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from ..core.events import Observer, Stats
from . import format_duration


def _line(stats: Stats) -> str:
    finished = stats.already_done + stats.done + stats.failed
    parts = [f"{finished:,}/{stats.total:,}" if stats.total is not None else f"{finished:,}"]
    if stats.total:
        parts.append(f"{100 * finished / stats.total:.1f}%")
    parts.append(f"{stats.rate:,.1f} items/s")
    parts.append(f"ETA {format_duration(stats.eta)}")
    parts.append(f"failed {stats.failed:,}")
    if stats.already_done:
        parts.append(f"resumed from {stats.already_done:,}")
    parts.append(f"committed {stats.committed:,}")
    api = stats.extra
    if api:
        parts.append(f"in flight {api['in_flight']} | {api['requests_per_min']:,.0f} req/min | "
                     f"429s {api['rate_limited']:,} | retries {api.get('retries', 0):,}")
        if api["tokens"]:
            parts.append(f"{api['tokens_per_min']:,.0f} tokens/min")
        if api["cost"]:
            parts.append(f"cost {api['cost']:.4f}")
    return " | ".join(parts)


class PlainProgress(Observer):
    def __init__(self, every: float = 10.0, stream: TextIO | None = None):
        self.every = every
        self.stream = stream or sys.stderr
        self._last = 0.0

    def _print(self, text: str) -> None:
        print(f"[durabatch {time.strftime('%H:%M:%S')}] {text}", file=self.stream, flush=True)

    def on_start(self, stats: Stats) -> None:
        self._last = time.monotonic()

    def on_progress(self, stats: Stats) -> None:
        now = time.monotonic()
        if now - self._last >= self.every:
            self._last = now
            self._print(_line(stats))

    def on_message(self, message: str) -> None:
        self._print(message)

    def on_end(self, stats: Stats, exit_code: int, reason: str | None) -> None:
        self._print(_line(stats))


class BarProgress(Observer):
    """A rich live bar: done/total, %, items/s, ETA, failures, resumed-from."""

    def __init__(self, stream: TextIO | None = None):
        from rich.console import Console

        self.console = Console(file=stream or sys.stderr)
        self._progress = None

    def on_start(self, stats: Stats) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn

        self._progress = Progress(
            TextColumn("[bold]durabatch"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
            TextColumn("{task.fields[rate]} • ETA {task.fields[eta]} • failed {task.fields[failed]}"
                       "{task.fields[resumed]}"),
            console=self.console, refresh_per_second=4, transient=False)
        self._progress.start()
        self._task = self._progress.add_task("run", total=stats.total, **self._fields(stats))
        self._progress.update(self._task, completed=stats.already_done)

    @staticmethod
    def _fields(stats: Stats) -> dict:
        return {"rate": f"{stats.rate:,.1f} items/s", "eta": format_duration(stats.eta),
                "failed": f"{stats.failed:,}",
                "resumed": f" • resumed from {stats.already_done:,}" if stats.already_done else ""}

    def on_progress(self, stats: Stats) -> None:
        if self._progress is not None:
            done = stats.already_done + stats.done + stats.failed
            self._progress.update(self._task, completed=done, **self._fields(stats))

    def on_message(self, message: str) -> None:
        self.console.print(f"[durabatch] {message}", highlight=False)

    def on_end(self, stats: Stats, exit_code: int, reason: str | None) -> None:
        if self._progress is not None:
            self.on_progress(stats)
            self._progress.stop()
            self._progress = None


class MessagesOnly(PlainProgress):
    """--progress off: no progress lines, but what the user must know (resumes, quarantines) still shows."""

    def on_progress(self, stats: Stats) -> None: ...

    def on_end(self, stats: Stats, exit_code: int, reason: str | None) -> None: ...


def make_progress(mode: str, every: float) -> Observer | None:
    if mode == "off":
        return MessagesOnly(every)
    if mode == "bar" or (mode == "auto" and sys.stderr.isatty()):
        return BarProgress()
    return PlainProgress(every)
