"""A training loop's progress line: step/total, steps/s, ETA to the total and time left to the deadline (and the
step it will stop at when the total does not fit), the last checkpoint, the latest logged metrics.

On a terminal one line rewritten in place (at most 4 times a second); piped (Slurm logs, nohup, CI) a plain line
every `every` seconds, never a flood. A call per step costs one clock read until a line is due."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from ..observe import format_duration

MODES = ("auto", "bar", "plain", "off")
TTY_REFRESH = 0.25


class ProgressLine:
    def __init__(self, mode: str = "auto", every: float = 10.0, stream: TextIO | None = None):
        if mode not in MODES:
            raise ValueError(f"progress={mode!r}: one of {', '.join(MODES)}")
        self.stream = stream or sys.stderr
        self.live = mode == "bar" or (mode == "auto" and _isatty(self.stream))
        self.off = mode == "off"
        self.every = TTY_REFRESH if self.live else every
        self._next = 0.0
        self._anchor: tuple[float, int] | None = None  # (time, step) the rate is measured from
        self._rate: float | None = None
        self._shown = False  # a live line is on screen (a message clears it first)

    def start(self, step: int) -> None:
        now = time.monotonic()
        self._anchor, self._rate = (now, step), None
        self._next = now + min(self.every, 2.0)  # the first line soon: the user sees it is going

    def due(self) -> bool:
        return not self.off and time.monotonic() >= self._next

    def show(self, step: int, total: int | None, deadline: float | None, saved: tuple[int, float] | None,
             metrics: dict[str, Any] | None, clock_now: float, final: bool = False) -> None:
        """Print the line (call when due(), and at the end with final=True); times (deadline, the checkpoint's)
        are on the Checkpointer's clock, read as clock_now."""
        now = time.monotonic()
        self._next = now + self.every
        self._measure(now, step)
        if self.off:
            return
        text = line(step, total, self._rate, deadline, saved, metrics, clock_now)
        if self.live:
            self.stream.write(f"\r\x1b[K[durabatch] {text}" + ("\n" if final else ""))
            self._shown = not final
        else:
            self.stream.write(f"[durabatch {time.strftime('%H:%M:%S')}] {text}\n")
        self.stream.flush()

    def _measure(self, now: float, step: int) -> None:
        if self._anchor is None:
            self._anchor = (now, step)
            return
        t0, s0 = self._anchor
        if now - t0 < 0.2:
            return
        rate = (step - s0) / (now - t0)
        # smoothed over about the last minute of lines: steps/s that a data-loader hiccup does not swing
        weight = min(1.0, (now - t0) / 60) if self._rate is not None else 1.0
        self._rate = rate if self._rate is None else self._rate + weight * (rate - self._rate)
        self._anchor = (now, step)

    def message(self, text: str) -> None:
        """A line of its own (resumed, stopped) that the live line does not overwrite."""
        if self._shown:
            self.stream.write("\r\x1b[K")
            self._shown = False
        print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self._shown:
            self.stream.write("\n")
            self.stream.flush()
            self._shown = False


def line(step: int, total: int | None, rate: float | None, deadline: float | None,
         saved: tuple[int, float] | None, metrics: dict[str, Any] | None, now: float) -> str:
    parts = [f"step {step:,}/{total:,} ({100 * step / total:.1f}%)" if total else f"step {step:,}"]
    parts.append(f"{rate:,.3g} steps/s" if rate else "? steps/s")
    left = None if total is None else max(0, total - step)
    eta = left / rate if rate and left is not None else None
    if total is not None:
        parts.append(f"ETA {format_duration(eta)}")
    if deadline is not None:
        until = max(0.0, deadline - now)
        text = f"deadline in {format_duration(until)}"
        if eta is not None and rate and eta > until:
            text += f" (stops near step {step + int(rate * until):,}; resume after)"
        parts.append(text)
    if saved is not None:
        parts.append(f"checkpoint at step {saved[0]:,} {format_duration(now - saved[1])} ago")
    else:
        parts.append("no checkpoint yet")
    if metrics:
        parts.append(", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()))
    return " | ".join(parts)


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
