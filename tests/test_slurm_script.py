"""The sbatch script `durabatch slurm submit` writes, run by bash itself: no Slurm needed (tests/test_slurm.py runs
it on a real cluster). Slurm's commands are stand-ins first on PATH that record their calls: `sbatch` (answers a
job id), `scontrol` (the requeue) and `squeue` (nothing queued). The rank itself is the real `durabatch run`; its
Slurm end time (SLURM_JOB_END_TIME) is long past, so it stops early every time and exits 75, the rank that would
requeue itself forever without --max-requeues."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import yaml
from conftest import cli_env, durabatch_cli

from durabatch import slurm

FAKE_SLURM = {
    "sbatch": 'echo "sbatch $*" >> "$SLURM_CALLS"\necho 4242\n',
    "scontrol": 'echo "scontrol $*" >> "$SLURM_CALLS"\n',
    "squeue": 'echo "squeue $*" >> "$SLURM_CALLS"\n',  # nothing pending or running
}


def fake_slurm(tmp_path: Path) -> dict:
    """A folder of stand-ins for Slurm's commands, first on PATH; their calls are appended to calls.txt."""
    folder = tmp_path / "bin"
    folder.mkdir()
    for name, body in FAKE_SLURM.items():
        (folder / name).write_text("#!/bin/bash\n" + body)
        (folder / name).chmod(0o755)
    return {"PATH": f"{folder}{os.pathsep}{os.environ['PATH']}", "SLURM_CALLS": str(tmp_path / "calls.txt")}


def calls(tmp_path: Path, command: str) -> list[str]:
    path = tmp_path / "calls.txt"
    return [line for line in path.read_text().splitlines() if line.startswith(command)] if path.exists() else []


def submit(tmp_path: Path, records_file, *options: str) -> tuple[dict, Path]:
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({"fn": "jobs:digest", "input": str(records_file(200)), "key": "id",
                                   "run_dir": "runs/x", "progress": "off", "commit_every": 5}))
    env = fake_slurm(tmp_path)
    result = durabatch_cli("slurm", "submit", job, "--ranks", "1", *options, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "submitted Slurm job 4242" in result.stdout
    return env, tmp_path / "runs" / "x" / "slurm" / "submit-1.sh"


def run_element(tmp_path: Path, script: Path, env: dict, restarts: int | None) -> subprocess.CompletedProcess:
    """Array element 0 of job 4242 as Slurm would start it after `restarts` requeues (None: never requeued,
    so SLURM_RESTART_COUNT is not set), its end time long past."""
    slurm_env = {"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_JOB_ID": "4242", "SLURM_JOB_ID": "4243",
                 "SLURM_JOB_END_TIME": "1"}
    if restarts is not None:
        slurm_env["SLURM_RESTART_COUNT"] = str(restarts)
    full = cli_env(env={**env, **slurm_env})
    if restarts is None:
        full.pop("SLURM_RESTART_COUNT", None)
    return subprocess.run(["bash", script], cwd=tmp_path, env=full, capture_output=True, text=True, timeout=300)


def test_script_states_the_cap_and_submit_json_keeps_it(tmp_path, records_file):
    env, script = submit(tmp_path, records_file, "--max-requeues", "3")
    text = script.read_text()
    assert "max_requeues=3\n" in text and 'restarts=${SLURM_RESTART_COUNT:-0}\n' in text
    assert 'if [ "$restarts" -lt "$max_requeues" ]; then' in text
    assert 'scontrol requeue "${SLURM_ARRAY_JOB_ID}_$rank"' in text  # as tests/test_slurm.py expects
    assert f"durabatch slurm resubmit {tmp_path / 'runs' / 'x'}" in text
    assert subprocess.run(["bash", "-n", script]).returncode == 0
    assert json.loads((script.parent / "submit.json").read_text())["max_requeues"] == 3
    assert calls(tmp_path, "sbatch") == [f"sbatch --parsable {script}"]

    # resubmit (nothing queued: the stand-in squeue answers nothing) keeps the cap of the first submission
    again = durabatch_cli("slurm", "resubmit", "runs/x", cwd=tmp_path, env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "max_requeues=3\n" in (script.parent / "submit-2.sh").read_text()


def test_default_cap_and_a_submission_saved_before_the_cap_existed(tmp_path):
    sub = slurm.Submission(job_file="/j.yaml", run_dir=str(tmp_path), ranks=2, parallel=2, python="/py",
                           workdir=str(tmp_path))
    assert f"max_requeues={slurm.MAX_REQUEUES}\n" in slurm.script_text(sub, 1, [0, 1])
    saved = {k: v for k, v in json.loads(json.dumps(sub.__dict__)).items() if k != "max_requeues"}
    slurm.folder(tmp_path).mkdir()
    (slurm.folder(tmp_path) / slurm.SUBMIT_FILE).write_text(json.dumps(saved))
    assert slurm.load(tmp_path).max_requeues == slurm.MAX_REQUEUES


def test_a_negative_cap_is_a_usage_error(tmp_path, records_file):
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({"fn": "jobs:digest", "input": str(records_file(10)), "key": "id"}))
    result = durabatch_cli("slurm", "submit", job, "--ranks", "1", "--run-dir", "r", "--max-requeues", "-1",
                           cwd=tmp_path, env=fake_slurm(tmp_path))
    assert result.returncode == 2 and "--max-requeues -1" in result.stderr, result.stderr
    assert calls(tmp_path, "sbatch") == []


def test_a_rank_stopping_early_requeues_itself_up_to_the_cap_then_says_how_to_continue(tmp_path, records_file):
    env, script = submit(tmp_path, records_file, "--max-requeues", "2")
    for restarts, requeues in ((None, 1), (1, 2)):  # first start, then the first requeue: below the cap
        result = run_element(tmp_path, script, env, restarts)
        assert result.returncode == 75, result.stdout + result.stderr
        assert "rank 0 exited 75" in result.stdout and "requeueing 4242_0" in result.stdout, result.stdout
        assert calls(tmp_path, "scontrol") == ["scontrol requeue 4242_0"] * requeues
    assert "stopped early (deadline)" in result.stderr  # the real durabatch run stopped, at the Slurm end time

    result = run_element(tmp_path, script, env, 2)  # requeued twice: at the cap
    assert result.returncode == 75, result.stdout + result.stderr
    assert "requeueing" not in result.stdout
    assert calls(tmp_path, "scontrol") == ["scontrol requeue 4242_0"] * 2  # not called again
    said = " ".join(result.stdout.split())
    assert "rank 0 stopped early and is not requeued: it has been requeued 2 times (--max-requeues 2)" in said
    assert f"to continue: durabatch slurm resubmit {tmp_path / 'runs' / 'x'}" in said


def test_a_cap_of_zero_never_requeues(tmp_path, records_file):
    env, script = submit(tmp_path, records_file, "--max-requeues", "0")
    result = run_element(tmp_path, script, env, None)
    assert result.returncode == 75, result.stdout + result.stderr
    assert "is not requeued: it has been requeued 0 times" in result.stdout
    assert calls(tmp_path, "scontrol") == []
