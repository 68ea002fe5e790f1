"""RAM and GPU memory, sampled every few seconds: warnings near the limits, and a signal to pause dispatch while
memory is above them (seed 003's monitor, without the crash at hour 11)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import psutil


@dataclass(frozen=True)
class Memory:
    ram: int  # resident bytes of this process and its children (the workers)
    gpu: int | None  # bytes in use on the GPUs, when there are any


def gpu_used() -> int | None:
    """NVML (nvidia-ml-py) when installed, else torch if it is already loaded; None without a GPU."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return sum(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(i)).used
                       for i in range(pynvml.nvmlDeviceGetCount()))
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - no NVML, no driver, no GPU
        pass
    torch = sys.modules.get("torch")
    try:
        if torch is not None and torch.cuda.is_available():
            return sum(torch.cuda.memory_reserved(i) for i in range(torch.cuda.device_count()))
    except Exception:  # noqa: BLE001
        pass
    return None


def sample() -> Memory:
    me = psutil.Process()
    ram = me.memory_info().rss
    for child in me.children(recursive=True):
        try:
            ram += child.memory_info().rss
        except psutil.Error:
            pass
    return Memory(ram, gpu_used())


class MemoryWatch:
    """check() every loop turn; it samples at most every `every` seconds. Warns once at 90% of a limit, and
    says when dispatch should pause (above a limit)."""

    def __init__(self, max_ram: int | None, max_gpu: int | None, every: float = 2.0,
                 sampler: Callable[[], Memory] = sample, clock: Callable[[], float] = time.monotonic):
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
            messages.append("memory above the limit (--max-memory / --max-gpu-memory): pausing dispatch until it "
                            "falls, after a cleanup")
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
