"""PyTorch state for the Checkpointer: model, optimizer, scheduler and the RNG states of python, numpy and torch,
so that a run interrupted and resumed with fixed seeds ends with the same weights as one that was not. Saved as
a raw tensor file (a JSON header, then the bytes), or torch.save for what that cannot describe, loaded with
torch.load(weights_only=True): either way a checkpoint cannot run code."""

from __future__ import annotations

import copy
import json
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
        """A JSON header and the tensors' raw bytes: the writer thread holds the GIL for microseconds (pickling
        held it for milliseconds, stalling the training thread), and loading runs no code. Anything the header
        cannot say (a numpy array in `extra`...) falls back to torch.save."""
        torch = require("torch", "torch")
        try:
            write_tensors(snapshot, directory / RAW, torch)
        except TypeError:
            torch.save(snapshot, directory / "state.pt")

    def save(self, directory: Path) -> None:
        self.write(self.snapshot(), directory)

    def load(self, directory: Path) -> None:
        torch = require("torch", "torch")
        raw = directory / RAW
        blob = read_tensors(raw, torch) if raw.exists() else torch.load(directory / "state.pt", weights_only=True)
        for name in ("model", "optimizer", "scheduler"):
            part = getattr(self, name)
            if part is not None and name in blob:
                part.load_state_dict(blob[name])
        self.extra.clear()
        self.extra.update(blob.get("extra", {}))
        if self.rng and "rng" in blob:
            set_rng_state(blob["rng"])


RAW = "state.tensors"


def write_tensors(blob: Any, path: Path, torch: Any) -> None:
    """[8-byte header length][JSON header: the structure, tensors by index][each tensor's bytes]. Dicts keep
    their key types and order, tuples stay tuples; raises TypeError for anything else than these, tensors and
    JSON scalars."""
    tensors: list[Any] = []

    def encode(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            tensors.append(value.detach().to("cpu").contiguous())
            return {"$t": len(tensors) - 1, "dtype": str(value.dtype).removeprefix("torch."),
                    "shape": list(value.shape)}
        if isinstance(value, dict):
            return {"$d": [[encode(k), encode(v)] for k, v in value.items()]}
        if isinstance(value, tuple):
            return {"$tuple": [encode(v) for v in value]}
        if isinstance(value, list):
            return [encode(v) for v in value]
        if value is None or isinstance(value, bool | int | float | str):
            return value
        raise TypeError(f"cannot write a {type(value).__name__} as raw tensors")

    header = encode(blob)
    views = [t.reshape(-1).view(torch.uint8).numpy() for t in tensors]
    head = json.dumps({"state": header, "sizes": [v.nbytes for v in views]}).encode()
    with open(path, "wb") as f:
        f.write(len(head).to_bytes(8, "little"))
        f.write(head)
        for view in views:
            f.write(view.data)


def read_tensors(path: Path, torch: Any) -> Any:
    data = bytearray(path.read_bytes())
    size = int.from_bytes(data[:8], "little")
    head = json.loads(data[8:8 + size])
    offsets, at = [], 8 + size
    for n in head["sizes"]:
        offsets.append(at)
        at += n
    if at != len(data):
        raise ValueError(f"{path}: {len(data)} bytes, the header describes {at}")

    def decode(value: Any) -> Any:
        if isinstance(value, list):
            return [decode(v) for v in value]
        if not isinstance(value, dict):
            return value
        if "$t" in value:
            i, dtype = value["$t"], getattr(torch, value["dtype"])
            if not head["sizes"][i]:
                return torch.empty(value["shape"], dtype=dtype)
            flat = torch.frombuffer(data, dtype=torch.uint8, count=head["sizes"][i], offset=offsets[i])
            return flat.view(dtype).reshape(value["shape"]).clone()
        if "$tuple" in value:
            return tuple(decode(v) for v in value["$tuple"])
        return {decode(k): decode(v) for k, v in value["$d"]}

    return decode(head["state"])
