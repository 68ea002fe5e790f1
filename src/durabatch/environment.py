"""The process environment, read in one place at the edge: the CLI, api.py, the supervisor and the Checkpointer
(a loop's own entry point) ask here; the core and the policies get plain values."""

from __future__ import annotations

import os
import subprocess
from datetime import datetime

SUPERVISED = "DURABATCH_SUPERVISED"  # set by the supervisor in its child: the child must not supervise again


def slurm_end_time() -> str | None:
    """Slurm's job end time (epoch seconds) inside a Slurm job: SLURM_JOB_END_TIME, or where Slurm does not export
    it (22.05) the job's EndTime from `squeue -h -j $SLURM_JOB_ID -o %e`. None outside Slurm, for a job without a
    time limit, or when squeue is missing or does not answer (a deadline is a help, never a reason to fail)."""
    exported = os.environ.get("SLURM_JOB_END_TIME")
    job_id, array_id = os.environ.get("SLURM_JOB_ID"), os.environ.get("SLURM_ARRAY_JOB_ID")
    if exported or not job_id:
        return exported
    if array_id:  # the first task's SLURM_JOB_ID is also the array's id, and squeue -j would list every task
        job_id = f"{array_id}_{os.environ.get('SLURM_ARRAY_TASK_ID')}"
    try:
        answer = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%e"], capture_output=True, text=True,
                                timeout=10).stdout.split()
        return str(int(datetime.fromisoformat(answer[0]).timestamp()))  # local time, like squeue prints it
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):  # no squeue or answer, NONE/Unknown
        return None


def supervised() -> bool:
    return bool(os.environ.get(SUPERVISED))


def variables() -> dict[str, str]:
    return dict(os.environ)


def named(names: list[str]) -> tuple[dict[str, str], list[str]]:
    """The values of the variables `names` that are set, and the names that are not."""
    return {n: os.environ[n] for n in names if n in os.environ}, [n for n in names if n not in os.environ]


SECRET_WORDS = ("KEY", "TOKEN", "SECRET", "PASSWORD")


def secret_values() -> dict[str, str]:
    """{name: value} of the variables whose name says they hold a secret (…KEY, …TOKEN, …SECRET, …PASSWORD):
    redacted from error messages and tracebacks before they are stored (errors.install_redaction)."""
    return {name: value for name, value in os.environ.items()
            if value and any(word in name.upper() for word in SECRET_WORDS)}
