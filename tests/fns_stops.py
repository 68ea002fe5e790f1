"""User functions for tests/test_stops.py and tests/test_failfast.py (`--fn fns_stops:NAME`; module level, so that
spawned worker processes import them too). Tuned by environment variables, which are not part of the fingerprint.

STOPS_FROM: ids from this one on get stuck (default: none). STOPS_MARKS: a folder where a stuck call first writes
a file named after its process id and item id (the tests' evidence that a call is stuck, and which process)."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from jobs import digest

CATASTROPHIC = re.compile(r"(a+)+$")  # on "aaa...ab" this backtracks for ages, holding the GIL all along


def _stuck(record: dict) -> bool:
    if record["id"] < int(os.environ.get("STOPS_FROM", "1000000000")):
        time.sleep(float(os.environ.get("STOPS_ITEM_SECONDS", "0")))  # a little work, so that commits happen first
        return False
    marks = os.environ.get("STOPS_MARKS")
    if marks:
        (Path(marks) / f"{os.getpid()}-{record['id']}").touch()
    return True


def sleeps_from(record: dict) -> dict:
    """Stuck in C code that releases the GIL (a sleep, like a socket read or a numpy call)."""
    if _stuck(record):
        time.sleep(float(os.environ.get("STOPS_SECONDS", "600")))
    return digest(record)


def regex_from(record: dict) -> dict:
    """Stuck in C code that holds the GIL: a catastrophic regular expression (about 2**45 steps)."""
    if _stuck(record):
        CATASTROPHIC.match("a" * 45 + "b")
    return digest(record)


def wrong_key(record: dict) -> dict:
    """Every item fails the same way: a typo in a field name."""
    return {"n": record["idd"]}


def fails_every_third(record: dict) -> dict:
    """Failures with successes between them: never a long run of the same failure."""
    if record["id"] % 3 == 0:
        raise ValueError(f"bad {record['id']}")
    return digest(record)


def alternating_errors(record: dict) -> dict:
    """Everything fails, but with two different errors in turn."""
    if record["id"] % 2:
        raise ValueError("odd")
    raise KeyError("even")


_calls: dict[int, int] = {}


def flaky_once(record: dict) -> dict:
    """Each item fails with a transient error on its first attempt, then succeeds (retries, never final)."""
    _calls[record["id"]] = _calls.get(record["id"], 0) + 1
    if _calls[record["id"]] == 1:
        raise ConnectionError("try again")
    return digest(record)
