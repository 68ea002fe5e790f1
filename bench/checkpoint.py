"""Checkpoint overhead for a small torch model at every_steps=100: the share of step time spent saving.

    python bench/checkpoint.py [--pairs 7]

Each step is timed. A checkpoint's cost shows as extra time in the step that saves (the snapshot) and in the few
after it (the background writer competing for the GIL and the 2 cores), so the overhead is the run's time above
its median step, minus the same for a bare run next to it: slow drift of this machine's speed, larger than the
effect, cancels out. Two batch sizes of the same 82,689-parameter MLP (+ Adam state, a ~1 MB checkpoint)."""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from durabatch.integrations.torch import TorchState
from durabatch.loop import Checkpointer


def train(steps: int, batch: int, run_dir: str | None, fsync: bool = True) -> list[float]:
    """Seconds of each step."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256),
                                torch.nn.ReLU(), torch.nn.Linear(256, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.randn(4096, 64), torch.randn(4096, 1)
    ckpt = Checkpointer(run_dir, TorchState(model, optimizer), every_steps=100, fsync=fsync) if run_dir else None
    times = []
    last = time.perf_counter()
    for step in ckpt.range(steps) if ckpt else range(steps):
        rows = slice((step * batch) % 4096, (step * batch) % 4096 + batch)
        loss = torch.nn.functional.mse_loss(model(x[rows]), y[rows])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        now = time.perf_counter()
        times.append(now - last)
        last = now
    return times


def excess(times: list[float]) -> float:
    """Time above the median step, as a share of the run at the median pace."""
    median = statistics.median(times)
    return (sum(times) - median * len(times)) / (median * len(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    train(300, 64, None)  # warm up
    print("| batch | step | fsync | overhead, share of step time (median of pairs) | per checkpoint | quartiles |")
    print("| ---: | ---: | --- | ---: | ---: | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        for batch, steps in ((64, 3000), (256, 1000)):
            for fsync in (True, False):
                overheads, steps_s = [], []
                for i in range(args.pairs):
                    bare = train(steps, batch, None)
                    saved = train(steps, batch, f"{tmp}/run-{batch}-{fsync}-{i}", fsync)
                    overheads.append(excess(saved) - excess(bare))
                    steps_s.append(statistics.median(bare))
                step, overhead = statistics.median(steps_s), statistics.median(overheads)
                q = sorted(overheads)
                print(f"| {batch} | {1000 * step:.2f} ms | {fsync} | **{100 * overhead:.1f}%** | "
                      f"{1000 * overhead * step * 100:.1f} ms | {100 * q[len(q) // 4]:.1f}% to "
                      f"{100 * q[3 * len(q) // 4]:.1f}% |", flush=True)


if __name__ == "__main__":
    main()
