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


def train(steps: int, run_dir: str | None, batch: int = 64) -> float:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256),
                                torch.nn.ReLU(), torch.nn.Linear(256, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.randn(4096, 64), torch.randn(4096, 1)
    ckpt = Checkpointer(run_dir, TorchState(model, optimizer), every_steps=100) if run_dir else None
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
    bare = min(train(args.steps, None) for _ in range(3))
    with tempfile.TemporaryDirectory() as tmp:
        timed = []
        for i in range(3):
            timed.append(train(args.steps, f"{tmp}/run{i}"))
    checkpointed = min(timed)
    params = sum(p.numel() for p in torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.Linear(256, 256),
                                                         torch.nn.Linear(256, 1)).parameters())
    print(f"{args.steps} steps, model {params:,} parameters (+ Adam state), a checkpoint every 100 steps")
    saves = args.steps // 100
    print(f"bare loop {bare:.2f} s ({1000 * bare / args.steps:.2f} ms a step), checkpointed {checkpointed:.2f} s: "
          f"overhead {100 * (checkpointed - bare) / bare:.1f}% of step time, "
          f"{1000 * (checkpointed - bare) / saves:.1f} ms per checkpoint ({saves} checkpoints)")


if __name__ == "__main__":
    main()
