"""One worker per GPU (issue 11 item 4): `--gpus 0,1` starts one process worker per listed device with
CUDA_VISIBLE_DEVICES set to it. Tested without a GPU by what the workers see; a worker's death and a CUDA
out-of-memory error (the real torch class, raised by the function) follow the existing paths."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import cli_env, durabatch_cli, make_records, read_export, write_jsonl

# Each worker logs "pid device" once set up; the function returns what it sees. Record 7 kills its worker the
# first time (a real SIGKILL, like a CUDA driver abort), so a replacement worker must start, on the same device.
SEEN = '''
import os, signal
from pathlib import Path

HERE = Path(__file__).parent


class Seen:
    def setup(self):
        with open(HERE / "workers.log", "a") as f:
            f.write(f"{os.getpid()} {os.environ.get('CUDA_VISIBLE_DEVICES')}\\n")

    def __call__(self, record):
        device = os.environ.get("CUDA_VISIBLE_DEVICES")
        marker = HERE / "killed"
        if record["id"] == 7 and not marker.exists():
            marker.write_text(f"{os.getpid()} {device}")
            os.kill(os.getpid(), signal.SIGKILL)
        return {"device": device, "pid": os.getpid()}
'''


def _run(tmp_path: Path, *args: str, n: int = 40):
    data = write_jsonl(tmp_path / "in.jsonl", make_records(n))
    return durabatch_cli("run", "-i", data, "--key", "id", "--run-dir", tmp_path / "run", "--progress", "off",
                         *args, cwd=tmp_path)


def test_one_worker_per_gpu_each_sees_its_device_and_a_replacement_keeps_it(tmp_path):
    (tmp_path / "seen.py").write_text(SEEN)
    result = _run(tmp_path, "--fn", "seen.py:Seen", "--gpus", "0,1", "--commit-every", "5")  # no --engine: processes
    assert result.returncode == 0, result.stderr
    rows = read_export(tmp_path / "run", tmp_path).to_pylist()
    assert sorted(r["id"] for r in rows) == list(range(40))
    assert {r["device"] for r in rows} <= {"0", "1"}
    device_of: dict[int, set] = {}
    for r in rows:
        device_of.setdefault(r["pid"], set()).add(r["device"])
    assert all(len(devices) == 1 for devices in device_of.values()), device_of  # a worker keeps one device
    started = [line.split() for line in (tmp_path / "workers.log").read_text().splitlines()]
    assert sorted(device for _, device in started[:2]) == ["0", "1"]  # one worker per listed device
    dead_pid, dead_device = (tmp_path / "killed").read_text().split()
    assert len(started) == 3 and started[2][1] == dead_device  # the replacement took the dead worker's device
    assert device_of.get(int(dead_pid), {dead_device}) == {dead_device}


@pytest.mark.parametrize("args, expected", [
    (["--gpus", "0,1,x"], "'x' is not a GPU"),
    (["--gpus", "0,1", "--engine", "threads"], "--engine processes"),
    (["--gpus", "0,1", "--workers", "3"], "drop --workers 3"),
    (["--gpus", "1,1"], "listed twice"),
])
def test_bad_gpus_is_a_one_line_usage_error(tmp_path, args, expected):
    result = _run(tmp_path, "--fn", "json:dumps", *args, n=3)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0] and "gpus" in lines[0], result.stderr


# A batch function on a (pretend-numbered) GPU that raises torch's own CUDA out-of-memory error above 2 records,
# and for record 5 even alone: the existing OOM path halves the batches and goes on; record 5 fails by itself.
OOM = '''
import torch


def embed(records):
    if len(records) > 2 or any(r["id"] == 5 for r in records):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    return [{"n": r["id"]} for r in records]
'''


def test_cuda_out_of_memory_in_a_gpu_worker_follows_the_oom_path(tmp_path):
    pytest.importorskip("torch")
    (tmp_path / "oom.py").write_text(OOM)
    result = _run(tmp_path, "--fn", "oom.py:embed", "--gpus", "0", "--batch-size", "8", "--max-attempts", "1",
                  n=20)
    assert result.returncode == 1, result.stderr  # finished, with the one failed item
    done = read_export(tmp_path / "run", tmp_path).column("id").to_pylist()
    assert sorted(done) == [i for i in range(20) if i != 5]
    failed = read_export(tmp_path / "run", tmp_path, failed=True).to_pylist()
    assert [(str(f["key"]), f["error_type"]) for f in failed] == [("5", "OutOfMemoryError")]
    log = (tmp_path / "run" / "logs" / "run.log").read_text()
    assert "ran out of memory on" in log and "continuing with batches of" in log


# A main script whose module level reads the device (as `torch.cuda.is_available()` there would initialise CUDA):
# spawned workers re-import it before durabatch's own code runs in them, so they must start with their device.
MAIN = """import json, os, subprocess
import durabatch

AT_IMPORT = os.environ.get("CUDA_VISIBLE_DEVICES")


def seen(record):
    return {"at_import": AT_IMPORT, "now": os.environ.get("CUDA_VISIBLE_DEVICES")}


if __name__ == "__main__":
    s = durabatch.run(seen, [{"id": i} for i in range(8)], key="id", run_dir="run", gpus="0,1", progress="off")
    after = subprocess.run(["sh", "-c", "echo $CUDA_VISIBLE_DEVICES"], capture_output=True, text=True).stdout
    print(json.dumps({"exit": s.exit_code, "after": after.strip()}))
"""


def test_workers_start_with_their_device_and_the_runner_keeps_its_own(tmp_path):
    """From Python (durabatch.run(..., gpus="0,1")): what a worker's main-script import sees is its device, and
    the runner's own CUDA_VISIBLE_DEVICES (here 7) is what its later children get."""
    (tmp_path / "main.py").write_text(MAIN)
    result = subprocess.run([sys.executable, "main.py"], cwd=tmp_path, env=cli_env(env={"CUDA_VISIBLE_DEVICES": "7"}),
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"exit": 0, "after": "7"}
    rows = read_export(tmp_path / "run", tmp_path).to_pylist()
    assert len(rows) == 8 and all(r["at_import"] == r["now"] and r["now"] in ("0", "1") for r in rows), rows
