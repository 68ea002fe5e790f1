"""Progress on screen: a live bar on a terminal, a live display in a Jupyter cell; elsewhere (CI, nohup, Slurm
logs) one plain line every few seconds, never a flood. Rates are observe/rate.py's: the same as `status`."""

from __future__ import annotations

import html
import sys
import time
from typing import Any, TextIO

from ..core.events import Observer, Stats
from . import format_duration
from .rate import Figures, RunRates, format_api, format_rate

NOTEBOOK_EVERY = 0.5  # seconds between updates of a notebook display (each is a message to the browser)


def _counts(stats: Stats) -> str:
    finished = stats.already_done + stats.done + stats.failed
    parts = [f"{finished:,}/{stats.total:,}" if stats.total is not None else f"{finished:,}"]
    if stats.total:
        parts.append(f"{100 * finished / stats.total:.1f}%")
    return " | ".join(parts)


def _line(stats: Stats, figures: Figures) -> str:
    """One line: counts, rate and ETA, failures, commits, and the API figures of an API job."""
    parts = [_counts(stats), format_rate(figures.rate), f"ETA {format_duration(figures.eta)}",
             f"failed {stats.failed:,}"]
    if stats.already_done:
        parts.append(f"resumed from {stats.already_done:,}")
    parts.append(f"committed {stats.committed:,}")
    if figures.api:
        parts.append(format_api(figures.api))
    return " | ".join(parts)


class PlainProgress(Observer):
    def __init__(self, every: float = 10.0, stream: TextIO | None = None):
        self.every = every
        self.stream = stream or sys.stderr
        self._last = 0.0
        self._rates = RunRates()

    def _print(self, text: str) -> None:
        print(f"[durabatch {time.strftime('%H:%M:%S')}] {text}", file=self.stream, flush=True)

    def on_start(self, stats: Stats) -> None:
        self._last = time.monotonic()

    def on_progress(self, stats: Stats) -> None:
        figures = self._rates.update(stats)  # every event: the rate window needs the samples
        now = time.monotonic()
        if now - self._last >= self.every:
            self._last = now
            self._print(_line(stats, figures))

    def on_message(self, message: str) -> None:
        self._print(message)

    def on_end(self, stats: Stats, exit_code: int, reason: str | None) -> None:
        self._print(_line(stats, self._rates.update(stats)))


class BarProgress(Observer):
    """A rich live bar: done/total, %, items/s, ETA, failures, resumed-from; an API job's figures beneath."""

    def __init__(self, stream: TextIO | None = None):
        from rich.console import Console

        self.console = Console(file=stream or sys.stderr)
        self._progress: Any = None
        self._rates = RunRates()

    def on_start(self, stats: Stats) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn
        from rich.text import Text

        class WithApiLine(Progress):  # the documented way to add lines under the bar
            api_line = ""

            def get_renderables(self) -> Any:
                yield self.make_tasks_table(self.tasks)
                if self.api_line:  # one line: cut with an ellipsis on a narrow terminal rather than wrapped
                    yield Text(self.api_line, style="dim", no_wrap=True, overflow="ellipsis")

        self._progress = WithApiLine(
            TextColumn("[bold]durabatch"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
            TextColumn("{task.fields[rate]} • ETA {task.fields[eta]} • failed {task.fields[failed]}"
                       "{task.fields[resumed]}", markup=False),
            console=self.console, refresh_per_second=4, transient=False)
        self._progress.start()
        self._task = self._progress.add_task("run", total=stats.total, completed=stats.already_done,
                                             **self._fields(stats))

    def _fields(self, stats: Stats) -> dict:
        figures = self._rates.update(stats)
        if self._progress is not None:
            self._progress.api_line = format_api(figures.api) if figures.api else ""
        return {"rate": format_rate(figures.rate), "eta": format_duration(figures.eta),
                "failed": f"{stats.failed:,}",
                "resumed": f" • resumed from {stats.already_done:,}" if stats.already_done else ""}

    def on_progress(self, stats: Stats) -> None:
        if self._progress is not None:
            done = stats.already_done + stats.done + stats.failed
            self._progress.update(self._task, completed=done, **self._fields(stats))

    def on_message(self, message: str) -> None:
        # markup=False: "[durabatch]" is not a style tag (as markup it vanished and left a stray leading space)
        self.console.print(f"[durabatch] {message}", markup=False, highlight=False)

    def on_end(self, stats: Stats, exit_code: int, reason: str | None) -> None:
        if self._progress is not None:
            self.on_progress(stats)
            self._progress.stop()
            self._progress = None


class NotebookProgress(PlainProgress):
    """In a Jupyter cell: one display (a progress bar and the plain line) updated in place; messages print below
    it as they come. IPython's display handles need nothing more than IPython itself (no ipywidgets)."""

    def __init__(self, stream: TextIO | None = None):
        super().__init__(NOTEBOOK_EVERY, stream)
        self._handle: Any = None

    def _bundle(self, stats: Stats, figures: Figures) -> dict[str, str]:
        text = _line(stats, figures)
        finished = stats.already_done + stats.done + stats.failed
        bar = (f'<progress value="{finished}" max="{stats.total}" style="width:40ex"></progress> '
               if stats.total else "")
        return {"text/plain": f"durabatch {text}",
                "text/html": f'<div class="durabatch-progress">{bar}<code>durabatch {html.escape(text)}'
                             f"</code></div>"}

    def _show(self, stats: Stats, figures: Figures) -> None:
        from IPython.display import display

        if self._handle is None:
            self._handle = display(self._bundle(stats, figures), raw=True, display_id=True)
        else:
            self._handle.update(self._bundle(stats, figures), raw=True)

    def on_start(self, stats: Stats) -> None:
        super().on_start(stats)
        self._show(stats, self._rates.update(stats))

    def on_progress(self, stats: Stats) -> None:
        figures = self._rates.update(stats)
        now = time.monotonic()
        if now - self._last >= self.every:
            self._last = now
            self._show(stats, figures)

    def on_end(self, stats: Stats, exit_code: int, reason: str | None) -> None:
        self._show(stats, self._rates.update(stats))


def in_notebook() -> bool:
    """Under a Jupyter kernel (JupyterLab, VS Code, Colab; not a terminal IPython): IPython is loaded and its
    shell is a kernel's."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    kind = type(shell)
    return shell is not None and (kind.__name__ == "ZMQInteractiveShell" or kind.__module__.startswith("google.colab"))


class MessagesOnly(PlainProgress):
    """--progress off: no progress lines, but what the user must know (resumes, quarantines) still shows."""

    def on_progress(self, stats: Stats) -> None: ...

    def on_end(self, stats: Stats, exit_code: int, reason: str | None) -> None: ...


def make_progress(mode: str, every: float) -> Observer | None:
    if mode == "off":
        return MessagesOnly(every)
    if mode in ("auto", "bar") and in_notebook():
        return NotebookProgress()
    if mode == "bar" or (mode == "auto" and sys.stderr.isatty()):
        return BarProgress()
    return PlainProgress(every)

