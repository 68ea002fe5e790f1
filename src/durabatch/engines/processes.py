"""A pool of worker processes, each fed one batch at a time over its own pipe, so that when a worker dies the
engine knows exactly which batch it was running (ProcessPoolExecutor cannot say, and fails every pending future).

Workers are spawned, never forked: the runner holds an open SQLite connection. They ignore SIGINT and SIGTERM:
stopping is the runner's decision, so a Ctrl-C in the terminal does not kill work in flight.

With devices (--gpus 0,1,2,3), worker i sees only GPU devices[i]: it starts with CUDA_VISIBLE_DEVICES set to it, so
even CUDA initialised while the worker re-imports the main script sees that GPU alone; the worker that replaces it
after a death keeps that device."""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import pickle
import signal
import time
from collections.abc import Iterator, Sequence
from multiprocessing.connection import Connection, wait

from ..errors import ConfigError, ErrorKind, ItemError
from .base import Batch, BatchResult
from .lifeline import die_with_parent
from .main_script import unguarded_call
from .user_fn import Work


def _worker_main(conn: Connection, work_bytes: bytes, item_timeout: float | None) -> None:
    _die_with_runner()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        work: Work = pickle.loads(work_bytes)
        work.prepare()
    except BaseException as exc:  # noqa: BLE001 - sent to the parent, which reports it
        conn.send(("setup_error", ItemError.from_exception(exc)))
        return
    conn.send(("ready", None))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return  # the runner is gone
        if message is None:
            work.close()
            return
        records = message
        t0 = time.perf_counter()
        try:
            outputs, errors = work.execute(records, item_timeout)  # interrupts Python code per item
        except BaseException as exc:  # noqa: BLE001
            error = ItemError.from_exception(exc)
            outputs, errors = [None] * len(records), dict.fromkeys(range(len(records)), error)
        try:
            conn.send(("done", (outputs, errors, time.perf_counter() - t0, work.take_note())))
        except Exception:  # noqa: BLE001 - an output that cannot be pickled: that item's failure alone
            outputs, errors = _picklable(outputs, errors)
            conn.send(("done", (outputs, errors, time.perf_counter() - t0, work.take_note())))


def _picklable(outputs: Sequence, errors: dict[int, ItemError]) -> tuple[list, dict[int, ItemError]]:
    """Outputs that cannot cross the pipe become their items' errors (rare: results are checked storable)."""
    outputs, errors = list(outputs), dict(errors)
    for i, output in enumerate(outputs):
        try:
            pickle.dumps(output)
        except Exception as exc:  # noqa: BLE001
            outputs[i], errors[i] = None, ItemError.from_exception(exc)
    return outputs, errors


def _die_with_runner() -> None:
    """A worker stuck in a call must not outlive a runner that was SIGKILLed (it would never read the EOF)."""
    runner = mp.parent_process()
    die_with_parent(runner.pid if runner is not None and runner.pid else os.getppid())


class _Worker:
    def __init__(self, ctx: mp.context.BaseContext, work_bytes: bytes, item_timeout: float | None,
                 device: str | None = None, runner_visible: str | None = None):
        self.device = device
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker_main, args=(child, work_bytes, item_timeout), daemon=True)
        with _started_with(device, runner_visible):
            self.process.start()
        child.close()
        self.batch: Batch | None = None
        self.started = 0.0
        self.killed_for: ItemError | None = None  # why the engine itself killed this worker

    @property
    def where(self) -> str:
        return f" (GPU {self.device})" if self.device is not None else ""

    def kill(self, reason: ItemError) -> None:
        self.killed_for = reason
        self.process.kill()


class ProcessEngine:
    """item_timeout: seconds per record of a batch before its worker is killed (ItemTimeout).
    memory_limit: bytes of resident memory a worker may use before it is killed (WorkerDied, reason memory).
    devices: one worker per device, each seeing only its own (CUDA_VISIBLE_DEVICES); overrides workers.
    runner_visible: the runner's own CUDA_VISIBLE_DEVICES (None: unset), restored after each worker starts."""

    pins_deaths = True  # each worker is a process with its own pipe: a death names its batch

    def __init__(self, workers: int, item_timeout: float | None = None, memory_limit: int | None = None,
                 devices: Sequence[str] | None = None, runner_visible: str | None = None):
        self.devices: list[str | None] = list(devices) if devices else [None] * workers
        self.runner_visible = runner_visible
        self.slots = self.workers = len(self.devices)
        self.item_timeout = item_timeout
        self.memory_limit = memory_limit
        self._pool: list[_Worker] = []
        self._checked = 0.0

    def start(self, work: Work) -> None:
        try:
            self._work_bytes = pickle.dumps(work)
        except Exception as exc:  # noqa: BLE001
            raise ConfigError(f"the processes engine needs an importable function (module-level def or class, "
                              f"or 'package.module:name'); this one cannot be pickled: {exc}") from None
        self._ctx = mp.get_context("spawn")
        self._pool = [_Worker(self._ctx, self._work_bytes, self.item_timeout, device, self.runner_visible)
                      for device in self.devices]
        for worker in self._pool:
            self._await_ready(worker)

    def _await_ready(self, worker: _Worker) -> None:
        try:
            kind, payload = worker.conn.recv()
        except EOFError:
            worker.process.join(timeout=5)
            where = unguarded_call()
            if where is not None:
                raise ConfigError(f"{where} runs the job when the script is imported, and each process worker "
                                  "re-imports the main script (spawn): put the durabatch.run call under "
                                  "`if __name__ == \"__main__\":`") from None
            raise ConfigError(f"a worker process{worker.where} died while starting (exit code "
                              f"{worker.process.exitcode}); what it printed above says why") from None
        if kind == "setup_error":
            raise ConfigError(f"the function's setup failed in a worker process{worker.where}: {payload.error_type}: "
                              f"{payload.message}\n{payload.traceback}")

    def submit(self, batch: Batch) -> None:
        worker = next(w for w in self._pool if w.batch is None)
        worker.batch = batch
        worker.started = time.monotonic()
        worker.conn.send(batch.records)

    def poll(self, timeout: float) -> list[BatchResult]:
        busy = [w for w in self._pool if w.batch is not None]
        if not busy:
            return []
        handles = [w.conn for w in busy] + [w.process.sentinel for w in busy]
        if self.item_timeout or self.memory_limit:
            timeout = min(timeout, 0.05)
        ready = set(wait(handles, timeout))
        self._watch(busy)
        results = []
        for worker in busy:
            batch = worker.batch
            assert batch is not None
            if worker.conn in ready:
                try:
                    _, (outputs, errors, seconds, note) = worker.conn.recv()
                except (EOFError, OSError):
                    pass  # died while answering: handled as a death below
                else:
                    worker.batch = None
                    results.append(BatchResult(batch, outputs, errors, seconds, note))
                    continue
            if worker.process.sentinel in ready or not worker.process.is_alive():
                results.append(self._replace_dead(worker, batch))
        return results

    def _watch(self, busy: list[_Worker]) -> None:
        """Kill workers past their batch's time or over the memory limit; poll() then reports them as dead."""
        now = time.monotonic()
        for worker in busy:
            batch = worker.batch
            if batch is None or worker.killed_for is not None:
                continue
            # The worker interrupts slow Python code itself; killing it is for code stuck where signals can't reach.
            limit = self.item_timeout * len(batch.records) + 5.0 if self.item_timeout else None
            if limit is not None and now - worker.started > limit:
                worker.kill(ItemError(ErrorKind.ITEM_TIMEOUT, f"no result after {now - worker.started:.1f}s "
                                      f"(--item-timeout {self.item_timeout:g}s per item); the worker was killed",
                                      "", (ErrorKind.ITEM_TIMEOUT, "TimeoutError")))
        if self.memory_limit and now - self._checked >= 0.05:
            self._checked = now
            for worker in busy:
                rss = _rss(worker.process.pid)
                if worker.killed_for is None and rss is not None and rss > self.memory_limit:
                    worker.kill(ItemError(ErrorKind.WORKER_DIED, f"out of memory: the worker{worker.where} used "
                                          f"{rss / 2**20:,.0f} MB, above the {self.memory_limit / 2**20:,.0f} MB "
                                          "limit (--max-worker-memory); killed", ""))

    def _replace_dead(self, worker: _Worker, batch: Batch) -> BatchResult:
        worker.process.join(timeout=1)
        code = worker.process.exitcode
        how = f"was killed by signal {-code}" if code is not None and code < 0 else f"exited with code {code}"
        error = worker.killed_for or ItemError(
            ErrorKind.WORKER_DIED, f"the worker process{worker.where} {how} while running this item's batch", "")
        index = self._pool.index(worker)
        worker.conn.close()
        self._pool[index] = fresh = _Worker(self._ctx, self._work_bytes, self.item_timeout, worker.device,
                                            self.runner_visible)
        self._await_ready(fresh)
        return BatchResult(batch, [None] * len(batch.records), dict.fromkeys(range(len(batch.records)), error), 0.0)

    def in_flight(self) -> int:
        return sum(w.batch is not None for w in self._pool)

    def stop_starting(self) -> None:
        pass  # a batch handed over is running or about to: nothing to hold back

    def close(self, cancel: bool = False) -> None:
        for worker in self._pool:
            if cancel:
                worker.process.kill()
            else:
                try:
                    worker.conn.send(None)
                except OSError:
                    pass
        for worker in self._pool:
            worker.process.join(timeout=None if not cancel else 5)
            if worker.process.is_alive():
                worker.process.kill()
            worker.conn.close()
        self._pool = []


@contextlib.contextmanager
def _started_with(device: str | None, runner_visible: str | None) -> Iterator[None]:
    """A child spawned inside starts with CUDA_VISIBLE_DEVICES=device: the C environment, which a spawned
    process copies when it starts (os.putenv, which leaves os.environ alone); the runner's own value
    (runner_visible, read at the edge) is put back at once."""
    if device is None:
        yield
        return
    os.putenv("CUDA_VISIBLE_DEVICES", device)
    try:
        yield
    finally:
        if runner_visible is None:
            os.unsetenv("CUDA_VISIBLE_DEVICES")
        else:
            os.putenv("CUDA_VISIBLE_DEVICES", runner_visible)


def _rss(pid: int) -> int | None:
    """Resident memory of a process, from /proc (cheap enough to sample every 50 ms)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return None
