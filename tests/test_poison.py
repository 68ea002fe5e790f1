"""Poison items: one that kills the whole runner and one that eats memory are quarantined with their reason;
the rest of the job completes; innocents are never quarantined."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

TESTS = Path(__file__).parent


def durabatch_cli(*args, cwd, timeout=240):
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    return subprocess.run([sys.executable, "-m", "durabatch", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _data(tmp_path, n=200):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"id": i}) + "\n" for i in range(n)))
    return path


def _exported(tmp_path, failed=False):
    out = tmp_path / ("f.parquet" if failed else "o.parquet")
    args = ["export", tmp_path / "r", "--to", out] + (["--failed"] if failed else [])
    assert durabatch_cli(*args, cwd=tmp_path).returncode == 0
    return pq.read_table(out)


def test_an_item_that_kills_the_runner_is_quarantined_under_supervise(tmp_path):
    result = durabatch_cli("run", "-i", _data(tmp_path), "--key", "id", "--fn", "userfns:aborts_on_13",
                           "--run-dir", tmp_path / "r", "--supervise", "--restart-delay", "0.05",
                           "--progress", "off", cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert _exported(tmp_path).column("id").to_pylist() == [i for i in range(200) if i != 13]
    failed = _exported(tmp_path, failed=True)
    assert failed.column("key").to_pylist() == ["13"]
    assert failed.column("state").to_pylist() == ["quarantined"]
    assert "SIGABRT" in failed.column("message")[0].as_py()
    log = (tmp_path / "r" / "logs" / "supervise.log").read_text()
    assert "killed by signal 6" in log and "exited with code 1" in log
    status = durabatch_cli("status", tmp_path / "r", cwd=tmp_path).stdout
    assert "quarantined: 1" in status and "13:" in status


def test_an_item_that_eats_memory_is_killed_and_quarantined(tmp_path):
    result = durabatch_cli("run", "-i", _data(tmp_path, 60), "--key", "id", "--fn", "userfns:eats_memory_on_7",
                           "--run-dir", tmp_path / "r", "--engine", "processes", "--workers", "2",
                           "--max-worker-memory", "400MB", "--progress", "off", cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert _exported(tmp_path).column("id").to_pylist() == [i for i in range(60) if i != 7]
    failed = _exported(tmp_path, failed=True)
    assert failed.column("key").to_pylist() == ["7"]
    assert "memory" in failed.column("message")[0].as_py()


def test_a_crash_loop_is_reported_not_retried_forever(tmp_path):
    (tmp_path / "crashy.py").write_text("import os\nclass F:\n    def setup(self):\n        os._exit(9)\n\n"
                                        "    def __call__(self, r):\n        return r\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "durabatch", "run", "-i", str(_data(tmp_path, 5)), "--key", "id",
                             "--fn", "crashy:F", "--run-dir", str(tmp_path / "r"), "--supervise",
                             "--restart-delay", "0.05", "--progress", "off"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 70
    assert "crash loop" in (tmp_path / "r" / "logs" / "supervise.log").read_text()


def test_item_timeout_kills_a_stuck_worker_and_charges_the_item(tmp_path):
    result = durabatch_cli("run", "-i", _data(tmp_path, 40), "--key", "id", "--fn", "userfns:sleeps_on_5",
                           "--run-dir", tmp_path / "r", "--engine", "processes", "--workers", "2",
                           "--item-timeout", "1", "--max-attempts", "2", "--backoff-base", "0",
                           "--progress", "off", cwd=tmp_path, timeout=120)
    assert result.returncode == 1, result.stderr
    assert _exported(tmp_path).num_rows == 39
    failed = _exported(tmp_path, failed=True)
    assert failed.column("key").to_pylist() == ["5"]
    assert failed.column("error_type").to_pylist() == ["ItemTimeout"]
    assert failed.column("attempts").to_pylist() == [2]


def test_item_timeout_inline_interrupts_the_call(tmp_path):
    import userfns

    import durabatch

    summary = durabatch.run(userfns.sleeps_on_5, [{"id": i} for i in range(20)], key="id", run_dir=tmp_path / "r",
                            item_timeout=0.5, max_attempts=1, progress="off")
    assert summary.exit_code == 1 and summary.failed == 1 and summary.done == 19


def test_a_worker_stuck_beyond_signals_is_killed_and_replaced(tmp_path):
    result = durabatch_cli("run", "-i", _data(tmp_path, 12), "--key", "id", "--fn", "userfns:stuck_on_3",
                           "--batch-size", "1", "--run-dir", tmp_path / "r", "--engine", "processes",
                           "--workers", "2", "--item-timeout", "0.5", "--max-attempts", "1", "--progress", "off",
                           cwd=tmp_path, timeout=120)
    assert result.returncode == 1, result.stderr
    assert _exported(tmp_path).num_rows == 11
    failed = _exported(tmp_path, failed=True)
    assert failed.column("key").to_pylist() == ["3"]
    assert failed.column("error_type").to_pylist() == ["ItemTimeout"]
    assert "worker was killed" in failed.column("message")[0].as_py()
