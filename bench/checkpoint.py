"""Checkpoint overhead for a small torch model at every_steps=100: the share of step time spent saving.

    python bench/checkpoint.py [--steps 2000]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from durabatch.integrations.torch import TorchState
from durabatch.loop import Checkpointer


def train(steps: int, run_dir: str | None, fsync: bool = True) -> float:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256),
                                torch.nn.ReLU(), torch.nn.Linear(256, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.randn(4096, 64), torch.randn(4096, 1)
    ckpt = Checkpointer(run_dir, TorchState(model, optimizer), every_steps=100, fsync=fsync) if run_dir else None
    steps_iter = ckpt.range(steps) if ckpt else range(steps)
    t0 = time.perf_counter()
    for step in steps_iter:
        batch = slice((step * 64) % 4096, (step * 64) % 4096 + 64)
        loss = torch.nn.functional.mse_loss(model(x[batch]), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    train(200, None)  # warm up
    params = sum(p.numel() for p in torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.Linear(256, 256),
                                                         torch.nn.Linear(256, 1)).parameters())
    print(f"{args.steps} steps, model {params:,} parameters (+ Adam state), a checkpoint every 100 steps")
    saves = args.steps // 100
    with tempfile.TemporaryDirectory() as tmp:
        for fsync in (True, False):
            # Interleave bare and checkpointed runs: this machine's speed drifts more than the effect measured.
            bare, checkpointed = [], []
            for i in range(5):
                bare.append(train(args.steps, None))
                checkpointed.append(train(args.steps, f"{tmp}/run-{fsync}-{i}", fsync))
            b, c = sorted(bare)[2], sorted(checkpointed)[2]
            print(f"fsync={fsync}: bare loop {b:.2f} s ({1000 * b / args.steps:.2f} ms a step), checkpointed "
                  f"{c:.2f} s: overhead {100 * (c - b) / b:.1f}% of step time, {1000 * (c - b) / saves:.1f} ms per "
                  f"checkpoint (medians of 5)")


if __name__ == "__main__":
    main()
