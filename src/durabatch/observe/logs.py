"""The run's log file (run_dir/logs/run.log): one line per start, commit batch, stop and end, with timestamps,
so that a long job's history can be read after the fact."""

from __future__ import annotations

import time
from pathlib import Path

import psutil

from ..core.events import Observer, Stats
from .rate import WINDOW_LABEL, RunRates
from .resources import sample

RESOURCES_EVERY = 10.0  # seconds between `resources:` lines (the dashboard's and report's RAM/CPU charts)


class RunLog(Observer):
    def __init__(self, path: Path, every: float = 60.0):
        self.path = path
        self.every = every
        self._last = 0.0
        self._last_resources = 0.0
        self._file = open(path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 - closed in on_end
        self._rates = RunRates()  # the bar's and status's rate (observe/rate.py)
        self._rate: float | None = None

    def _write(self, text: str) -> None:
        if self._file.closed:  # a stop announced from a thread (policies/stopping.py) as the run ended
            return
        self._file.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {text}\n")

    def on_start(self, stats: Stats) -> None:
        self._write(f"start: source={stats.source} total={stats.total} already_done={stats.already_done} "
                    f"key={stats.key_mode}")

    def on_progress(self, stats: Stats) -> None:
        self._rate = self._rates.update(stats).rate
        self._resources()

    def _resources(self) -> None:
        """RAM of the runner and its workers, GPU memory, CPU seconds of the runner so far (a few ms each)."""
        now = time.monotonic()
        if now - self._last_resources < RESOURCES_EVERY:
            return
        self._last_resources = now
        try:
            memory, cpu = sample(), psutil.Process().cpu_times()
        except psutil.Error:
            return
        ram, gpu = memory.ram, memory.gpu
        gpu_mb = "-" if gpu is None else f"{gpu / 1e6:.1f}"
        self._write(f"resources: at={time.time():.3f} ram_mb={ram / 1e6:.1f} gpu_mb={gpu_mb} "
                    f"cpu_s={cpu.user + cpu.system:.2f}")

    def on_commit(self, stats: Stats, rows: int, failures: int, shard: str | None) -> None:
        self._resources()
        now = time.monotonic()
        if now - self._last >= self.every:
            self._last = now
            self._write(f"progress: done={stats.already_done + stats.done} failed={stats.failed} "
                        f"committed={stats.committed} rate={'?' if self._rate is None else f'{self._rate:.1f}'}/s "
                        f"({WINDOW_LABEL})")

    def on_message(self, message: str) -> None:
        self._write(message)

    def on_end(self, stats: Stats, exit_code: int, reason: str | None) -> None:
        self._write(f"end: exit={exit_code} reason={reason or 'finished'} done={stats.done} failed={stats.failed} "
                    f"elapsed={stats.elapsed:.1f}s")
        self._file.close()
