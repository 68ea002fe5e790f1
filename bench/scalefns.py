"""The functions bench/scaleout.py runs (`--fn scalefns:...`, with this folder on PYTHONPATH on the driver and the
Ray nodes)."""

from __future__ import annotations

import os
import random
import time


def sleepy_batch(records: list[dict], seconds: float = 0.05, stamps: str = "") -> list[dict]:
    """A GPU-like batch call: `seconds` per call whatever its size. Appends "start end items" to a file per process
    in `stamps`, so the bench measures the span of the work itself (not process or actor start-up)."""
    t0 = time.time()
    time.sleep(seconds)
    if stamps:
        with open(os.path.join(stamps, str(os.getpid())), "a") as f:
            f.write(f"{t0} {time.time()} {len(records)}\n")
    return [{"out": r["id"] * 2} for r in records]


def trivial(record: dict) -> dict:
    """Next to no work: what the driver can move, not what the function costs."""
    return {"out": record["id"] * 2}


def bulky(record: dict, kb: int = 64) -> dict:
    """`kb` KB of incompressible bytes per item: what the driver moves when outputs are heavy."""
    return {"blob": random.randbytes(kb * 1024)}


def digest(record: dict) -> dict:
    """A heavy input row's summary (its blob must have been read whole): no other work."""
    import hashlib

    return {"sha": hashlib.sha256(record["blob"]).hexdigest()[:16]}
