"""Functions for tests/test_ray_direct.py (importable on the Ray nodes: tests/ is on their PYTHONPATH)."""

from __future__ import annotations

import random
import time


def heavy(record: dict, kb: int = 64, seconds: float = 0.0) -> dict:
    """`kb` KB of incompressible bytes, the same for the same item whatever the engine (seeded by its id)."""
    time.sleep(seconds)
    return {"n": record["id"], "blob": random.Random(record["id"]).randbytes(kb * 1024)}


def int_then_text(record: dict, seconds: float = 0.0) -> dict:
    """Field "v" is a number for ids below 30, text from 30 on: one type per field, the rest fail."""
    time.sleep(seconds)
    return {"v": record["id"] if record["id"] < 30 else f"id-{record['id']}"}


def digest(record: dict, seconds: float = 0.0) -> dict:
    """A heavy input's summary: its blob's length and hash (the record must have been read whole)."""
    import hashlib

    time.sleep(seconds)
    return {"n": len(record["blob"]), "sha": hashlib.sha256(record["blob"]).hexdigest()[:16]}


def text_length(record: dict, seconds: float = 0.0) -> dict:
    time.sleep(seconds)
    return {"chars": len(record["text"])}
