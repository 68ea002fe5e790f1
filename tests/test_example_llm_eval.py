"""The llm_eval recipe end to end against the local server: accuracy equals the server's deterministic answers,
and the API key is written nowhere in the run directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.example
pytest.importorskip("openai")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from durabatch.testing import answer_for  # noqa: E402
from examples.llm_eval.questions import generate  # noqa: E402

SECRET = "sk-eval-secret-42"


def test_llm_eval_recipe_reports_accuracy_and_keeps_the_key_secret(tmp_path):
    env = {**os.environ, "OPENAI_API_KEY": SECRET, "PYTHONPATH": str(ROOT)}
    run_dir = tmp_path / "eval"
    result = subprocess.run([sys.executable, "-m", "examples.llm_eval", "--local", "--questions", "120",
                             "--run-dir", str(run_dir), "--progress", "plain"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    expected = sum(answer_for(q["question"]) == q["answer"] for q in generate(120))
    assert f"accuracy: {expected}/120" in result.stdout
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    assert SECRET not in result.stdout + result.stderr


def test_doc_extract_recipe_groups_segments_per_document(tmp_path):
    import pyarrow.parquet as pq

    env = {**os.environ, "OPENAI_API_KEY": SECRET, "PYTHONPATH": str(ROOT)}
    run_dir = tmp_path / "extract"
    result = subprocess.run([sys.executable, "-m", "examples.doc_extract", "--local", "--documents", "12",
                             "--run-dir", str(run_dir), "--rpm", "3000", "--progress", "off"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    subprocess.run([sys.executable, "-m", "durabatch", "export", str(run_dir), "--to", str(tmp_path / "o.parquet")],
                   env=env, check=True, capture_output=True)
    rows = pq.read_table(tmp_path / "o.parquet").to_pylist()
    assert len(rows) == 12 and len({r["id"] for r in rows}) == 12
    assert all(r["segments"] >= 1 and r["concepts"] and r["tokens"] > 0 for r in rows)
