"""The rl_train recipe: SIGKILLed and SIGTERMed mid-training, resumed to completion; the total timesteps are
exact, a final evaluation reward is reported, and the episode rewards logged by timestep across the four
sessions show in `status` and `report`, each timestep once."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import durabatch_cli

from durabatch.loops.metrics import read_steps

pytestmark = pytest.mark.example
pytest.importorskip("stable_baselines3")
ROOT = Path(__file__).resolve().parent.parent
TOTAL = 10_240


def checkpoints_written(run_dir: Path) -> int:
    metrics = run_dir / "checkpoints" / "metrics.jsonl"
    return len(metrics.read_text().splitlines()) if metrics.exists() else 0


def test_killed_and_resumed_training_reaches_exact_timesteps(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run_dir = tmp_path / "rl"
    args = [sys.executable, "-m", "examples.rl_train", "--timesteps", str(TOTAL), "--every", "512",
            "--run-dir", str(run_dir)]
    for sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGKILL):
        before = checkpoints_written(run_dir)
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 600  # generous: only evidence that never comes fails the test
        while checkpoints_written(run_dir) < before + 2:  # mid-training: two more checkpoints since this start
            assert proc.poll() is None, f"training ended before it was interrupted: {proc.communicate()[1][-3000:]}"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=300)
        if sig == signal.SIGTERM:
            assert proc.returncode == 75 and "checkpoint saved" in out
    final = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert final.returncode == 0, final.stderr[-2000:]
    assert "resumed at" in final.stdout
    match = re.search(r"timesteps: ([\d,]+)\s+evaluation reward: ([\d.]+)", final.stdout)
    assert match and match.group(1) == f"{TOTAL:,}", final.stdout
    assert float(match.group(2)) > 0

    rows = read_steps(run_dir / "checkpoints")
    steps = [r["step"] for r in rows]
    assert steps == sorted(set(steps)) and 0 < steps[-1] <= TOTAL  # re-run timesteps are not shown twice
    assert len({r["session"] for r in rows}) >= 2 and all(r["metrics"]["episode_reward"] > 0 for r in rows)
    status = durabatch_cli("status", run_dir, cwd=run_dir)
    assert status.returncode == 0 and "episode_reward=" in status.stdout, status.stdout
    report = json.loads(durabatch_cli("report", run_dir, "--json", cwd=run_dir).stdout)
    assert report["series"]["metrics"]["episode_reward"]["step"] == steps
