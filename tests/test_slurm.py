"""`durabatch slurm submit | resubmit` on a real single-node Slurm (issue 11 item 3).

The module starts its own cluster (tests/cluster/slurm.sh: Debian's slurm-wlm and munge, installed by that script
when missing; a private munge key and socket, slurm.conf, state and ports on 127.0.0.1) and stops it at the end.
The job functions are tests/cluster/slurm_fns.py; a "gate" file keeps a rank busy until the test removes it.
Every wait is for evidence (a line in a rank's output, a ledger count, squeue's answer), never a fixed time."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pyarrow
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import committed_rows, durabatch_cli, log_has, wait_until

from durabatch import environment, export
from durabatch.slurm import array_spec
from durabatch.store.rundir import RunDir, lock_holder

CLUSTER = Path(__file__).parent / "cluster"
BOUND = 120  # "eventually", on a loaded 2-core machine


@pytest.fixture(scope="module")
def slurm(tmp_path_factory) -> dict:
    """A private cluster for this module: {"SLURM_CONF": ...}, the environment Slurm's commands need."""
    if os.geteuid() != 0:
        pytest.fail("the Slurm tests run their own slurmd, which needs root (run them as root, or in CI)")
    if not shutil.which("slurmctld"):
        done = subprocess.run(["bash", CLUSTER / "slurm.sh", "install"], capture_output=True, text=True,
                              timeout=900)
        assert done.returncode == 0, f"installing slurm-wlm and munge failed:\n{done.stdout}{done.stderr}"
    folder = tmp_path_factory.mktemp("slurm")
    started = subprocess.run(["bash", CLUSTER / "slurm.sh", "start", folder], capture_output=True, text=True,
                             timeout=300)
    if started.returncode != 0:
        logs = "".join(f"--- {p.name}\n{p.read_text()[-1500:]}" for p in sorted((folder / "log").glob("*")))
        subprocess.run(["bash", CLUSTER / "slurm.sh", "stop", folder], timeout=120)
        pytest.fail(f"the private Slurm did not start: {started.stderr}\n{logs}")
    yield {"SLURM_CONF": str(folder / "etc" / "slurm.conf")}
    subprocess.run(["bash", CLUSTER / "slurm.sh", "stop", folder], timeout=120)


def slurm_cmd(env: dict, *args: str) -> str:
    """A Slurm command's stdout ("" when it fails: e.g. a job Slurm no longer knows)."""
    return subprocess.run(args, env={**os.environ, **env}, capture_output=True, text=True, timeout=60).stdout


def wait_ended(env: dict, job: str) -> None:
    """Until squeue answers that no task of `job` is pending, running or completing (its default listing)."""

    def ended() -> bool:
        answer = subprocess.run(["squeue", "-h", "-j", job, "-o", "%i %T"], env={**os.environ, **env},
                                capture_output=True, text=True, timeout=60)
        return answer.returncode == 0 and not answer.stdout.strip()  # not an unanswered query (a busy slurmctld)

    wait_until(ended, timeout=BOUND, interval=0.2, what=f"Slurm job {job} to end")


def make_job(tmp_path: Path, records_file, n: int, fn: str = "slurm_fns:digest") -> Path:
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({"fn": fn, "input": str(records_file(n)), "key": "id", "run_dir": "runs/x",
                                   "progress": "off", "commit_every": 10, "commit_seconds": 0.2,
                                   "grace_seconds": 20}))
    return job


def durabatch(env: dict, tmp_path: Path, *args) -> subprocess.CompletedProcess:
    """The CLI as a user runs it; sbatch hands this environment (PYTHONPATH, the gate) on to the jobs."""
    gate = {"SLURM_TEST_GATE": str(tmp_path / "gate")}
    return durabatch_cli(*args, cwd=tmp_path, extra_path=CLUSTER, env={**env, **gate})


def submitted(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return re.search(r"submitted Slurm job (\d+)", result.stdout).group(1)


def exported(run_dir: Path) -> pyarrow.Table:
    """The merged export (in this process: the CLI's own export is tested elsewhere)."""
    out = run_dir.parent / f"{run_dir.name}.parquet"
    export(run_dir, out)
    return pq.read_table(out)


def rank_out(tmp_path: Path, rank: int) -> str:
    path = tmp_path / "runs" / "x" / "slurm" / f"rank-{rank}.out"
    return path.read_text() if path.exists() else ""


def rank_dir(tmp_path: Path, rank: int) -> Path:
    return tmp_path / "runs" / "x" / "ranks" / f"{rank}-of-2"


def test_array_spec_writes_runs_as_ranges():
    assert array_spec(list(range(64)), 16) == "0-63%16"
    assert array_spec([7, 3], 16) == "3,7%2"
    assert array_spec([0, 1, 2, 5, 7, 8], 4) == "0-2,5,7-8%4"


def test_no_squeue_means_no_slurm_deadline_not_an_error(tmp_path, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_END_TIME", raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "123")
    monkeypatch.setenv("PATH", str(tmp_path))  # no squeue here
    assert environment.slurm_end_time() is None
    monkeypatch.setenv("SLURM_JOB_END_TIME", "1900000000")  # exported by newer Slurm: used as it is
    assert environment.slurm_end_time() == "1900000000"


def test_resubmit_without_a_submission_is_a_usage_error(tmp_path):
    result = durabatch_cli("slurm", "resubmit", tmp_path / "nothing", cwd=tmp_path)
    assert result.returncode == 2
    assert "no Slurm submission here" in result.stderr and "durabatch slurm submit" in result.stderr


@pytest.mark.slow  # a real Slurm cluster (started once for the module)
def test_two_rank_array_exports_what_the_inline_run_gives(slurm, tmp_path, records_file):
    job = make_job(tmp_path, records_file, 300)
    result = durabatch(slurm, tmp_path, "slurm", "submit", job, "--ranks", "2", "--parallel", "2",
                       "--time", "00:10:00", "--partition", "debug", "--sbatch-arg=--comment=durabatch-test")
    job_id = submitted(result)
    assert "durabatch slurm resubmit" in result.stdout  # what to run next
    script = tmp_path / "runs" / "x" / "slurm" / "submit-1.sh"
    text = script.read_text()
    for directive in ("--array=0-1%2", "--requeue", "--signal=B:USR1@120", "--time=00:10:00", "--partition=debug",
                      "--comment=durabatch-test"):
        assert f"#SBATCH {directive}\n" in text
    assert 'scontrol requeue "${SLURM_ARRAY_JOB_ID}_$rank"' in text
    assert subprocess.run(["bash", "-n", script]).returncode == 0
    wait_ended(slurm, job_id)
    for rank in (0, 1):
        assert f"rank {rank} exited 0" in rank_out(tmp_path, rank), rank_out(tmp_path, rank)
        # Slurm 22.05 does not export SLURM_JOB_END_TIME: the deadline came from squeue
        log = rank_dir(tmp_path, rank) / "logs" / "run.log"
        assert log_has(log, "deadline: the Slurm job's end time"), log.read_text()

    inline = durabatch_cli("run", job, "--run-dir", tmp_path / "inline", cwd=tmp_path, extra_path=CLUSTER)
    assert inline.returncode == 0, inline.stderr
    ranked, alone = exported(tmp_path / "runs" / "x"), exported(tmp_path / "inline")
    assert ranked.num_rows == 300 and ranked.equals(alone)

    again = durabatch(slurm, tmp_path, "slurm", "submit", job, "--ranks", "2")
    assert again.returncode == 2 and "durabatch slurm resubmit" in again.stderr
    nothing = durabatch(slurm, tmp_path, "slurm", "resubmit", "runs/x")
    assert nothing.returncode == 0 and "all 2 ranks are finished" in nothing.stdout
    assert not (tmp_path / "runs" / "x" / "slurm" / "submit-2.sh").exists()


@pytest.mark.slow  # a real Slurm cluster (started once for the module)
def test_usr1_stops_warm_and_requeues_only_that_element(slurm, tmp_path, records_file):
    job = make_job(tmp_path, records_file, 400)
    (tmp_path / "gate").touch()  # every call takes 50 ms until the gate goes
    job_id = submitted(durabatch(slurm, tmp_path, "slurm", "submit", job, "--ranks", "2"))
    wait_until(lambda: committed_rows(rank_dir(tmp_path, 0)) > 0, timeout=BOUND, what="rank 0 committing")

    # What Slurm does `grace` seconds before the time limit: USR1 to the batch shell of that element only
    slurm_cmd(slurm, "scancel", "--signal=USR1", "--batch", f"{job_id}_0")
    wait_until(lambda: "requeueing" in rank_out(tmp_path, 0), timeout=BOUND, what="rank 0 to requeue itself")
    wait_until(lambda: slurm_cmd(slurm, "squeue", "-h", "-j", f"{job_id}_0", "-o", "%T").strip() == "PENDING",
               timeout=BOUND, interval=0.2, what="rank 0 pending again")
    early = durabatch(slurm, tmp_path, "slurm", "resubmit", "runs/x")  # rank 0 is queued: not submitted twice
    assert early.returncode == 0 and "still queued or running: left alone" in early.stdout, early.stdout
    assert not (tmp_path / "runs" / "x" / "slurm" / "submit-2.sh").exists()
    (tmp_path / "gate").unlink()
    slurm_cmd(slurm, "scontrol", "update", f"JobId={job_id}_0", "StartTime=now")  # skip the 2-minute wait
    wait_ended(slurm, job_id)

    first, _, second = rank_out(tmp_path, 0).partition("restart 1")
    assert "stopped early (SIGUSR1)" in first and "rank 0 exited 75" in first
    assert re.search(r"resuming: \d+ items already done", second) and "rank 0 exited 0" in second
    other = rank_out(tmp_path, 1)
    assert "restart 1" not in other and "USR1" not in other and other.count("rank 1 exited 0") == 1
    assert exported(tmp_path / "runs" / "x").column("id").to_pylist() == list(range(400))


@pytest.mark.slow  # a real Slurm cluster (started once for the module)
def test_killed_rank_is_the_only_one_resubmitted_and_a_changed_job_is_refused(slurm, tmp_path, records_file):
    job = make_job(tmp_path, records_file, 400)
    (tmp_path / "gate").touch()
    job_id = submitted(durabatch(slurm, tmp_path, "slurm", "submit", job, "--ranks", "2"))
    wait_until(lambda: committed_rows(rank_dir(tmp_path, 1)) > 0, timeout=BOUND, what="rank 1 committing")
    os.kill(lock_holder(RunDir(rank_dir(tmp_path, 1))), signal.SIGKILL)
    wait_until(lambda: "rank 1 exited 137" in rank_out(tmp_path, 1), timeout=BOUND, what="rank 1's death")
    (tmp_path / "gate").unlink()
    wait_ended(slurm, job_id)
    assert "requeueing" not in rank_out(tmp_path, 1)  # killed is not a warm stop: resubmit decides
    status = durabatch_cli("status", "runs/x", cwd=tmp_path).stdout
    assert "rank 0: finished" in status and "rank 1: finished" not in status

    # The job file changed (another function): rank 1's ledger refuses it, visibly
    original = job.read_text()
    job.write_text(original.replace("slurm_fns:digest", "slurm_fns:other_digest"))
    result = durabatch(slurm, tmp_path, "slurm", "resubmit", "runs/x")
    changed_id = submitted(result)
    assert "ranks 1 of 2" in result.stdout
    assert "#SBATCH --array=1%1\n" in (tmp_path / "runs" / "x" / "slurm" / "submit-2.sh").read_text()
    wait_ended(slurm, changed_id)
    assert "holds a different job; refusing" in rank_out(tmp_path, 1) and "rank 1 exited 2" in rank_out(tmp_path, 1)
    assert "ExitCode=2:0" in slurm_cmd(slurm, "scontrol", "show", "job", changed_id)
    assert "rank 1: finished" not in durabatch_cli("status", "runs/x", cwd=tmp_path).stdout

    # The original job again: only rank 1 runs, and the export holds every key once
    job.write_text(original)
    wait_ended(slurm, submitted(durabatch(slurm, tmp_path, "slurm", "resubmit", "runs/x")))
    assert "rank 1 exited 0" in rank_out(tmp_path, 1).rpartition("restart 0")[2]
    assert rank_out(tmp_path, 0).count("rank 0 of 2") == 1  # rank 0 never ran again
    assert exported(tmp_path / "runs" / "x").column("id").to_pylist() == list(range(400))
