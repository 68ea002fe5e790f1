"""Checkpointed loops: atomic checkpoints, keep_last/keep_best, resume from the latest good one, emergency save
on SIGTERM with exit 75, and determinism: interrupted + resumed ends with the same weights, bitwise."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from durabatch.loops.checkpointer import Checkpointer, PickleState

TESTS = Path(__file__).resolve().parent


class Counter:
    def __init__(self):
        self.value = 0


def counter_state(c):
    return PickleState(lambda: c.value, lambda v: setattr(c, "value", v))


def test_periodic_checkpoints_keep_last_and_best(tmp_path):
    c = Counter()
    ckpt = Checkpointer(tmp_path, counter_state(c), every_steps=10, keep_last=2, keep_best=1, metric="loss")
    for step in ckpt.range(100):
        c.value += 1
        ckpt.record(loss=abs(step - 35))  # best at step 35 -> saved with the checkpoint of step 40
    names = [p.name for p in ckpt.checkpoints()]
    assert names[:2] == ["step-000000000100", "step-000000000090"]
    assert "step-000000000040" in names and len(names) == 3
    lines = (tmp_path / "checkpoints" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 10 and json.loads(lines[3])["metrics"]["loss"] == 4.0


def test_resume_continues_from_the_latest_good_checkpoint(tmp_path):
    c = Counter()
    ckpt = Checkpointer(tmp_path, counter_state(c), every_steps=10, exit_on_stop=False)
    for step in ckpt.range(100):
        c.value += 1
        if step == 54:
            break  # a crash after step 54: the last checkpoint is at 50
    # a half-written checkpoint and a damaged newest one are never used
    (tmp_path / "checkpoints" / ".tmp-step-000000000060-1").mkdir()
    c2 = Counter()
    again = Checkpointer(tmp_path, counter_state(c2), every_steps=10)
    assert again.resume() == 50 and c2.value == 50
    (again.checkpoints()[0] / "state.pkl").write_bytes(b"garbage")
    c3 = Counter()
    assert Checkpointer(tmp_path, counter_state(c3), every_steps=10).resume() == 40 and c3.value == 40


def test_preflight_measures_projects_and_round_trips_a_checkpoint(tmp_path):
    c = Counter()
    ckpt = Checkpointer(tmp_path, counter_state(c), deadline="1s")
    report = ckpt.preflight(lambda: time.sleep(0.01), steps=5, total=1000)
    # a step sleeps 10 ms, so at most 100 steps a second (fewer on a busy machine: no lower bound)
    assert report["checkpoint_ok"] and 0 < report["steps_per_second"] <= 101
    assert report["projected_seconds"] == pytest.approx(1000 / report["steps_per_second"])
    assert report["fits_deadline"] is False and report["projected_seconds"] >= 9.9
    assert not ckpt.checkpoints()  # the probe checkpoint is cleaned up


def run_loop(run_dir, out, steps=300, every=25, sleep=0.0):
    return subprocess.Popen([sys.executable, str(TESTS / "trainloop.py"), str(run_dir), str(out), str(steps),
                             str(every), str(sleep)], stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_interrupted_and_resumed_training_ends_with_identical_weights(tmp_path):
    torch = pytest.importorskip("torch")
    reference = run_loop(tmp_path / "a", tmp_path / "a.pt")
    assert reference.wait(timeout=300) == 0
    proc = run_loop(tmp_path / "b", tmp_path / "b.pt", sleep=0.01)
    deadline = time.monotonic() + 300
    while len(list((tmp_path / "b" / "checkpoints").glob("step-*"))) < 2:  # two checkpoints in: stop it mid-way
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err
    assert "checkpoint saved" in err
    proc = run_loop(tmp_path / "b", tmp_path / "b.pt")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0 and "resumed from" in err
    a, b = torch.load(tmp_path / "a.pt"), torch.load(tmp_path / "b.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_deadline_saves_and_exits_75(tmp_path):
    pytest.importorskip("torch")
    code = subprocess.run([sys.executable, "-c", f"""
import sys, time
sys.path.insert(0, {str(TESTS)!r})
from durabatch.loops.checkpointer import Checkpointer, PickleState
state = {{"n": 0}}
ckpt = Checkpointer({str(tmp_path)!r}, PickleState(lambda: state["n"], lambda v: state.update(n=v)), deadline="5s")
try:
    for _ in ckpt.range(10_000):
        state["n"] += 1
        time.sleep(0.01)
finally:
    print("steps run:", state["n"], flush=True)
"""], capture_output=True, text=True, timeout=300)
    assert code.returncode == 75 and "deadline" in code.stderr, code.stderr
    ran = int(code.stdout.split("steps run:")[1])
    # 10,000 steps of at least 10 ms cannot fit in 5 s: stopped by the deadline, after at most 500 steps (fewer on a
    # busy machine), with a checkpoint of exactly the last step
    assert 0 < ran <= 500
    step = int(Checkpointer(tmp_path, PickleState(lambda: 0, lambda v: None)).checkpoints()[0].name.split("-")[1])
    assert step == ran


def test_status_shows_a_loops_checkpoints_and_metrics(tmp_path):
    c = Counter()
    ckpt = Checkpointer(tmp_path, counter_state(c), every_steps=10)
    for step in ckpt.range(30):
        ckpt.record(loss=1.0 / (step + 1))
    result = subprocess.run([sys.executable, "-m", "durabatch", "status", str(tmp_path)], capture_output=True,
                            text=True)
    assert result.returncode == 0 and "step-000000000030" in result.stdout and "loss=" in result.stdout


def test_a_failed_background_write_is_raised_not_lost(tmp_path):
    """A periodic checkpoint is written by a background thread: if writing fails (disk full, permissions), the
    loop hears of it at its next checkpoint instead of training on without any."""

    class Unwritable(PickleState):
        def write(self, snapshot, directory):
            raise OSError(28, "No space left on device")

    c = Counter()
    ckpt = Checkpointer(tmp_path, Unwritable(lambda: c.value, lambda v: setattr(c, "value", v)), every_steps=5,
                        exit_on_stop=False, fsync=False)
    with pytest.raises(OSError, match="No space left"):
        for _ in ckpt.range(20):
            c.value += 1
    assert c.value <= 10  # stopped at the checkpoint after the failed one
    assert not ckpt.checkpoints()
