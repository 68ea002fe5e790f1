"""Checkpoint overhead for a small torch model at every_steps=100: the share of step time spent saving.

    python bench/checkpoint.py [--pairs 7] [--thread] [--max-others 0.1]

Each step is timed. A checkpoint's cost shows as extra time in the step that saves (the snapshot) and in the few
after it (the writer competing for the 2 cores, and a writer thread for the GIL), so the overhead is the run's
time above its median step, minus the same for a bare run next to it: slow drift of this machine's speed, larger
than the effect, cancels out. Two batch sizes of the same 82,689-parameter MLP (+ Adam state, a ~1 MB checkpoint).

The same, counted only in the 20 steps from each save (where a checkpoint's cost shows), is less noisy: the
second overhead column, to read next to the first (it misses any cost later than 20 steps after a save).

Other processes on the machine swamp the effect while they run: the CPU they used during each pair is measured
(/proc/stat minus this process and its children) and a pair during which they used more than --max-others of a
core is run again, as is one whose bare steps were over 10% slower than the fastest bare run so far (the host
slowed this VM down, which /proc/stat does not show): up to 3 times; the columns say how busy the machine was.
--thread measures the writer thread (what every periodic save used before session 3) instead of the process."""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch

from durabatch.loops.checkpointer import Checkpointer
from durabatch.loops.torch import TorchState


def train(steps: int, batch: int, run_dir: str | None, fsync: bool = True, process: bool = True) -> list[float]:
    """Seconds of each step."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256),
                                torch.nn.ReLU(), torch.nn.Linear(256, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.randn(4096, 64), torch.randn(4096, 1)
    ckpt = Checkpointer(run_dir, TorchState(model, optimizer), every_steps=100, fsync=fsync,
                        writer_process=process) if run_dir else None
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


def near_saves(times: list[float], every: int = 100, width: int = 20) -> float:
    """Time above the median step in the `width` steps from each save, as a share of the run at the median pace."""
    median = statistics.median(times)
    near = sum(t - median for i, t in enumerate(times) if i >= every and i % every < width)
    return near / (median * len(times))


def cpu_seconds() -> tuple[float, float, float]:
    """(wall, busy CPU seconds of the whole machine, CPU seconds of this process and its reaped children)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:9]]
        busy = (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait
    except OSError:
        busy = float("nan")
    own = os.times()
    return time.perf_counter(), busy, own.user + own.system + own.children_user + own.children_system


def pair(steps: int, batch: int, run_dir: str, fsync: bool, process: bool) -> tuple[float, float, float, float]:
    """(overhead, overhead near saves, median bare step, cores used by other processes meanwhile)."""
    wall0, busy0, own0 = cpu_seconds()
    bare = train(steps, batch, None)
    saved = train(steps, batch, run_dir, fsync, process)
    wall1, busy1, own1 = cpu_seconds()
    others = max(0.0, (busy1 - busy0) - (own1 - own0)) / (wall1 - wall0)
    return excess(saved) - excess(bare), near_saves(saved) - near_saves(bare), statistics.median(bare), others


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=7)
    parser.add_argument("--thread", action="store_true", help="write from a thread, not the writer process")
    parser.add_argument("--max-others", type=float, default=0.1,
                        help="re-run a pair if other processes used more than this many cores meanwhile")
    args = parser.parse_args()
    torch.set_num_threads(1)
    train(300, 64, None)  # warm up
    print(f"writer: {'thread' if args.thread else 'process'}")
    print("| batch | step | fsync | overhead, share of step time (median of pairs) | per checkpoint | quartiles | "
          "counted near saves only | other processes (cores) | pairs re-run |")
    print("| ---: | ---: | --- | ---: | ---: | --- | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as tmp:
        for batch, steps in ((64, 3000), (256, 1000)):
            for fsync in (True, False):
                overheads, near, steps_s, busy, reruns, fastest = [], [], [], [], 0, float("inf")
                for i in range(args.pairs):
                    for attempt in range(4):
                        result = pair(steps, batch, f"{tmp}/run-{batch}-{fsync}-{i}-{attempt}", fsync,
                                      not args.thread)
                        fastest = min(fastest, result[2])
                        if result[3] <= args.max_others and result[2] <= 1.1 * fastest or attempt == 3:
                            break
                        reruns += 1
                    overheads.append(result[0])
                    near.append(result[1])
                    steps_s.append(result[2])
                    busy.append(result[3])
                step, overhead = statistics.median(steps_s), statistics.median(overheads)
                q = sorted(overheads)
                print(f"| {batch} | {1000 * step:.2f} ms | {fsync} | **{100 * overhead:.1f}%** | "
                      f"{1000 * overhead * step * 100:.1f} ms | {100 * q[len(q) // 4]:.1f}% to "
                      f"{100 * q[3 * len(q) // 4]:.1f}% | {100 * statistics.median(near):.1f}% | "
                      f"{statistics.median(busy):.2f} | {reruns} |", flush=True)


if __name__ == "__main__":
    main()
