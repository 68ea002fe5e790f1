"""The function bench/chaos.py runs in its supervised subprocess (`--fn chaosfns:counted_digest`, with this folder
on PYTHONPATH): a digest of the id that logs each execution, so the bench can count items run more than once."""

from __future__ import annotations

import hashlib
import os
import time


def digest(record: dict) -> dict:
    """The reference result for a record: what a plain loop computes."""
    return {"digest": hashlib.blake2b(str(record["id"]).encode(), digest_size=8).hexdigest()}


def counted_digest(record: dict) -> dict:
    """digest() after ITEM_SECONDS of work, appending the id to EXECUTIONS_FILE (O_APPEND: one atomic line per
    execution, across the runner's restarts)."""
    time.sleep(float(os.environ.get("ITEM_SECONDS", "0.0002")))
    fd = os.open(os.environ["EXECUTIONS_FILE"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, f"{record['id']}\n".encode())
    os.close(fd)
    return digest(record)
