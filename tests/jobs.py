"""User functions for the subprocess tests: `--fn jobs:NAME` (conftest puts this directory on PYTHONPATH).

Module-level functions only, so that spawned worker processes (`--engine processes`) can import them too. Speed is
tuned through environment variables, which are not part of a job's fingerprint: the same job can be run slow (so
that a kill lands mid-run) and then fast (to finish it)."""

from __future__ import annotations

import hashlib
import os
import time


def blake(value: object) -> str:
    """The value every test compares against: blake2b of the key's text, as a reference loop computes it."""
    return hashlib.blake2b(str(value).encode(), digest_size=16).hexdigest()


def digest(record: dict) -> dict:
    """Per-record: a blake2b hash of the id."""
    return {"digest": blake(record["id"])}


def digest_batch(records: list[dict]) -> list[dict]:
    """Batch version of digest()."""
    return [digest(r) for r in records]


def _pause(seconds: float) -> None:
    if seconds > 0:
        time.sleep(seconds)


def slow_digest(record: dict) -> dict:
    """digest() after a short sleep (JOBS_ITEM_SECONDS, default 0.5 ms), so a 20,000-item job runs for seconds."""
    _pause(float(os.environ.get("JOBS_ITEM_SECONDS", "0.0005")))
    return digest(record)


def slow_digest_batch(records: list[dict]) -> list[dict]:
    """digest_batch() after a sleep per record (JOBS_ITEM_SECONDS, default 0.5 ms)."""
    _pause(float(os.environ.get("JOBS_ITEM_SECONDS", "0.0005")) * len(records))
    return digest_batch(records)


def stuck_from(record: dict) -> dict:
    """Fast for ids below JOBS_STUCK_FROM, then JOBS_STUCK_SECONDS per item (default: never stuck): a job that
    commits some work and then sits in long calls, for the grace-period tests. Entering a long call touches the
    file JOBS_STUCK_MARK, if set."""
    if record["id"] >= int(os.environ.get("JOBS_STUCK_FROM", "1000000000")):
        mark = os.environ.get("JOBS_STUCK_MARK")
        if mark:
            open(mark, "a").close()
        _pause(float(os.environ.get("JOBS_STUCK_SECONDS", "0")))
    return digest(record)


def echo(record: dict) -> dict:
    """The record's text and its digest: shows which of two rows with the same key was run."""
    return {"text": record.get("text"), "digest": blake(record["id"])}


class SlowSetup:
    """A class whose setup() takes JOBS_SETUP_SECONDS (a model loading) and first touches JOBS_SETUP_MARK. With
    JOBS_SETUP_GATE set, setup() ends as soon as that file exists (JOBS_SETUP_SECONDS is then only its cap): a
    setup that is certainly still running until the test lets it finish, however fast or slow the machine."""

    def setup(self) -> None:
        mark = os.environ.get("JOBS_SETUP_MARK")
        if mark:
            open(mark, "a").close()
        seconds = float(os.environ.get("JOBS_SETUP_SECONDS", "0"))
        gate = os.environ.get("JOBS_SETUP_GATE")
        if not gate:
            _pause(seconds)
            return
        deadline = time.monotonic() + seconds
        while not os.path.exists(gate) and time.monotonic() < deadline:
            time.sleep(0.01)

    def __call__(self, record: dict) -> dict:
        return digest(record)


def gated(record: dict) -> dict:
    """digest(), but calls for ids from JOBS_GATE_FROM on wait until the file JOBS_GATE exists: a run that is
    certainly still running until the test lets it finish, however fast or slow the machine."""
    gate = os.environ.get("JOBS_GATE")
    if gate and record["id"] >= int(os.environ.get("JOBS_GATE_FROM", "0")):
        while not os.path.exists(gate):
            time.sleep(0.01)
    return digest(record)
