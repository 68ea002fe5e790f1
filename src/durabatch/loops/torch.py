"""PyTorch state for the Checkpointer: model, optimizer, scheduler and the RNG states of python, numpy and torch,
so that a run interrupted and resumed with fixed seeds ends with the same weights as one that was not. Saved as
a raw tensor file (a JSON header, then the bytes), or torch.save for what that cannot describe, loaded with
torch.load(weights_only=True): either way a checkpoint cannot run code."""

from __future__ import annotations

import array
import copy
import ctypes
import json
import random
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import require
from .writer_process import raw_file_head

_SCALARS = frozenset((int, float, str, bool))


def rng_state() -> dict:
    torch = require("torch", "torch")
    version, internal, gauss = random.getstate()
    # python's 625 ints as one tensor: as JSON they cost the training thread ~0.2 ms a checkpoint
    python = [version, torch.frombuffer(array.array("q", internal), dtype=torch.int64), gauss]
    state: dict[str, Any] = {"python": python, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        name, keys, pos, has_gauss, cached = numpy.random.get_state()
        state["numpy"] = [name, torch.from_numpy(keys.astype("int64")), pos, has_gauss, cached]
    return state


def set_rng_state(state: dict) -> None:
    torch = require("torch", "torch")
    version, internal, gauss = state["python"]  # older checkpoints hold the ints as a list
    random.setstate((version, tuple(internal.tolist() if isinstance(internal, torch.Tensor) else internal), gauss))
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

    def snapshot_into(self, buffer_for: Callable[[int], Any]) -> tuple[str, Any, list[int]]:
        """Everything, between two steps, straight into a shared buffer: each tensor's bytes one after the other
        (one copy, from wherever it is; no intermediate snapshot). Returns the file name, the raw tensor file's
        header structure and the tensors' sizes, from which the checkpoint writer process writes the file;
        TypeError if the raw header cannot describe the state."""
        torch = require("torch", "torch")
        blob: dict[str, Any] = {"extra": self.extra}  # encoded now, so no deep copy is needed
        for name in ("model", "optimizer", "scheduler"):
            part = getattr(self, name)
            if part is not None:
                blob[name] = part.state_dict()
        if self.rng:
            blob["rng"] = rng_state()
        header, tensors = _encode(blob, torch)
        ready = [_in_memory(t, torch) for t in tensors]
        sizes = [t.nbytes for t in ready]
        _copy_into(buffer_for(sum(sizes)), ready, sizes)
        return RAW, header, sizes

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


def _encode(blob: Any, torch: Any) -> tuple[Any, list[Any]]:
    """The JSON structure of a blob, its tensors by index. Dicts keep their key types and order, tuples stay
    tuples; raises TypeError for anything else than these, tensors and JSON scalars."""
    tensors: list[Any] = []

    def encode(value: Any) -> Any:
        if value is None or type(value) in _SCALARS:  # first, and by type(): cheaper than isinstance(Tensor)
            return value
        if isinstance(value, torch.Tensor):
            if value.layout != torch.strided or value.is_quantized:
                raise TypeError(f"cannot write a {value.layout} or quantized tensor as raw bytes")
            tensors.append(value)
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

    return encode(blob), tensors


def _in_memory(tensor: Any, torch: Any) -> Any:
    """The tensor itself if its bytes lie in CPU memory, in order (the usual case), else such a copy of it."""
    if type(tensor) not in (torch.Tensor, torch.nn.Parameter):  # a wrapper (DTensor...) may have no storage
        raise TypeError(f"cannot copy a {type(tensor).__name__} as raw bytes")
    if tensor.is_cpu and tensor.is_contiguous() and not tensor.is_conj() and not tensor.is_neg():
        return tensor
    return tensor.detach().cpu().resolve_conj().resolve_neg().contiguous()


def _copy_into(buffer: Any, tensors: list[Any], sizes: list[int]) -> None:
    """The tensors' bytes one after the other into a writable buffer, a memmove each: torch ops per tensor
    (uint8 views, then one cat) cost 1.6x as much for a small model, in dispatch overhead."""
    if sum(sizes) > len(buffer):
        raise ValueError(f"a {len(buffer)}-byte buffer for {sum(sizes)} bytes")
    anchor = ctypes.c_char.from_buffer(buffer)  # exports the buffer until deleted: it cannot be unmapped
    try:
        at = ctypes.addressof(anchor)
        for tensor, n in zip(tensors, sizes, strict=True):
            if n:
                ctypes.memmove(at, tensor.data_ptr(), n)
                at += n
    finally:
        del anchor


def write_tensors(blob: Any, path: Path, torch: Any) -> None:
    """[8-byte header length][JSON header: the structure, tensors by index][each tensor's bytes]; TypeError for
    what the header cannot describe (see _encode)."""
    header, tensors = _encode(blob, torch)
    views = [t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy() for t in tensors]
    with open(path, "wb") as f:
        f.write(raw_file_head(header, [v.nbytes for v in views]))
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
