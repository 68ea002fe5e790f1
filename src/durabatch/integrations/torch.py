"""PyTorch state for the Checkpointer: model, optimizer, scheduler and the RNG states of python, numpy and torch,
so that a run interrupted and resumed with fixed seeds ends with the same weights as one that was not. Loading
uses torch.load(weights_only=True): a checkpoint cannot run code."""

from __future__ import annotations

import copy
import random
import sys
from pathlib import Path
from typing import Any

from . import require


def rng_state() -> dict:
    torch = require("torch", "torch")
    state: dict[str, Any] = {"python": _plain(random.getstate()), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        name, keys, pos, has_gauss, cached = numpy.random.get_state()
        state["numpy"] = [name, torch.from_numpy(keys.astype("int64")), pos, has_gauss, cached]
    return state


def set_rng_state(state: dict) -> None:
    torch = require("torch", "torch")
    random.setstate(_tuples(state["python"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    numpy = sys.modules.get("numpy")
    if numpy is not None and "numpy" in state:
        name, keys, pos, has_gauss, cached = state["numpy"]
        numpy.random.set_state((name, keys.numpy().astype("uint32"), pos, has_gauss, cached))


def _copied(value: Any, torch: Any) -> Any:
    """A state dict with every tensor copied to CPU memory (never a second copy on the GPU)."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: _copied(v, torch) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_copied(v, torch) for v in value)
    return copy.deepcopy(value)


def _plain(value: Any) -> Any:
    return [_plain(v) for v in value] if isinstance(value, tuple | list) else value


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


class TorchState:
    def __init__(self, model: Any = None, optimizer: Any = None, scheduler: Any = None, rng: bool = True,
                 extra: dict | None = None):
        self.model, self.optimizer, self.scheduler, self.rng = model, optimizer, scheduler, rng
        self.extra = extra if extra is not None else {}  # plain values (counters, best score...) saved too

    def snapshot(self) -> dict[str, Any]:
        """Everything, copied between two steps (a consistent state): tensors are copied to CPU memory, which is
        a memcpy, so the training thread pays well under a millisecond for a small model; a background thread
        then serializes, writes and fsyncs while training goes on. (Serializing here cost ~3.5 ms a checkpoint,
        4% of a 1 ms step at every_steps=100.)"""
        torch = require("torch", "torch")
        blob: dict[str, Any] = {"extra": copy.deepcopy(self.extra)}
        for name in ("model", "optimizer", "scheduler"):
            part = getattr(self, name)
            if part is not None:
                blob[name] = _copied(part.state_dict(), torch)
        if self.rng:
            blob["rng"] = rng_state()
        return blob

    def write(self, snapshot: dict[str, Any], directory: Path) -> None:
        torch = require("torch", "torch")
        torch.save(snapshot, directory / "state.pt")

    def save(self, directory: Path) -> None:
        self.write(self.snapshot(), directory)

    def load(self, directory: Path) -> None:
        torch = require("torch", "torch")
        blob = torch.load(directory / "state.pt", weights_only=True)
        for name in ("model", "optimizer", "scheduler"):
            part = getattr(self, name)
            if part is not None and name in blob:
                part.load_state_dict(blob[name])
        self.extra.clear()
        self.extra.update(blob.get("extra", {}))
        if self.rng and "rng" in blob:
            set_rng_state(blob["rng"])
