"""Observers listen to run events (progress, commits, the end). They can never crash a run."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("durabatch")


@dataclass
class Stats:
    """What the runner knows at a moment; observers render it."""

    total: int | None
    already_done: int
    done: int = 0
    failed: int = 0
    committed: int = 0
    in_flight: int = 0
    elapsed: float = 0.0
    source: str = ""
    run_dir: str = ""
    key_mode: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return (self.done + self.failed) / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def remaining(self) -> int | None:
        if self.total is None:
            return None
        return max(0, self.total - self.already_done - self.done - self.failed)

    @property
    def eta(self) -> float | None:
        rate, remaining = self.rate, self.remaining
        return remaining / rate if remaining is not None and rate > 0 else None


class Observer:
    """Every hook a no-op by default."""

    def on_start(self, stats: Stats) -> None: ...

    def on_progress(self, stats: Stats) -> None: ...

    def on_commit(self, stats: Stats, rows: int, failures: int, shard: str | None) -> None: ...

    def on_message(self, message: str) -> None: ...

    def on_end(self, stats: Stats, exit_code: int, reason: str | None) -> None: ...


class Observers:
    """Fans events out; an observer that raises is logged and the run goes on."""

    def __init__(self, observers: list[Observer]):
        self.observers = observers

    def __getattr__(self, hook: str) -> Any:
        def call(*args: Any) -> None:
            for observer in self.observers:
                try:
                    getattr(observer, hook)(*args)
                except Exception:  # noqa: BLE001
                    log.exception("observer %s failed in %s", type(observer).__name__, hook)

        return call
