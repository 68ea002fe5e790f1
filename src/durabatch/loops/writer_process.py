"""Writing checkpoint directories, and the checkpoint writer process.

A checkpoint is written under a temporary name, its meta.json last, fsynced, renamed to its final name, the
directory fsynced, a metrics line appended and old checkpoints pruned (publish() and prune(), used by the
Checkpointer's own thread and by the writer process alike).

The writer process takes periodic saves of states that can copy their tensors into a buffer (TorchState). The
training thread copies the state's bytes into shared memory (a memfd: it has no name, so nothing can be left
behind in /dev/shm, whoever is killed) and sends the job (paths, header, meta) over a socket; the process
writes the checkpoint.
A writer thread's Python sections (mkdir, write, rename, fsync, metrics line, prune) took the GIL from the
training thread for 1-2 ms a checkpoint; a process takes nothing from it.

This module uses the standard library only and runs as a script by path (`python -I -S writer_process.py`): the
process never imports torch or durabatch, so it starts in tens of milliseconds and holds a few MB. It ends when
its trainer does (end of file on the socket, or the trainer no longer its parent) and publishes nothing after
the trainer died."""

from __future__ import annotations

import json
import marshal
import mmap
import os
import shutil
import signal
import socket
import sys
from pathlib import Path

AVAILABLE = hasattr(os, "memfd_create") and hasattr(socket, "send_fds")  # Linux; elsewhere the thread writes
FREE_ABOVE = 64 << 20  # a buffer this big is freed after each write, so it does not hold the RAM in between


# -- checkpoint directories: the one place their layout is spelled out ------------------------------------------
# RUN_DIR/checkpoints/step-000000001200/{meta.json, state...}, .tmp-step-<step>-<pid>/ while being written, and
# metrics.jsonl (one line per checkpoint), steps.jsonl (ckpt.log(): metrics by step, loops/metrics.py). Kept here
# because this file must run without importing durabatch.
CHECKPOINTS = "checkpoints"
META = "meta.json"
METRICS = "metrics.jsonl"
STEPS = "steps.jsonl"


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINTS


def step_dir(directory: Path, step: int) -> Path:
    return directory / f"step-{step:012d}"


def tmp_dir(directory: Path, step: int) -> Path:
    return directory / f".tmp-step-{step:012d}-{os.getpid()}"


def read_meta(checkpoint: Path) -> dict:
    return json.loads((checkpoint / META).read_text())


def complete_checkpoints(directory: Path) -> list[Path]:
    """Checkpoints with their meta.json (written last), newest first."""
    done = [p for p in directory.glob("step-*") if (p / META).exists()]
    return sorted(done, key=lambda p: int(p.name.split("-")[1]), reverse=True)


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(tmp: Path, final: Path, meta: dict, fsync: bool) -> None:
    """Turn a temporary directory holding a state into a checkpoint: meta.json last (its presence marks a whole
    checkpoint), flushed, renamed, and a metrics line."""
    (tmp / META).write_text(json.dumps(meta))
    if fsync:
        for path in tmp.rglob("*"):
            if path.is_file():
                fsync_path(path)
        fsync_path(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    if fsync:
        fsync_path(final.parent)
    with open(final.parent / METRICS, "a", encoding="utf-8") as f:
        f.write(json.dumps(meta) + "\n")


def prune(directory: Path, keep_last: int, keep_best: int = 0, metric: str | None = None,
          mode: str = "min") -> None:
    """Delete all but the newest keep_last checkpoints and the keep_best best by metric, and temporary leftovers
    of interrupted writes."""
    kept = complete_checkpoints(directory)
    keep = set(kept[:keep_last])
    if keep_best and metric:
        scored = [(read_meta(p)["metrics"].get(metric), p) for p in kept]
        scored = [(v, p) for v, p in scored if isinstance(v, int | float)]
        scored.sort(key=lambda vp: vp[0], reverse=mode == "max")
        keep |= {p for _, p in scored[:keep_best]}
    for path in kept:
        if path not in keep:
            shutil.rmtree(path, ignore_errors=True)
    for leftover in directory.glob(".tmp-step-*"):
        shutil.rmtree(leftover, ignore_errors=True)


def raw_file_head(header: object, sizes: list[int]) -> bytes:
    """The start of a raw tensor file (TorchState's state.tensors): an 8-byte length, then JSON: the structure
    (tensors by index) and each tensor's size. Their bytes follow, one after the other."""
    head = json.dumps({"state": header, "sizes": sizes}).encode()
    return len(head).to_bytes(8, "little") + head


# -- messages: an 8-byte length, then marshal (both ends run the same Python: 6x faster than JSON for a header
# of ~100 tensors); a buffer's file descriptor rides with the length ----------------------------------------------
def _send(sock: socket.socket, message: dict, fds: list[int] | None = None) -> None:
    body = marshal.dumps(message)
    prefix = len(body).to_bytes(8, "little")
    if fds:
        socket.send_fds(sock, [prefix], fds)
        sock.sendall(body)
    else:
        sock.sendall(prefix + body)


def _receive(sock: socket.socket, parent: int | None = None) -> tuple[dict | None, list[int]]:
    """The next message and the file descriptors sent with it; None at end of file. With a socket timeout and
    the parent's pid (the writer's side), also None once the parent is gone."""
    data, fds = bytearray(), []
    need = 8
    while len(data) < need:
        try:
            chunk, got, _, _ = socket.recv_fds(sock, need - len(data), 4)
        except TimeoutError:
            if parent is not None and os.getppid() != parent:
                return None, fds
            continue
        except ConnectionResetError:  # the other end died with our reply unread (kill -9): its end of file
            return None, fds
        if not chunk:
            return None, fds
        data += chunk
        fds += got
        if need == 8 and len(data) == 8:
            need += int.from_bytes(data, "little")
    return marshal.loads(data[8:]), fds


def _error_reply(exc: BaseException) -> dict:
    reply: dict[str, object] = {"error": type(exc).__name__, "message": str(exc)}
    if isinstance(exc, OSError) and exc.errno is not None:
        reply.update(errno=exc.errno, strerror=exc.strerror, filename=None if exc.filename is None else
                     os.fsdecode(exc.filename))
    return reply


def _raised(reply: dict) -> BaseException:
    """The writer's error as the loop raises it: an OSError keeps its errno (and so its subclass)."""
    if reply.get("errno") is not None:
        return OSError(reply["errno"], f"{reply['strerror']} (in the checkpoint writer process)",
                       reply.get("filename"))
    return RuntimeError(f"checkpoint writer process: {reply['error']}: {reply['message']}")


# -- the training side -----------------------------------------------------------------------------------------
class WriterProcess:
    """The trainer's end of one writer process: a shared buffer to copy a state into, jobs sent, replies."""

    def __init__(self) -> None:
        import subprocess  # here: the writer process itself starts faster without it

        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-I", "-S", os.path.abspath(__file__), str(theirs.fileno()), str(os.getpid())],
                pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.sock = ours
        self.owner = os.getpid()  # a forked child must not use its parent's writer (nor its shared buffer)
        self.pending = False
        self._buffer: mmap.mmap | None = None
        self._unsent_fd: int | None = None

    def buffer(self, nbytes: int) -> mmap.mmap:
        """A shared buffer of at least nbytes; only called once the last job is done (the writer reads it)."""
        if self._buffer is None or len(self._buffer) < nbytes:
            size = max(nbytes, len(self._buffer) * 5 // 4 if self._buffer else 1)
            size = -(-size // mmap.PAGESIZE) * mmap.PAGESIZE
            fd = os.memfd_create("durabatch-checkpoint", os.MFD_CLOEXEC)
            try:
                os.ftruncate(fd, size)
                buffer = mmap.mmap(fd, size)
            except BaseException:
                os.close(fd)
                raise
            self._drop_buffer()
            self._buffer, self._unsent_fd = buffer, fd
        return self._buffer

    def send(self, job: dict) -> None:
        """Hand a job over (the buffer holds its bytes); the reply is read by result()."""
        fds = [self._unsent_fd] if self._unsent_fd is not None else None
        try:
            _send(self.sock, job, fds)
        except BrokenPipeError as exc:
            self.close()
            raise RuntimeError(f"the checkpoint writer process ended (exit code {self.process.poll()}); "
                               "Checkpointer(writer_process=False) writes from a thread instead") from exc
        except BaseException:  # interrupted mid-message: this writer's stream is unusable
            self.close()
            raise
        if fds:
            os.close(fds[0])
            self._unsent_fd = None
        self.pending = True

    def result(self) -> None:
        """Wait for the job sent last, if any; raise what went wrong writing it."""
        if not self.pending:
            return
        self.pending = False
        try:
            reply, _ = _receive(self.sock)
        except BaseException:
            self.close()
            raise
        if reply is None:
            self.close()
            raise RuntimeError(f"the checkpoint writer process ended (exit code {self.process.poll()}) before "
                               "finishing a checkpoint; Checkpointer(writer_process=False) writes from a thread")
        if "error" in reply:
            raise _raised(reply)

    @property
    def closed(self) -> bool:
        return self.sock.fileno() == -1

    def close(self) -> None:
        """End of file for the writer, which then exits; reaped here unless it is still busy with a job."""
        busy = self.pending
        self.pending = False
        self.sock.close()
        self._drop_buffer()
        if not busy:
            import subprocess

            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:  # it ends by itself; subprocess reaps it later
                pass

    def _drop_buffer(self) -> None:
        if self._buffer is not None:
            self._buffer.close()
            self._buffer = None
        if self._unsent_fd is not None:
            os.close(self._unsent_fd)
            self._unsent_fd = None


# -- the writer process ----------------------------------------------------------------------------------------
def write_job(job: dict, buffer: mmap.mmap, parent: int) -> None:
    """The same steps as the Checkpointer's own writer, with the state's file taken from the shared buffer."""
    directory, tmp, final = Path(job["dir"]), Path(job["tmp"]), Path(job["final"])
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    with open(tmp / job["file"], "wb") as f, memoryview(buffer) as view:
        f.write(raw_file_head(job["header"], job["sizes"]))
        f.write(view[: sum(job["sizes"])])
    if os.getppid() != parent:  # the trainer died: publish nothing after it (a new run may be starting)
        shutil.rmtree(tmp, ignore_errors=True)
        raise SystemExit(0)
    publish(tmp, final, job["meta"], job["fsync"])
    prune(directory, job["keep_last"], job["keep_best"], job["metric"], job["mode"])


def serve(sock: socket.socket, parent: int) -> None:
    buffer: mmap.mmap | None = None
    try:
        while True:
            job, fds = _receive(sock, parent)
            if job is None:
                return
            if fds:
                if buffer is not None:
                    buffer.close()
                buffer = mmap.mmap(fds[0], 0)
                for fd in fds:
                    os.close(fd)
            try:
                if buffer is None:
                    raise RuntimeError("a job without a buffer")
                write_job(job, buffer, parent)
                reply: dict[str, object] = {"ok": True}
            except Exception as exc:  # noqa: BLE001 - sent to the trainer, which raises it in its loop
                reply = _error_reply(exc)
            if buffer is not None and len(buffer) > FREE_ABOVE and hasattr(mmap, "MADV_REMOVE"):
                buffer.madvise(mmap.MADV_REMOVE)
            try:
                _send(sock, reply)
            except OSError:  # the trainer is gone
                return
    finally:
        if buffer is not None:
            buffer.close()


def main(argv: list[str]) -> None:
    fd, parent = int(argv[1]), int(argv[2])
    # Signals to the whole process group (Ctrl-C, Slurm's SIGTERM / SIGUSR1) are for the trainer: it saves and
    # stops, and this process must live to finish the write it is doing. It ends when the trainer does.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    # Second to the trainer for the CPU: woken by a job, not to preempt the trainer that sent it on the same core
    # (it did, for ~0.6 ms), and on a busy machine to take idle time rather than the trainer's. It has the ~90 ms
    # until the next checkpoint for ~2 ms of work, and gets the trainer's core whenever the trainer waits for it.
    try:
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
        os.nice(10)
    except (AttributeError, OSError):
        pass
    sock = socket.socket(fileno=fd)
    sock.settimeout(1.0)  # to notice a dead trainer whose socket a forked child (a DataLoader worker) holds open
    try:
        serve(sock, parent)
    except Exception:
        if os.getppid() != parent:  # the trainer was killed: nothing to report to, and its stderr is the user's
            raise SystemExit(0) from None
        raise


if __name__ == "__main__":
    main(sys.argv)
