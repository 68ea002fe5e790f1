"""Moved: see `durabatch.loops.torch`."""

from ..loops.torch import RAW, TorchState, read_tensors, write_tensors

__all__ = ["RAW", "TorchState", "read_tensors", "write_tensors"]
