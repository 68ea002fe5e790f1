"""Functions for the Ray engine tests. With `evidence` (a folder) each call leaves a line naming the item in a file
per node and process (DURABATCH_TEST_NODE is set per node by tests/cluster/ray_cluster.py): the tests wait for
that evidence, and see where items ran. Params, not environment variables: Ray workers get the node's environment,
not the driver's."""

from __future__ import annotations

import hashlib
import os
import signal
import time


def _mark(record: dict, evidence: str | None) -> None:
    if evidence:
        name = f"{os.environ.get('DURABATCH_TEST_NODE', 'driver')}.{os.getpid()}"
        with open(os.path.join(evidence, name), "a") as f:
            f.write(f"{record['id']}\n")


def digest(record: dict, seconds: float = 0.0, evidence: str | None = None) -> dict:
    _mark(record, evidence)
    time.sleep(seconds)
    return {"digest": hashlib.blake2b(str(record["id"]).encode(), digest_size=8).hexdigest()}


def crashes_on_13(record: dict, seconds: float = 0.0, evidence: str | None = None) -> dict:
    """Item 13 kills its actor's process (as a segfault would); its node stays alive."""
    if record["id"] == 13:
        os.kill(os.getpid(), signal.SIGKILL)
    return digest(record, seconds, evidence)


def environment(record: dict) -> dict:
    """What the actor's environment holds: DURABATCH_TEST_SECRET (set only in the driver's) and its node's name."""
    return {"secret": os.environ.get("DURABATCH_TEST_SECRET"), "node": os.environ.get("DURABATCH_TEST_NODE")}
