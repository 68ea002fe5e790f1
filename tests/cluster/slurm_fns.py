"""Job functions for tests/test_slurm.py, run by `durabatch run` inside Slurm jobs (this folder is on the job's
PYTHONPATH). SLURM_TEST_GATE: while that file exists every call takes SLURM_TEST_ITEM_SECONDS (default 0.05), so
that a rank is still running when the test signals or kills it; removing the file lets the rank finish at once."""

from __future__ import annotations

import hashlib
import os
import time


def digest(record: dict) -> dict:
    gate = os.environ.get("SLURM_TEST_GATE")
    if gate and os.path.exists(gate):
        time.sleep(float(os.environ.get("SLURM_TEST_ITEM_SECONDS", "0.05")))
    return {"digest": hashlib.blake2b(str(record["id"]).encode(), digest_size=8).hexdigest()}


def other_digest(record: dict) -> dict:
    """Another function: a job file naming it is a changed job."""
    return {"digest": str(record["id"])}
