"""Poison items: records whose processing kills the worker or the whole runner (a segfault, os.abort, the OOM
killer). A bash restart loop retries such an item forever; durabatch pins deaths on items and quarantines them.

- Every dispatched batch is journalled (core/journal.py). After an unclean death, the journal names the
  batches in flight.
- Their items become *suspects*: the next run sends each suspect alone, with nothing else in flight.
- A death while a suspect ran alone makes it *guilty* once more; guilty K times (default 3), it is quarantined
  with the reason, reported and skipped. A random external kill would have to land three times on the same
  item while it runs alone to quarantine an innocent.
- A worker process that dies is pinned exactly by the processes engine; the same count applies."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

from .. import intervals
from ..errors import ErrorKind
from ..store.ledger import Failure, ItemState, Ledger
from ..store.rundir import RunDir
from .journal import unfinished
from .outcomes import INTERRUPTED

NO_CAUSE = "the runner process died while running this item alone (cause not recorded: use --supervise to record it)"


@dataclass
class Review:
    suspects: set[int]
    quarantined: list[Failure]


def death_cause(rd: RunDir) -> str:
    try:
        info = json.loads(rd.last_death.read_text())
    except (FileNotFoundError, ValueError):
        return NO_CAUSE
    return f"the runner died while running this item alone: {info.get('cause', 'unknown cause')}"


def review(ledger: Ledger, rd: RunDir, quarantine_after: int, run_id: int | None) -> Review:
    """After an unclean death: update suspects and guilt from the journal, quarantine the guilty."""
    entries = unfinished(rd.inflight)
    suspects = ledger.suspects()
    if not entries and not suspects:
        return Review(set(), [])
    cause = death_cause(rd) if entries else ""
    for entry in entries:
        positions = intervals.expand([tuple(s) for s in entry["spans"]])
        if entry.get("solo"):
            key, guilt, _ = suspects.get(positions[0], (None, 0, None))
            suspects[positions[0]] = (key or entry.get("key"), guilt + 1, cause)
        else:
            for pos in positions:
                suspects.setdefault(pos, (None, 0, None))
    done = intervals.Intervals(ledger.done_spans())
    finished = ledger.failed_positions()
    cleared = {p for p in suspects if p in done or p in finished}
    guilty = [Failure(p, k, ErrorKind.QUARANTINED, f"{r} (died {g} times)", "", g, ItemState.QUARANTINED)
              for p, (k, g, r) in suspects.items() if p not in cleared and g >= quarantine_after]
    cleared |= {f.pos for f in guilty}
    remaining = {p: v for p, v in suspects.items() if p not in cleared}
    ledger.save_suspects(remaining, cleared)
    if guilty:
        ledger.commit(None, guilty, run_id or 0)
    if entries:
        os.truncate(rd.inflight, 0)
    return Review(set(remaining), guilty)


def interrupted(ledger: Ledger, rd: RunDir, run_id: int | None) -> list[Failure]:
    """At-most-once mode: every dispatched item that has no committed outcome is interrupted, not retried."""
    entries = unfinished(rd.inflight, started=True)
    if not entries:
        return []
    done = intervals.Intervals(ledger.done_spans())
    finished = ledger.failed_positions()
    found: dict[int, Failure] = {}
    for entry in entries:
        for pos in intervals.expand([tuple(s) for s in entry["spans"]]):
            if pos not in done and pos not in finished:
                key = entry.get("key")  # present for single-item batches, as at-most-once sends
                found[pos] = Failure(pos, key, ErrorKind.INTERRUPTED, INTERRUPTED, "", 1, ItemState.INTERRUPTED)
    if found:
        ledger.commit(None, list(found.values()), run_id or 0)
    os.truncate(rd.inflight, 0)
    return list(found.values())


def worker_death_failure(pos: int, key: object, guilt: int, message: str) -> Failure:
    return Failure(pos, key, ErrorKind.QUARANTINED, f"{message} (died {guilt} times)", "", guilt, ItemState.QUARANTINED)


def record_death(rd: RunDir, cause: str) -> None:
    """Called by the supervisor after an abnormal exit: the next run quotes it when it quarantines an item."""
    rd.logs.mkdir(parents=True, exist_ok=True)
    rd.last_death.write_text(json.dumps({"cause": cause, "at": time.time()}))
