"""The rl_train recipe: SIGKILLed and SIGTERMed at random moments, resumed to completion; the total timesteps
are exact and a final evaluation reward is reported."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("stable_baselines3")
ROOT = Path(__file__).resolve().parent.parent


def test_killed_and_resumed_training_reaches_exact_timesteps(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [sys.executable, "-m", "examples.rl_train", "--timesteps", "6144", "--every", "512",
            "--run-dir", str(tmp_path / "rl")]
    rng = random.Random(5)
    codes = []
    for sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGKILL):
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(rng.uniform(4, 7))
        proc.send_signal(sig)
        proc.communicate(timeout=120)
        codes.append(proc.returncode)
    assert 75 in codes or -signal.SIGTERM in codes  # SIGTERM after start-up ends in a clean 75
    final = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr[-2000:]
    match = re.search(r"timesteps: ([\d,]+)\s+evaluation reward: ([\d.]+)", final.stdout)
    assert match and match.group(1) == "6,144", final.stdout
    assert float(match.group(2)) > 0
