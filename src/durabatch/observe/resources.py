"""RAM and GPU memory of this process and its workers, as measured here (policies/memory.py decides what to do)."""

from __future__ import annotations

import sys

import psutil

from ..policies.memory import Memory


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
