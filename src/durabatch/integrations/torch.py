"""PyTorch state for the Checkpointer: model, optimizer, scheduler and the RNG states of python, numpy and torch,
so that a run interrupted and resumed with fixed seeds ends with the same weights as one that was not. Loading
uses torch.load(weights_only=True): a checkpoint cannot run code."""

from __future__ import annotations

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


def _plain(value: Any) -> Any:
    return [_plain(v) for v in value] if isinstance(value, tuple | list) else value


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


class TorchState:
    def __init__(self, model: Any = None, optimizer: Any = None, scheduler: Any = None, rng: bool = True,
                 extra: dict | None = None):
        self.model, self.optimizer, self.scheduler, self.rng = model, optimizer, scheduler, rng
        self.extra = extra if extra is not None else {}  # plain values (counters, best score...) saved too

    def snapshot(self) -> bytes:
        """Everything, serialized between two steps (a consistent state, no copy needed); a background thread
        then only writes and fsyncs the bytes, which releases the GIL, while training goes on."""
        import io

        torch = require("torch", "torch")
        blob: dict[str, Any] = {"extra": self.extra}
        for name in ("model", "optimizer", "scheduler"):
            part = getattr(self, name)
            if part is not None:
                blob[name] = part.state_dict()
        if self.rng:
            blob["rng"] = rng_state()
        buffer = io.BytesIO()
        torch.save(blob, buffer)
        return buffer.getvalue()

    def write(self, snapshot: bytes, directory: Path) -> None:
        (directory / "state.pt").write_bytes(snapshot)

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
