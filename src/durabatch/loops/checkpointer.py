"""Checkpoints for stateful loops (training): periodic atomic checkpoints, resume from the latest good one,
an emergency save on SIGTERM / SIGUSR1 / Ctrl-C or a deadline, and a small metrics record per checkpoint.

    ckpt = Checkpointer("runs/train", state=TorchState(model, optimizer), every_steps=100, deadline="11h30m")
    for step in ckpt.range(10_000):       # starts after the latest checkpoint
        loss = train_step()
        ckpt.log(loss=loss)               # a loss curve by step (cheap: averaged, throttled, buffered)
        ckpt.record(loss=loss)            # metrics stored with the next checkpoint (keep_best reads them)
    # a stop request saves at the next step boundary and exits 75; running the same script again resumes

A progress line (step, steps/s, ETA, time to the deadline, the last checkpoint, the latest logged metrics) goes to
stderr: rewritten in place on a terminal, a plain line every progress_every seconds elsewhere.

A checkpoint is a directory written under a temporary name, fsynced and renamed: a half-written one is never
picked up. Periodic saves go on in the background: a TorchState is copied into shared memory and written by a
separate process (writer_process.py), any other state with a snapshot() by a thread."""

from __future__ import annotations

import os
import pickle
import queue
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from .. import environment
from ..policies.stopping import StopFlag, wall_deadline
from . import writer_process as writer
from .metrics import StepLog
from .progress import ProgressLine
from .writer_process import checkpoint_dir, complete_checkpoints, prune, publish, read_meta, step_dir, tmp_dir

EXIT_STOPPED = 75


class State(Protocol):
    def save(self, directory: Path) -> None: ...

    def load(self, directory: Path) -> None: ...


class PickleState:
    """Any picklable state, through a getter and a setter."""

    def __init__(self, get: Callable[[], Any], set: Callable[[Any], None]):  # noqa: A002 - reads naturally
        self.get, self.set = get, set

    def snapshot(self) -> bytes:
        return pickle.dumps(self.get(), protocol=pickle.HIGHEST_PROTOCOL)

    def write(self, snapshot: bytes, directory: Path) -> None:
        (directory / "state.pkl").write_bytes(snapshot)

    def save(self, directory: Path) -> None:
        self.write(self.snapshot(), directory)

    def load(self, directory: Path) -> None:
        with open(directory / "state.pkl", "rb") as f:
            self.set(pickle.load(f))


class CallableState:
    """The user's own save(directory) / load(directory)."""

    def __init__(self, save: Callable[[Path], None], load: Callable[[Path], None]):
        self._save, self._load = save, load

    def save(self, directory: Path) -> None:
        self._save(directory)

    def load(self, directory: Path) -> None:
        self._load(directory)


class Checkpointer:
    def __init__(self, run_dir: str | os.PathLike, state: State, every_steps: int | None = None,
                 every_seconds: float | None = None, keep_last: int = 3, keep_best: int = 0,
                 metric: str | None = None, mode: str = "min", deadline: str | None = None,
                 deadline_at: str | None = None, exit_on_stop: bool = True, fsync: bool = True,
                 clock: Callable[[], float] = time.time, writer_process: bool = True, progress: str = "auto",
                 progress_every: float = 10.0):
        """fsync=False keeps checkpoints safe against the process dying (kill -9, OOM, a quota) but not against
        the machine losing power; it removes the flush, which is most of a checkpoint's cost on slow disks.
        writer_process=False writes a TorchState's periodic checkpoints from a thread, like other states',
        instead of from a separate writer process (the default, on Linux), which does not compete with training
        for the GIL. progress: "auto" (a live line on a terminal, else a plain line every progress_every
        seconds), "bar", "plain" or "off"."""
        if keep_best and not metric:
            raise ValueError("keep_best needs metric= (the name of a recorded metric)")
        self.dir = checkpoint_dir(Path(run_dir))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.state = state
        self.every_steps, self.every_seconds = every_steps, every_seconds
        self.keep_last, self.keep_best, self.metric, self.mode = keep_last, keep_best, metric, mode
        self.exit_on_stop = exit_on_stop
        self.fsync = fsync
        self.clock = clock
        self.started = clock()
        self.deadline = wall_deadline(deadline, deadline_at, self.started, environment.slurm_end_time())
        self.stop = StopFlag()
        self.stopped: str | None = None
        self.step = 0
        self._metrics: dict[str, float] = {}
        self._last_save = clock()
        self.saved_step: int | None = None
        self._step_seconds = 0.0
        self._save_seconds = 0.0
        self.saves = 0
        self._writer: threading.Thread | None = None
        self._jobs: queue.Queue = queue.Queue()
        self._write_error: BaseException | None = None
        self.writer_process = writer_process and writer.AVAILABLE
        self._process: writer.WriterProcess | None = None
        self.steps = StepLog(self.dir, clock)
        self.progress = ProgressLine(progress, progress_every)
        self.total: int | None = None  # what range() runs to (or sb3's total timesteps): the ETA
        self._log_step: int | None = None  # inside range(): the number of the step running (1-based)
        self._saved_at: float | None = None

    # -- checkpoints -----------------------------------------------------------------------------------------
    def checkpoints(self) -> list[Path]:
        """Complete checkpoints, newest first."""
        return complete_checkpoints(self.dir)

    def save(self, step: int | None = None, reason: str = "periodic", background: bool = False) -> Path:
        """Write a checkpoint. background=True (periodic saves of states that can snapshot) copies the state in
        memory now and writes it from a separate process or a thread, so the loop goes on at once; a stop or the
        end waits for it."""
        step = self.step if step is None else step
        self.wait()
        t0 = time.perf_counter()
        final = step_dir(self.dir, step)
        meta = {"step": step, "time": self.clock(), "elapsed": self.clock() - self.started, "reason": reason,
                "metrics": dict(self._metrics), "total": self.total}
        snapshot = getattr(self.state, "snapshot", None)
        if background and self._write_in_process(step, final, meta):
            pass  # copied into the writer process's buffer; it writes the checkpoint
        elif background and snapshot is not None:
            if self._writer is None:  # one long-lived writer: starting a thread per save stalled the loop ~1 ms
                self._writer = threading.Thread(target=self._write_loop, name="durabatch-checkpoint-writer",
                                                daemon=True)
                self._writer.start()
            self._jobs.put((step, final, meta, snapshot()))
        else:
            self._write(step, final, meta, None)
        self._last_save = self._saved_at = self.clock()
        self.saved_step = step
        self.steps.flush()  # the metrics logged so far reach the disk with each checkpoint
        self._save_seconds = time.perf_counter() - t0
        self.saves += 1
        return final

    def _write_in_process(self, step: int, final: Path, meta: dict) -> bool:
        """Copy the state into the writer process's shared buffer and hand it the job; False when the state
        cannot (no snapshot_into, or a value the raw format cannot hold) or there is no writer process."""
        snapshot_into = getattr(self.state, "snapshot_into", None)
        if snapshot_into is None or not self.writer_process:
            return False
        if self._process is not None and (self._process.closed or self._process.owner != os.getpid()):
            self._process = None
        try:
            name, header, sizes = snapshot_into(self._buffer_for)
        except TypeError:
            return False  # the raw format cannot hold it: the thread writes it (torch.save)
        except OSError as exc:  # no process or no shared memory here (a sandbox...): threads it is, from now on
            print(f"[durabatch] checkpoint writer process unavailable ({exc}); writing from a thread",
                  file=sys.stderr)
            self._stop_writer_process()
            self.writer_process = False
            return False
        assert self._process is not None
        # absolute: the writer process keeps the directory it started in, whatever this one does after
        self._process.send({"dir": str(self.dir.absolute()), "tmp": str(tmp_dir(self.dir, step).absolute()),
                            "final": str(final.absolute()), "meta": meta,
                            "file": name, "header": header, "sizes": sizes, "fsync": self.fsync,
                            "keep_last": self.keep_last, "keep_best": self.keep_best, "metric": self.metric,
                            "mode": self.mode})
        return True

    def _buffer_for(self, nbytes: int) -> Any:
        if self._process is None:
            self._process = writer.WriterProcess()
        return self._process.buffer(nbytes)

    def _start_writer_process(self) -> None:
        """With the loop, so that the first checkpoint does not wait for it (its start costs ~30 ms of CPU)."""
        if self.writer_process and self._process is None and hasattr(self.state, "snapshot_into"):
            try:
                self._process = writer.WriterProcess()
            except OSError:
                pass  # said, and the thread used instead, at the first checkpoint

    def _stop_writer_process(self) -> None:
        if self._process is not None:
            self._process.close()
            self._process = None

    def wait(self) -> None:
        """Wait for a checkpoint being written in the background; raise what went wrong writing it."""
        if self._process is not None:
            self._process.result()
        if self._writer is not None:
            self._jobs.join()
        if self._write_error is not None:
            error, self._write_error = self._write_error, None
            raise error

    def _write_loop(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                self._write(*job)
            except BaseException as exc:  # noqa: BLE001 - raised in the loop's thread by wait()
                self._write_error = exc
            finally:
                del job
                self._jobs.task_done()

    def _write(self, step: int, final: Path, meta: dict, data: Any) -> None:
        tmp = tmp_dir(self.dir, step)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        if data is None:
            self.state.save(tmp)
        else:
            self.state.write(data, tmp)  # type: ignore[attr-defined]
        publish(tmp, final, meta, self.fsync)
        prune(self.dir, self.keep_last, self.keep_best, self.metric, self.mode)

    def resume(self) -> int:
        """Load the latest good checkpoint; the step to continue from (0 when there is none)."""
        for path in self.checkpoints():
            try:
                self.state.load(path)
                meta = read_meta(path)
            except Exception as exc:  # noqa: BLE001 - a damaged checkpoint: fall back to the one before
                print(f"[durabatch] checkpoint {path.name} unreadable ({exc}); trying the previous one",
                      file=sys.stderr)
                continue
            self.step = self.saved_step = int(meta["step"])
            self._saved_at = meta.get("time")
            self._metrics = dict(meta.get("metrics", {}))
            self.progress.message(f"[durabatch] resumed from {path} (step {self.step:,})")
            return self.step
        return 0

    # -- the loop --------------------------------------------------------------------------------------------
    def record(self, **metrics: float) -> None:
        """Metrics stored with the next checkpoint (its meta.json and metrics.jsonl; keep_best reads them)."""
        self._metrics.update({k: float(v) for k, v in metrics.items()})

    def log(self, **metrics: float) -> None:
        """Metrics by step, for curves (`status`, `report`, `dashboard`): call it every step; what it costs is
        adding to running sums, rows are made and written at a throttled pace (loops/metrics.py)."""
        self.steps.log(self.step if self._log_step is None else self._log_step, metrics)

    def show_progress(self, final: bool = False) -> None:
        """The progress line now (range() calls it when due; other loops, e.g. sb3's callback, may too)."""
        saved = (self.saved_step, self._saved_at) if self.saved_step is not None and self._saved_at else None
        metrics = self.steps.last["metrics"] if self.steps.last else self._metrics
        self.progress.show(self.step, self.total, self.deadline[0] if self.deadline else None, saved, metrics,
                           self.clock(), final)

    def begin(self, start: int, total: int | None) -> None:
        """A session from step `start` towards `total`: the step log's session line, the progress line's clock."""
        self.total = total
        self.steps.start(start, total)
        self.steps.flush()  # the session line now, one append: `status` shows the total before the first checkpoint
        self.progress.start(start)

    def end(self) -> None:
        """Write what the step log holds, show the last progress line."""
        try:
            self.steps.flush(self.step)
        finally:
            if not self.progress.off:
                self.show_progress(final=True)
            self.progress.close()

    def range(self, total: int) -> Iterator[int]:
        """Steps from the latest checkpoint to `total`, saving periodically and on a stop request."""
        start = self.resume()
        self.stop.install()
        self.begin(start, total)
        try:
            if start < total:
                self._start_writer_process()
            last = time.perf_counter()
            for step in range(start, total):
                self._log_step = step + 1
                yield step
                self.step = step + 1
                if self.progress.due():
                    self.show_progress()
                now = time.perf_counter()
                self._step_seconds = 0.9 * self._step_seconds + 0.1 * (now - last) if step > start else now - last
                last = now
                reason = self.stop_reason()
                if reason:
                    self.save(reason=reason)
                    self.stopped = reason
                    self.end()
                    print(f"[durabatch] {reason}: checkpoint saved at step {self.step:,}; run again to resume",
                          file=sys.stderr)
                    if self.exit_on_stop:
                        raise SystemExit(EXIT_STOPPED)
                    return
                if self._due():
                    self.save(background=True)
            if self.saved_step != self.step:
                self.save(reason="final")
        finally:
            self._log_step = None
            try:
                self.wait()
            finally:
                self._stop_writer_process()  # it would end with this process anyway; not to linger until then
                self.stop.restore()
                if not self.stopped:
                    self.end()

    def _due(self) -> bool:
        if self.every_steps and self.step % self.every_steps == 0:
            return True
        return bool(self.every_seconds and self.clock() - self._last_save >= self.every_seconds)

    def stop_reason(self) -> str | None:
        if self.stop.requested:
            return self.stop.reason
        if self.deadline:
            margin = 2 * self._step_seconds + 2 * self._save_seconds + 1.0
            if self.clock() + margin >= self.deadline[0]:
                return "deadline"
        return None

    # -- pre-flight ------------------------------------------------------------------------------------------
    def preflight(self, step_fn: Callable[[], Any], steps: int = 10, total: int | None = None) -> dict:
        """Run a few steps, measure them, project the whole run against the deadline, and write and reload a
        checkpoint: the problems that otherwise show up at hour 12, in seconds."""
        t0 = time.perf_counter()
        for _ in range(steps):
            step_fn()
        per_step = (time.perf_counter() - t0) / max(1, steps)
        probe = self.save(step=0, reason="preflight")
        self.state.load(probe)
        shutil.rmtree(probe, ignore_errors=True)
        report: dict[str, Any] = {"steps_per_second": 1 / per_step if per_step else float("inf"),
                                  "save_seconds": self._save_seconds, "checkpoint_ok": True}
        if total is not None:
            report["projected_seconds"] = per_step * total
            if self.deadline:
                left = self.deadline[0] - self.clock()
                report["fits_deadline"] = per_step * total <= left
                if not report["fits_deadline"]:
                    print(f"[durabatch] preflight: {total:,} steps at {report['steps_per_second']:.2f}/s need "
                          f"{per_step * total / 3600:.1f} h, the deadline is in {left / 3600:.1f} h: the run will "
                          "stop early (checkpointed) and need a resume", file=sys.stderr)
        return report
