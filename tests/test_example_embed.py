"""The flagship example end to end, on a small slice: real MiniLM, real stdlib docstrings, Parquet read back."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

pytest.importorskip("sentence_transformers", reason="needs the [examples] extra (make setup-examples)")
pytestmark = pytest.mark.example

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "examples" / "embed_docstrings" / "data" / "stdlib_docstrings.jsonl"  # built by the first run


def run_example(run_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "examples.embed_docstrings", "--run-dir", str(run_dir), *extra],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_embeds_a_slice_exactly_once_and_resumes(tmp_path):
    run_dir = tmp_path / "embed"
    first = run_example(run_dir, "--limit", "64", "--progress", "plain")
    assert first.returncode == 0, first.stderr[-2000:]
    table = pq.read_table(run_dir / "embeddings.parquet")
    ids = table.column("id").to_pylist()
    with open(CORPUS, encoding="utf-8") as f:
        expected = [json.loads(line)["id"] for line, _ in zip(f, range(96), strict=False)]
    assert ids == expected[:64]  # every key of the slice exactly once, in source order
    vectors = table.column("embedding").to_pylist()
    assert all(len(v) == 384 and all(math.isfinite(x) for x in v) for v in vectors)
    assert all(abs(sum(x * x for x in v) - 1.0) < 1e-3 for v in vectors)  # normalised embeddings
    assert "closest to" in first.stdout
    again = run_example(run_dir, "--limit", "64", "--progress", "plain")
    assert again.returncode == 0 and "nothing to do" in again.stderr
    more = run_example(run_dir, "--limit", "96", "--progress", "plain")
    assert more.returncode == 0 and "resuming: 64 items already done" in more.stderr
    assert pq.read_table(run_dir / "embeddings.parquet").column("id").to_pylist() == expected
