"""Functions for the warm-stop tests (async, and a sync one for the threads engine): each call leaves a line in
CALLS_FILE (evidence that calls run)."""

from __future__ import annotations

import os


async def noted(record: dict) -> dict:
    with open(os.environ["CALLS_FILE"], "a") as f:
        f.write(f"{record['id']}\n")
    return {"id2": record["id"] * 2}


async def gated(record: dict) -> dict:
    """A call that stays in flight until RELEASE_FILE exists (a slow provider the test controls)."""
    import asyncio

    with open(os.environ["CALLS_FILE"], "a") as f:
        f.write(f"{record['id']}\n")
    while not os.path.exists(os.environ["RELEASE_FILE"]):
        await asyncio.sleep(0.02)
    return {"id2": record["id"] * 2}


def noted_sync(record: dict) -> dict:
    with open(os.environ["CALLS_FILE"], "a") as f:
        f.write(f"{record['id']}\n")
    return {"id2": record["id"] * 2}
