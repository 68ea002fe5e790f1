"""Engines execute batches of work. They know nothing of the ledger; the runner only sees the `Engine` protocol."""

from __future__ import annotations

from ..errors import ConfigError
from .base import Batch, BatchResult, Engine


def make_engine(name: str, workers: int) -> Engine:
    if name == "inline":
        from .inline import InlineEngine

        return InlineEngine()
    if name == "threads":
        from .threads import ThreadEngine

        return ThreadEngine(workers)
    if name == "processes":
        from .processes import ProcessEngine

        return ProcessEngine(workers)
    raise ConfigError(f"unknown engine '{name}' (expected inline, threads or processes)")


__all__ = ["Batch", "BatchResult", "Engine", "make_engine"]
