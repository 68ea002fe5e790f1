"""A training loop that knows its total shows it in `durabatch status` from its first step: the session line of
the step log (written when the loop starts, one append) carries it, before any checkpoint does."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import durabatch_cli

# Holds in step argv[3] until the test writes a line to its stdin; no ckpt.log(), no checkpoint before the end.
LOOP = """
import sys
from durabatch.loops.checkpointer import Checkpointer, PickleState
state = {"n": 0}
ckpt = Checkpointer(sys.argv[1], PickleState(lambda: state["n"], lambda v: state.update(n=v)), every_steps=10_000,
                    fsync=False, progress="off")
for step in ckpt.range(int(sys.argv[2])):
    if step == int(sys.argv[3]):
        print(f"in step {step}", flush=True)
        sys.stdin.readline()
    state["n"] += 1
"""


def status(run_dir, cwd) -> tuple[str, dict]:
    text = durabatch_cli("status", run_dir, cwd=cwd)
    assert text.returncode == 0, text.stdout + text.stderr
    info = durabatch_cli("status", run_dir, "--json", cwd=cwd)
    assert info.returncode == 0, info.stdout + info.stderr
    return text.stdout, json.loads(info.stdout)


def test_a_new_loop_shows_its_total_before_its_first_checkpoint(tmp_path):
    run_dir = tmp_path / "train"
    proc = subprocess.Popen([sys.executable, "-c", LOOP, str(run_dir), "1500", "0"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "in step 0"
        assert not (run_dir / "checkpoints" / "metrics.jsonl").exists()  # no checkpoint yet: the case at hand
        text, info = status(run_dir, tmp_path)
        assert info["kind"] == "loop" and info["total"] == 1500 and info["latest"] is None, info
        assert "no checkpoint yet (step 0 of 1,500)" in text, text
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text, info = status(run_dir, tmp_path)
    assert info["total"] == 1500 and info["latest"]["step"] == 1500, info
    assert "step 1,500 of 1,500 (final)" in text, text


def test_a_resumed_loop_shows_the_total_it_runs_to_now(tmp_path):
    """The same run directory, run on to a larger total: status shows the new total before the next checkpoint."""
    run_dir = tmp_path / "train"
    first = subprocess.run([sys.executable, "-c", LOOP, str(run_dir), "20", "0"], input="go\n", text=True,
                           capture_output=True, timeout=120)
    assert first.returncode == 0, first.stderr
    proc = subprocess.Popen([sys.executable, "-c", LOOP, str(run_dir), "50", "20"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "in step 20"
        text, info = status(run_dir, tmp_path)
        assert info["total"] == 50 and info["latest"]["step"] == 20, info
        assert "step 20 of 50 (final)" in text, text
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
