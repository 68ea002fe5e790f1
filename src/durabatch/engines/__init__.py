"""Engines execute batches of work. They know nothing of the ledger; the runner only sees the `Engine` protocol."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import ConfigError
from ..policies.limits import Limits
from .base import Batch, BatchResult, Engine


def make_engine(name: str, workers: int, item_timeout: float | None = None, memory_limit: int | None = None,
                concurrency: int = 16, limits: Limits | None = None, devices: Sequence[str] | None = None,
                ray_options: Mapping[str, Any] | None = None, runner_visible: str | None = None) -> Engine:
    """item_timeout and memory_limit are enforced where the engine can: processes (kill and replace the worker),
    inline (timeout by SIGALRM in the main thread). Threads cannot be killed: use processes for them.
    ray_options: the ray engine's address, resources per actor, shards, reader and key, env (Ray is imported only
    when it starts)."""
    if name == "inline":
        from .inline import InlineEngine

        return InlineEngine(item_timeout)
    if name == "threads":
        from .threads import ThreadEngine

        return ThreadEngine(workers, limits)
    if name == "processes":
        from .processes import ProcessEngine

        # devices: --gpus, one worker each; runner_visible: the runner's own CUDA_VISIBLE_DEVICES, kept
        return ProcessEngine(workers, item_timeout, memory_limit, devices, runner_visible)
    if name == "asyncio":
        from .aio import AsyncEngine

        return AsyncEngine(concurrency, item_timeout, limits)
    if name == "ray":
        from .ray import RayEngine

        return RayEngine(workers, item_timeout=item_timeout, **(ray_options or {}))
    raise ConfigError(f"unknown engine '{name}' (expected inline, threads, processes, asyncio or ray)")


__all__ = ["Batch", "BatchResult", "Engine", "make_engine"]
