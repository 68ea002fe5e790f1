"""Memory limits: warnings near them, and a signal to pause dispatch while memory is above them (seed 003's
monitor, without the crash at hour 11). Pure: what is measured comes from the sampler the edge passes in
(observe/resources.py), time from `clock`."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import option


@dataclass(frozen=True)
class Memory:
    ram: int  # resident bytes of this process and its children (the workers)
    gpu: int | None  # bytes in use on the GPUs, when there are any


class MemoryWatch:
    """check() every loop turn; it samples at most every `every` seconds. Warns once at 90% of a limit, and
    says when dispatch should pause (above a limit)."""

    def __init__(self, max_ram: int | None, max_gpu: int | None, *, sampler: Callable[[], Memory],
                 every: float = 2.0, clock: Callable[[], float] = time.monotonic):
        self.max_ram, self.max_gpu, self.every = max_ram, max_gpu, every
        self.sampler, self.clock = sampler, clock
        self.last: Memory | None = None
        self.over = False
        self._sampled = -1e9
        self._warned = False

    def check(self) -> list[str]:
        """Messages to show (warnings, pause and resume); updates `over`."""
        if self.max_ram is None and self.max_gpu is None:
            return []
        now = self.clock()
        if now - self._sampled < self.every:
            return []
        self._sampled = now
        memory = self.last = self.sampler()
        messages = []
        near = [f"{name} {used / 2**30:.2f} GB of {limit / 2**30:.2f} GB" for name, used, limit in self._pairs(memory)
                if used >= 0.9 * limit]
        if near and not self._warned:
            self._warned = True
            messages.append(f"memory high: {', '.join(near)}")
        over = any(used > limit for _, used, limit in self._pairs(memory))
        if over and not self.over:
            messages.append(f"memory above the limit ({option('max_memory', None)} / {option('max_gpu_memory', None)}"
                            "): pausing dispatch until it falls, after a cleanup")
        elif self.over and not over:
            messages.append("memory back under the limit: dispatch resumed")
        self.over = over
        return messages

    def _pairs(self, memory: Memory) -> list[tuple[str, int, int]]:
        pairs = []
        if self.max_ram is not None:
            pairs.append(("RAM", memory.ram, self.max_ram))
        if self.max_gpu is not None and memory.gpu is not None:
            pairs.append(("GPU", memory.gpu, self.max_gpu))
        return pairs
