"""TorchState's raw tensor files: whatever a state dict holds comes back with the same types, values and bits,
and what the format cannot hold falls back to torch.save."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from durabatch.loops.torch import RAW, TorchState, read_tensors, write_tensors  # noqa: E402


def same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and \
            torch.equal(a.view(-1).view(torch.uint8) if a.numel() else a, b.view(-1).view(torch.uint8) if b.numel()
                        else b)
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    if isinstance(a, dict):
        return type(b) is dict and list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def test_odd_structures_round_trip_bit_for_bit(tmp_path):
    blob = {
        "state": {0: {"step": torch.tensor(7.0), "exp_avg": torch.randn(3, 4)}, 5: {"m": torch.arange(6)}},
        "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "params": [0, 5], "name": None, "amsgrad": False}],
        "odd": [torch.randn(2, 2).to(torch.bfloat16), torch.zeros(0, 3), torch.tensor([True, False]),
                torch.tensor(float("nan")), float("nan"), float("inf"), "text", (1, (2, 3))],
        "rng": torch.get_rng_state(),
    }
    write_tensors(blob, tmp_path / "x", torch)
    assert same(blob, read_tensors(tmp_path / "x", torch))


def test_a_truncated_file_is_refused(tmp_path):
    write_tensors({"w": torch.randn(100)}, tmp_path / "x", torch)
    data = (tmp_path / "x").read_bytes()
    (tmp_path / "x").write_bytes(data[:-10])
    with pytest.raises(ValueError, match="bytes"):
        read_tensors(tmp_path / "x", torch)


def test_model_and_optimizer_round_trip_and_unknown_types_fall_back_to_torch_save(tmp_path):
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(8, 4)).sum().backward()
    optimizer.step()
    state = TorchState(model, optimizer)
    (tmp_path / "a").mkdir()
    state.write(state.snapshot(), tmp_path / "a")
    assert (tmp_path / "a" / RAW).exists()
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.weight.zero_()
    state.load(tmp_path / "a")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in expected.items())

    odd = TorchState(model, optimizer, extra={"phase": complex(1, 2)})  # not JSON: torch.save it is
    (tmp_path / "b").mkdir()
    odd.write(odd.snapshot(), tmp_path / "b")
    assert (tmp_path / "b" / "state.pt").exists() and not (tmp_path / "b" / RAW).exists()
