"""Deadlines: stop dispatching early enough to finish and commit before the wall; exit 75; resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import ledger_query

from durabatch.errors import ConfigError
from durabatch.policies.stopping import parse_duration, wall_deadline


def test_parse_duration():
    assert parse_duration("11h30m") == 41400
    assert parse_duration("90m") == 5400
    assert parse_duration("45s") == 45
    assert parse_duration("1d2h") == 93600
    assert parse_duration("12.5") == 12.5
    with pytest.raises(ConfigError, match="11h30m"):
        parse_duration("soon")


def test_earliest_deadline_wins_and_slurm_counts():
    now = 1_000_000.0
    assert wall_deadline("1h", None, now, None) == (now + 3600, "--deadline 1h")
    at, origin = wall_deadline("1h", None, now, str(int(now + 600)))
    assert at == now + 600 and "Slurm" in origin
    assert wall_deadline(None, None, now, None) is None


def test_deadline_stops_in_time_exits_75_and_resumes(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"id": i}) + "\n" for i in range(1000)))
    (tmp_path / "slowfn.py").write_text("import os, time\ndef f(r):\n    time.sleep(float(os.environ['SLOW']))\n"
                                        "    return {'x': r['id']}\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    args = [sys.executable, "-m", "durabatch", "run", "-i", str(data), "--key", "id", "--fn", "slowfn:f",
            "--run-dir", str(tmp_path / "r"), "--progress", "off", "--commit-every", "50"]
    # 1,000 calls of at least 10 ms cannot end within 5 s: only the deadline stops this run
    first = subprocess.run([*args, "--deadline", "5s"], cwd=tmp_path, env={**env, "SLOW": "0.01"},
                           capture_output=True, text=True, timeout=300)
    assert first.returncode == 75, first.stderr
    assert "deadline" in first.stderr
    # Before the wall, measured by the run itself: the deadline counts from the run's start (before its ledger
    # row), so the row's start-to-end is within 5 s, however long the interpreter took to start.
    [(started, ended)] = ledger_query(tmp_path / "r", "SELECT started_at, ended_at FROM runs")
    assert ended - started < 5, f"the run ended {ended - started:.2f}s after its start: past its 5 s deadline"
    status = json.loads(subprocess.run([sys.executable, "-m", "durabatch", "status", str(tmp_path / "r"), "--json"],
                                       capture_output=True, text=True, env=env).stdout)
    assert 0 < status["done"] < 1000
    second = subprocess.run(args, cwd=tmp_path, env={**env, "SLOW": "0"}, capture_output=True, text=True,
                            timeout=300)
    assert second.returncode == 0, second.stderr
    status = json.loads(subprocess.run([sys.executable, "-m", "durabatch", "status", str(tmp_path / "r"), "--json"],
                                       capture_output=True, text=True, env=env).stdout)
    assert status["done"] == 1000
