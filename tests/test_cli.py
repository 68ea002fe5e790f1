"""The command line as a user drives it: settings precedence, job files, status while running, export."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import committed_rows, wait_until

from durabatch.config.settings import merge, read_env, read_job_file
from durabatch.errors import ConfigError

TESTS = Path(__file__).parent


def cli(*args, cwd, env_extra=None, **kw):
    env = {**os.environ, "PYTHONPATH": str(TESTS), **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "durabatch", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120, **kw)


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps({"id": i, "text": f"t{i}"}) + "\n" for i in range(200)))
    return path


def test_precedence_cli_over_env_over_file_over_defaults(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("fn: userfns:digest\nbatch_size: 8\nworkers: 3\ncommit_every: 100\n")
    config = merge((str(job), read_job_file(job)),
                   ("environment", read_env({"DURABATCH_WORKERS": "5", "DURABATCH_COMMIT_EVERY": "7"})),
                   ("command line", {"workers": 2}))
    assert (config.batch_size, config.workers, config.commit_every, config.commit_seconds) == (8, 2, 7, 5.0)


def test_unknown_yaml_key_names_it_with_a_suggestion(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("fn: userfns:digest\nbatch_sise: 8\n")
    with pytest.raises(ConfigError, match=r"unknown setting 'batch_sise'.*Did you mean 'batch_size'"):
        read_job_file(job)


def test_bad_env_value_names_its_origin():
    with pytest.raises(ConfigError, match=r"workers = 'many' \(from environment\)"):
        merge(("environment", read_env({"DURABATCH_WORKERS": "many"})))


def test_job_file_with_flag_override_runs_and_exports(tmp_path, data):
    job = tmp_path / "job.yaml"
    job.write_text(f"fn: userfns:digest_batch\ninput: {data.name}\nkey: id\nrun_dir: runs/x\nbatch_size: 16\n")
    result = cli("run", job, "--limit", "50", "--progress", "off", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert cli("export", tmp_path / "runs/x", "--to", tmp_path / "out.jsonl", cwd=tmp_path).returncode == 0
    lines = (tmp_path / "out.jsonl").read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == list(range(50))


def test_missing_function_module_is_exit_2(tmp_path, data):
    result = cli("run", "-i", data, "--key", "id", "--fn", "nosuchmod:f", "--run-dir", tmp_path / "r", cwd=tmp_path)
    assert result.returncode == 2 and "nosuchmod" in result.stderr


def test_status_json_while_running_and_after(tmp_path):
    path = tmp_path / "slow.jsonl"
    path.write_text("".join(json.dumps({"id": i}) + "\n" for i in range(400)))
    # From item 100 on, each call waits for the test to open the gate: the run is certainly still running while
    # status looks at it, however slowly either process starts.
    gate = tmp_path / "gate"
    (tmp_path / "slowfn.py").write_text(
        "import os, time\ndef f(r):\n    while r['id'] >= 100 and not os.path.exists(os.environ['GATE']):\n"
        "        time.sleep(0.01)\n    return {'x': r['id']}\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{TESTS}", "GATE": str(gate)}
    proc = subprocess.Popen([sys.executable, "-m", "durabatch", "run", "-i", path, "--key", "id", "--fn", "slowfn:f",
                             "--run-dir", tmp_path / "r", "--commit-every", "20", "--progress", "off"],
                            cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: committed_rows(tmp_path / "r") > 0, timeout=300, what="a first commit")
        result = cli("status", tmp_path / "r", "--json", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        info = json.loads(result.stdout)
        assert info["state"] == "running" and info["pid"] == proc.pid
        assert 0 < info["done"] <= 100 and info["total"] == 400
    finally:
        gate.touch()
        _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    final = json.loads(cli("status", tmp_path / "r", "--json", cwd=tmp_path).stdout)
    assert (final["state"], final["done"], final["remaining"], final["pid"]) == ("finished", 400, 0, None)
    text = cli("status", tmp_path / "r", cwd=tmp_path).stdout
    assert "400/400 (100.0%)" in text


def test_plain_progress_is_a_few_lines_not_a_flood(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"id": i}) + "\n" for i in range(300)))
    (tmp_path / "slowfn.py").write_text("import time\ndef f(r):\n    time.sleep(0.01)\n    return {'x': 1}\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    t0 = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "durabatch", "run", "-i", path, "--key", "id", "--fn", "slowfn:f",
                             "--run-dir", tmp_path / "r", "--progress", "plain", "--log-every", "1"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    elapsed = time.monotonic() - t0
    assert result.returncode == 0
    lines = [line for line in result.stderr.splitlines() if "items/s" in line]
    # at least 3 s of calls (300 x 10 ms) at one line a second, plus the final line; on a busy machine the run
    # takes longer, never more than a line a second (plus the final one)
    assert 2 <= len(lines) <= elapsed + 2, (elapsed, result.stderr)
    assert "300/300" in lines[-1]


@pytest.mark.slow  # four runs of the CLI
def test_retry_failed_puts_failures_back(tmp_path, data):
    (tmp_path / "flaky.py").write_text(
        "import os\ndef f(r):\n    if r['id'] % 50 == 0 and not os.path.exists('fixed'):\n"
        "        raise RuntimeError('not yet')\n    return {'x': r['id']}\n")
    env = {"PYTHONPATH": str(tmp_path)}
    args = ("run", "-i", data, "--key", "id", "--fn", "flaky:f", "--run-dir", tmp_path / "r", "--progress", "off")
    assert cli(*args, cwd=tmp_path, env_extra=env).returncode == 1
    (tmp_path / "fixed").touch()
    assert cli(*args, cwd=tmp_path, env_extra=env).returncode == 1  # failed items are not redone by themselves
    result = cli("retry-failed", tmp_path / "r", cwd=tmp_path)
    assert result.returncode == 0 and "4 item(s) put back" in result.stderr
    second = cli(*args, cwd=tmp_path, env_extra=env)
    assert second.returncode == 0, second.stderr
    cli("export", tmp_path / "r", "--to", tmp_path / "o.parquet", cwd=tmp_path)
    assert pq.read_table(tmp_path / "o.parquet").column("id").to_pylist() == list(range(200))
    cli("export", tmp_path / "r", "--failed", "--to", tmp_path / "f.jsonl", cwd=tmp_path)
    assert (tmp_path / "f.jsonl").read_text() == ""  # history stays in the ledger's attempts table


def test_help_documents_every_setting(tmp_path):
    from durabatch.config.settings import FIELDS

    text = cli("run", "--help", cwd=tmp_path).stdout
    for name in FIELDS:
        flag = {"output_format": "--format"}.get(name, "--" + name.replace("_", "-"))
        assert flag in text, flag
