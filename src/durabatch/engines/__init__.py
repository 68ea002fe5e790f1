"""Engines execute batches of work. They know nothing of the ledger; the runner only sees the `Engine` protocol."""

from __future__ import annotations

from ..errors import ConfigError
from ..policies.limits import Limits
from .base import Batch, BatchResult, Engine


def make_engine(name: str, workers: int, item_timeout: float | None = None, memory_limit: int | None = None,
                concurrency: int = 16, limits: Limits | None = None) -> Engine:
    """item_timeout and memory_limit are enforced where the engine can: processes (kill and replace the worker),
    inline (timeout by SIGALRM in the main thread). Threads cannot be killed: use processes for them."""
    if name == "inline":
        from .inline import InlineEngine

        return InlineEngine(item_timeout)
    if name == "threads":
        from .threads import ThreadEngine

        return ThreadEngine(workers, limits)
    if name == "processes":
        from .processes import ProcessEngine

        return ProcessEngine(workers, item_timeout, memory_limit)
    if name == "asyncio":
        from .aio import AsyncEngine

        return AsyncEngine(concurrency, item_timeout, limits)
    raise ConfigError(f"unknown engine '{name}' (expected inline, threads or processes)")


__all__ = ["Batch", "BatchResult", "Engine", "make_engine"]
