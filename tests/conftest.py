"""Shared helpers: write inputs, run the CLI as a real subprocess, read exports back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

TESTS = Path(__file__).resolve().parent


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def cli_env(extra_path: Path | None = None) -> dict:
    paths = [str(TESTS)] + ([str(extra_path)] if extra_path else [])
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


def durabatch_cli(*args, cwd, extra_path=None, timeout=180, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "durabatch", *map(str, args)], cwd=cwd, env=cli_env(extra_path),
                          capture_output=True, text=True, timeout=timeout, **kwargs)


def durabatch_popen(*args, cwd, extra_path=None, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "durabatch", *map(str, args)], cwd=cwd, env=cli_env(extra_path),
                            **kwargs)


def export_ids(run_dir: Path, tmp_path: Path, column: str = "id") -> list:
    out = tmp_path / "export.parquet"
    result = durabatch_cli("export", run_dir, "--to", out, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    return pq.read_table(out).column(column).to_pylist()


@pytest.fixture
def records_file(tmp_path):
    def make(n: int, name: str = "data.jsonl") -> Path:
        return write_jsonl(tmp_path / name, ({"id": i, "text": f"item-{i}"} for i in range(n)))

    return make
