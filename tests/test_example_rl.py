"""The rl_train recipe: SIGKILLed and SIGTERMed mid-training, resumed to completion; the total timesteps are
exact and a final evaluation reward is reported."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

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
            assert proc.poll() is None, "training finished before it could be interrupted"
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
