"""The checkpoint writer process (TorchState's periodic checkpoints): what it writes loads back bit for bit, its
errors are raised in the loop, signals to the whole process group do not kill it mid-write, and a trainer killed
with SIGKILL leaves neither it nor shared memory behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from test_torch_state import same  # noqa: E402

from durabatch.loops import writer_process as ckptwriter  # noqa: E402
from durabatch.loops.checkpointer import Checkpointer  # noqa: E402
from durabatch.loops.torch import RAW, TorchState, read_tensors, write_tensors  # noqa: E402

pytestmark = pytest.mark.skipif(not ckptwriter.AVAILABLE, reason="the writer process needs Linux (memfd)")
TESTS = Path(__file__).resolve().parent


def writer_processes(parent: int) -> list[int]:
    """Live checkpoint writer processes whose parent is `parent` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == parent and state != "Z" and b"writer_process" in cmdline:
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def named_shared_memory() -> list[str]:
    """Segments of ours in /dev/shm: there should never be any (the buffer is a memfd, which has no name)."""
    return [p.name for p in Path("/dev/shm").glob("*durabatch*")] if Path("/dev/shm").exists() else []


def maps_the_buffer(pid: int) -> bool:
    """Whether a process maps the shared buffer (both ends close its descriptor once mapped): once neither
    does, the kernel frees it."""
    return "memfd:durabatch-checkpoint" in (Path("/proc") / str(pid) / "maps").read_text()


def small_training(extra: dict | None = None):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=7, gamma=0.5)
    state = TorchState(model, optimizer, scheduler, extra=extra)

    def step() -> None:
        loss = model(torch.randn(4, 8)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()

    return state, step


def test_a_checkpoint_written_by_the_writer_process_loads_back_bit_for_bit(tmp_path):
    state, step = small_training(extra={"best": 0.5, "seen": [1, 2], "mask": torch.tensor([True, False])})
    ckpt = Checkpointer(tmp_path, state, every_steps=10)
    writers = []
    for i in ckpt.range(30):
        step()
        if i == 15:
            writers = writer_processes(os.getpid())
    assert len(writers) == 1 and ckpt._writer is None  # written by the process; no writer thread was started
    assert not writer_processes(os.getpid())  # ended with the loop
    latest = ckpt.checkpoints()[0]
    assert latest.name == "step-000000000030" and ckpt.saved_step == 30  # the periodic save, no final one
    # the same bytes as the thread's writer, for the same state (nothing ran since that save)
    snapshot = state.snapshot()
    write_tensors(snapshot, tmp_path / "by-thread", torch)
    assert (latest / RAW).read_bytes() == (tmp_path / "by-thread").read_bytes()
    assert same(read_tensors(latest / RAW, torch), snapshot)
    # and it loads: a fresh state gets the same weights, optimizer, scheduler, extra and RNG
    fresh, _ = small_training()
    torch.manual_seed(123)
    fresh.load(latest)
    assert same(fresh.snapshot(), snapshot)


def test_a_state_the_raw_format_cannot_hold_is_written_by_the_thread(tmp_path):
    state, step = small_training(extra={"phase": complex(1, 2)})  # not JSON: torch.save, from the thread
    ckpt = Checkpointer(tmp_path, state, every_steps=10, keep_last=5)
    for _ in ckpt.range(30):
        step()
    assert [p.name for p in ckpt.checkpoints()] == [f"step-{n:012d}" for n in (30, 20, 10)]
    assert all((p / "state.pt").exists() and not (p / RAW).exists() for p in ckpt.checkpoints())
    fresh, _ = small_training()
    fresh.load(ckpt.checkpoints()[0])
    assert fresh.extra == {"phase": complex(1, 2)} and same(fresh.snapshot()["model"], state.snapshot()["model"])


def test_a_write_error_in_the_writer_process_is_raised_in_the_loop(tmp_path):
    state, step = small_training()
    ckpt = Checkpointer(tmp_path, state, every_steps=10, exit_on_stop=False)
    (ckpt.dir / "step-000000000010").write_text("in the way")  # the first checkpoint cannot be renamed there
    steps = 0
    with pytest.raises(NotADirectoryError, match="checkpoint writer process"):
        for _ in ckpt.range(50):
            step()
            steps += 1
    assert steps == 20  # raised at the checkpoint after the failed one
    assert not ckpt.checkpoints()
    assert not writer_processes(os.getpid())


@pytest.fixture(autouse=True)
def _no_trainer_left_behind():
    """A trainer runs 100,000 steps: whatever a test's outcome, none of ours outlives it."""
    yield
    for proc in _trainers:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    _trainers.clear()


_trainers: list[subprocess.Popen] = []


def trainer(run_dir: Path, out: Path, **popen) -> subprocess.Popen:
    _trainers.append(proc := subprocess.Popen([sys.executable, str(TESTS / "trainloop.py"), str(run_dir), str(out),
                                               "100000", "25", "0.01"], stderr=subprocess.PIPE, text=True, **popen))
    return proc


def wait_for_checkpoints(run_dir: Path, proc: subprocess.Popen, n: int = 1) -> None:
    deadline = time.monotonic() + 600  # generous: only evidence that never comes fails the test
    while len(list((run_dir / "checkpoints").glob("step-*/meta.json"))) < n:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)


@pytest.mark.slow
def test_a_sigkilled_trainer_leaves_no_writer_process_and_no_shared_memory(tmp_path):
    proc = trainer(tmp_path / "run", tmp_path / "out.pt")
    wait_for_checkpoints(tmp_path / "run", proc, 2)
    writers = writer_processes(proc.pid)
    assert len(writers) == 1 and maps_the_buffer(proc.pid) and maps_the_buffer(writers[0])
    assert not named_shared_memory()
    proc.kill()
    proc.communicate(timeout=60)
    deadline = time.monotonic() + 30  # the writer notices at once (end of file) or within a second (its parent)
    while alive(writers[0]):
        assert time.monotonic() < deadline, "the writer process outlived its trainer"
        time.sleep(0.05)
    assert not named_shared_memory()  # and with both processes gone, nothing maps the buffer: it is freed
    # a checkpoint being written when the trainer died is not published after it (nor ever picked up)
    names = [p.name for p in Checkpointer(tmp_path / "run", TorchState()).checkpoints()]
    assert len(names) >= 2 and all((tmp_path / "run" / "checkpoints" / n / RAW).exists() for n in names)


@pytest.mark.slow
def test_sigterm_to_the_whole_process_group_saves_and_stops(tmp_path):
    """Slurm and Ctrl-C signal every process of the group: the writer ignores them (it must not die mid-write);
    the trainer saves at the next step boundary, exits 75, and its writer ends with it."""
    proc = trainer(tmp_path / "run", tmp_path / "out.pt", start_new_session=True)
    wait_for_checkpoints(tmp_path / "run", proc, 2)
    writers = writer_processes(proc.pid)
    assert len(writers) == 1
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 75 and "checkpoint saved" in err, err
    assert not alive(writers[0]) and not named_shared_memory()
    saved_at = int(err.split("checkpoint saved at step ")[1].split(";")[0].replace(",", ""))
    assert Checkpointer(tmp_path / "run", TorchState()).checkpoints()[0].name == f"step-{saved_at:012d}"


def test_a_big_buffer_freed_after_each_write_still_holds_the_next_checkpoint(tmp_path):
    """Above FREE_ABOVE the writer frees the buffer's memory after writing; the next copy must land whole."""
    big = torch.zeros(ckptwriter.FREE_ABOVE // 4 + 1024)  # float32: just over the threshold
    state = TorchState(extra={"big": big}, rng=False)
    ckpt = Checkpointer(tmp_path, state, every_steps=1, keep_last=1, fsync=False)
    for step in ckpt.range(3):
        big[step::7] += step + 1  # different bytes in each checkpoint
    assert ckpt.checkpoints()[0].name == "step-000000000003"
    assert torch.equal(read_tensors(ckpt.checkpoints()[0] / RAW, torch)["extra"]["big"], big)
