"""First-day CLI (issue 12 item 7): -h, --version, a function given as a file path, a data file passed where a
job file goes, and a script without `if __name__ == "__main__":` run with the processes engine. The help page and
the usage errors: test_help.py."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import cli_env, durabatch_cli, write_jsonl

import durabatch


def test_short_help_and_version(tmp_path):
    assert durabatch_cli("-h", cwd=tmp_path).returncode == 0
    assert "Usage: durabatch run" in durabatch_cli("run", "-h", cwd=tmp_path).stdout
    result = durabatch_cli("--version", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.strip() == f"durabatch {durabatch.__version__}"


@pytest.mark.parametrize("engine", ["inline", "processes"])
def test_a_function_given_as_a_file_path(tmp_path, engine):
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "my_job.py").write_text("def double(record):\n    return {'x2': record['x'] * 2}\n")
    data = write_jsonl(tmp_path / "in.jsonl", [{"id": i, "x": i} for i in range(20)])
    result = durabatch_cli("run", "-i", data, "--key", "id", "--fn", "scripts/my_job.py:double", "--engine", engine,
                           "--workers", "2", "--run-dir", tmp_path / "run", "--progress", "off", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    export = durabatch_cli("export", tmp_path / "run", "--to", tmp_path / "out.jsonl", cwd=tmp_path)
    assert export.returncode == 0, export.stderr
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert sorted(r["x2"] for r in rows) == [2 * i for i in range(20)]


def test_a_missing_function_file_is_a_usage_error(tmp_path):
    data = write_jsonl(tmp_path / "in.jsonl", [{"id": 1}])
    result = durabatch_cli("run", "-i", data, "--key", "id", "--fn", "nowhere.py:f", "--run-dir", tmp_path / "run",
                           cwd=tmp_path)
    assert result.returncode == 2 and "no such file nowhere.py" in result.stderr


def test_a_data_file_where_the_job_file_goes_suggests_input(tmp_path):
    data = write_jsonl(tmp_path / "data.jsonl", [{"id": 1}])
    result = durabatch_cli("run", data, "--fn", "json:dumps", "--run-dir", tmp_path / "run", cwd=tmp_path)
    assert result.returncode == 2
    assert f"pass it as `--input {data}`" in result.stderr


NO_GUARD = """import durabatch


def double(record):
    return {"x2": record["id"] * 2}

durabatch.run(double, [{"id": i} for i in range(4)], key="id", run_dir="run", engine="processes", progress="off")
"""


def test_a_script_without_the_main_guard_is_told_to_add_it(tmp_path):
    """Spawned workers re-import the main script, which runs the job again in each: the runner names the line."""
    (tmp_path / "noguard.py").write_text(NO_GUARD)
    result = subprocess.run([sys.executable, "noguard.py"], cwd=tmp_path, env=cli_env(), capture_output=True,
                            text=True, timeout=180)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert "noguard.py:7" in last and 'under `if __name__ == "__main__":`' in last, result.stderr
    assert "RunLockedError" not in result.stderr  # the workers stop quietly; the runner explains once
