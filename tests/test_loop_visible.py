"""Training loops are visible: ckpt.log() keeps metrics by step (throttled, buffered, kept up to the last flush by
a kill -9, a resumed run's curve without the steps it re-ran twice), a progress line on a terminal and piped,
`status` and `report` show them, and the checkpoint writer process never prints a traceback when its trainer is
killed."""

from __future__ import annotations

import json
import os
import pty
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import durabatch_cli

from durabatch.loops.checkpointer import Checkpointer, PickleState
from durabatch.loops.metrics import read_steps

TESTS = Path(__file__).resolve().parent
LOOP = """
import sys, time
from durabatch.loops.checkpointer import Checkpointer, PickleState
run_dir, total, sleep, mode, every = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4], int(sys.argv[5])
state = {"n": 0}
ckpt = Checkpointer(run_dir, PickleState(lambda: state["n"], lambda v: state.update(n=v)), every_steps=every,
                    fsync=False, deadline="10h", progress=mode, progress_every=0.2)
for step in ckpt.range(total):
    state["n"] += 1
    ckpt.log(loss=1 / (step + 1), reward=step % 7)
    time.sleep(sleep)
"""


def loop(run_dir: Path, total: int, sleep: float, mode: str = "auto", every: int = 200, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", LOOP, str(run_dir), str(total), str(sleep), mode, str(every)],
                            **popen)


def wait_until(predicate, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 300  # generous: only evidence that never comes fails the test
    while not predicate():
        assert proc.poll() is None, f"the loop ended before {what}"
        assert time.monotonic() < deadline, f"no {what}"
        time.sleep(0.05)


def logged_steps(run_dir: Path) -> list[int]:
    return [r["step"] for r in read_steps(run_dir / "checkpoints")]


def test_logged_metrics_survive_a_kill_9_and_the_resumed_curve_has_each_step_once(tmp_path):
    run_dir = tmp_path / "train"
    proc = loop(run_dir, 100_000, 0.002, every=1500, stderr=subprocess.PIPE, text=True)
    # rows past the checkpoint at step 1500 flushed (every 2 s), and the next checkpoint 1,450 steps of 2 ms away
    wait_until(lambda: any(s > 1550 for s in logged_steps(run_dir)), proc, "logged step past 1550")
    proc.kill()
    proc.communicate(timeout=60)
    killed = logged_steps(run_dir)
    resumed_at = int(Checkpointer(run_dir, PickleState(lambda: 0, lambda v: None)).checkpoints()[0].name[5:])
    assert killed == sorted(killed) and killed[0] == 1 and killed[-1] > resumed_at  # steps it will run again

    again = loop(run_dir, resumed_at + 300, 0.0, every=1500, stderr=subprocess.PIPE, text=True)
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0 and "resumed from" in err, err
    steps = logged_steps(run_dir)
    assert steps == sorted(set(steps)), "a step shown twice: the killed session's rows past the resume remain"
    assert steps[-1] == resumed_at + 300
    assert [s for s in steps if s <= resumed_at] == [s for s in killed if s <= resumed_at]  # kept as they were
    rows = read_steps(run_dir / "checkpoints")
    assert len({r["session"] for r in rows}) == 2
    assert all(r["metrics"]["loss"] <= 1 / (r["step"] - r["n"] + 1) + 1e-12 for r in rows)  # means of 1/(step+1)
    assert sum(r["n"] for r in rows if r["step"] > resumed_at) == 300  # every call of the new session counted


def test_progress_line_piped_and_on_a_terminal(tmp_path):
    piped = loop(tmp_path / "a", 400, 0.003, stderr=subprocess.PIPE, text=True)
    _, err = piped.communicate(timeout=300)
    assert piped.returncode == 0, err
    lines = [line for line in err.splitlines() if "] step " in line]
    assert lines and "\r" not in err  # plain lines, the last one at the end
    pattern = (r"^\[durabatch \d\d:\d\d:\d\d\] step [\d,]+/400 \([\d.]+%\) \| [\d.,e+]+ steps/s \| ETA [\d:]+ \| "
               r"deadline in 9:5\d:\d\d \| (checkpoint at step [\d,]+ [\d:]+ ago|no checkpoint yet) \| "
               r"loss=[\d.e-]+, reward=[\d.]+$")
    assert all(re.match(pattern, line) for line in lines), lines
    assert lines[-1].split("] ")[1].startswith("step 400/400 (100.0%)") and "checkpoint at step 400" in lines[-1]

    # on a terminal: one line rewritten in place (carriage return, erase line), a newline only at the end
    main, child = pty.openpty()
    tty = loop(tmp_path / "b", 400, 0.003, stderr=child, stdout=subprocess.DEVNULL)
    os.close(child)
    out = b""
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(main)
    assert tty.wait(timeout=60) == 0
    text = out.decode()
    assert "\r\x1b[K[durabatch] step 400/400 (100.0%)" in text
    assert text.count("\n") == 1  # the live line ends once (a terminal shows \n as \r\n)


def test_status_and_report_show_a_short_runs_metrics_by_step(tmp_path):
    """A 3-second run (fake clock, 10 ms a step) still gets curves of a few hundred points."""
    now, state = [5000.0], {"n": 0}
    ckpt = Checkpointer(tmp_path, PickleState(lambda: state["n"], lambda v: state.update(n=v)), every_steps=100,
                        fsync=False, clock=lambda: now[0], progress="off")
    for step in ckpt.range(300):
        now[0] += 0.01
        ckpt.log(loss=1 / (step + 1), accuracy=step / 300)
    status = durabatch_cli("status", tmp_path, cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert "step 300 of 300 (periodic)" in status.stdout, status.stdout
    # the last row: the mean of the steps since the row before it (rows come at most every 50 ms)
    assert re.search(r"logged: +step 300, .*loss=0\.003\d+, accuracy=0\.99", status.stdout), status.stdout
    info = json.loads(durabatch_cli("status", tmp_path, "--json", cwd=tmp_path).stdout)
    assert info["step"] == 300 and info["logged"]["metrics"]["accuracy"] == pytest.approx(299 / 300, abs=0.01)

    data = json.loads(durabatch_cli("report", tmp_path, "--json", cwd=tmp_path).stdout)
    metrics = data["series"]["metrics"]
    assert set(metrics) == {"loss", "accuracy"}
    assert len(metrics["loss"]["step"]) >= 50 and metrics["loss"]["step"][-1] == 300
    assert metrics["loss"]["value"] == sorted(metrics["loss"]["value"], reverse=True)  # a falling loss
    speed = data["series"]["steps_per_s"]["steps_per_s"]
    assert len(speed) >= 20 and all(s == pytest.approx(100, rel=0.05) for s in speed)  # 10 ms a step, faked
    page = (tmp_path / "report.html").read_text()
    for name in ("loss", "accuracy"):
        svg = re.search(rf'<svg [^>]*aria-label="{name} by step".*?</svg>', page, re.S).group(0)
        assert sum(len(p.split()) for p in re.findall(r'points="([^"]*)"', svg)) == len(metrics[name]["step"])


def test_a_killed_trainer_leaves_no_traceback_from_its_writer_process(tmp_path):
    """The writer process answers each checkpoint; the trainer reads the answer at its next one. Killed in
    between, the trainer leaves the answer unread and the writer's next read fails (connection reset): that must
    end the writer quietly, not print a traceback into the user's terminal."""
    pytest.importorskip("torch")
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, str(TESTS / "trainloop.py"), str(run_dir), str(tmp_path / "out.pt"),
                             "100000", "25", "0.01"], stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: len(list((run_dir / "checkpoints").glob("step-*/meta.json"))) >= 2, proc,
                   "second checkpoint")
        proc.send_signal(signal.SIGKILL)  # at once: the writer's answer to that checkpoint is not read yet
        _, err = proc.communicate(timeout=120)  # the writer shares this stderr: it is read to its end
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert "Traceback" not in err and "Error" not in err, err


def test_metrics_logged_at_different_cadences_keep_their_own_means(tmp_path):
    """A loss every step, an episode reward now and then: a row's reward is the mean of the rewards logged."""
    now, state = [0.0], {"n": 0}
    ckpt = Checkpointer(tmp_path, PickleState(lambda: state["n"], lambda v: state.update(n=v)), every_steps=1000,
                        fsync=False, clock=lambda: now[0], progress="off")
    for step in ckpt.range(500):
        now[0] += 0.01
        ckpt.log(loss=2.0, **({"reward": float(step % 3)} if step % 7 == 0 else {}))
    rows = read_steps(tmp_path / "checkpoints")
    assert all(r["metrics"]["loss"] == 2.0 for r in rows) and sum(r["n"] for r in rows) == 500
    rewards = [r["metrics"]["reward"] for r in rows if "reward" in r["metrics"]]
    assert rewards and all(v in (0.0, 0.5, 1.0, 1.5, 2.0) for v in rewards)  # means of 0, 1, 2: never diluted
