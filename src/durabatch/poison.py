"""Poison items: records whose processing kills the worker or the whole runner (a segfault, os.abort, the OOM
killer). A bash restart loop retries such an item forever; durabatch pins deaths on items and quarantines them.

- Every dispatched batch is journalled (one short line on dispatch, one on return; no fsync: the journal only has
  to survive the death of this process). After an unclean death, the journal names the batches in flight.
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

from . import intervals
from .engines import Batch
from .ledger import Failure, ItemState, Ledger, RunDir

NO_CAUSE = "the runner process died while running this item alone (cause not recorded: use --supervise to record it)"


class Journal:
    """durable=True (at-most-once mode) fsyncs each dispatch line: a "started" mark that survives power loss."""

    def __init__(self, path: os.PathLike, durable: bool = False):
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.durable = durable

    def dispatched(self, batch: Batch, solo: bool) -> None:
        ps = batch.positions
        if ps[-1] - ps[0] + 1 == len(ps) and ps == sorted(ps):  # a slice of the stream: one span, found in C
            spans = [(ps[0], ps[-1] + 1)]
        else:  # retries, suspects, fan-out segments (which share their document's position)
            spans = intervals.from_sorted(sorted(set(ps)))
        entry = {"b": batch.id, "spans": spans}
        if solo or len(batch.keys) == 1:
            entry["solo"] = solo
            entry["key"] = None if batch.keys[0] is None else str(batch.keys[0])
        os.write(self._fd, (json.dumps(entry, separators=(",", ":")) + "\n").encode())
        if self.durable:
            os.fsync(self._fd)

    def finished(self, batch: Batch) -> None:
        os.write(self._fd, f'{{"e":{batch.id}}}\n'.encode())

    def close(self, clean: bool) -> None:
        """A clean end resolved everything in flight (done, failed, or deliberately abandoned by a stop)."""
        if clean:
            os.ftruncate(self._fd, 0)
        os.close(self._fd)


@dataclass
class Review:
    suspects: set[int]
    quarantined: list[Failure]


def unfinished(path: os.PathLike, started: bool = False) -> list[dict]:
    """Journal entries dispatched and never finished (or, with started=True, every dispatch); a torn last line
    (death mid-write) is ignored."""
    try:
        text = open(path, encoding="utf-8").read()
    except FileNotFoundError:
        return []
    open_batches: dict[int, dict] = {}
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if "e" in entry:
            if not started:
                open_batches.pop(entry["e"], None)
        else:
            open_batches[entry["b"]] = entry
    return list(open_batches.values())


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
    guilty = [Failure(p, k, "Quarantined", f"{r} (died {g} times)", "", g, ItemState.QUARANTINED)
              for p, (k, g, r) in suspects.items() if p not in cleared and g >= quarantine_after]
    cleared |= {f.pos for f in guilty}
    remaining = {p: v for p, v in suspects.items() if p not in cleared}
    ledger.save_suspects(remaining, cleared)
    if guilty:
        ledger.commit(None, guilty, run_id or 0)
    if entries:
        os.truncate(rd.inflight, 0)
    return Review(set(remaining), guilty)


INTERRUPTED = ("the run stopped while this item's call was in progress: it may or may not have taken effect. "
               "At-most-once mode never calls it again by itself; `durabatch retry-failed --interrupted` does.")


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
                found[pos] = Failure(pos, key, "Interrupted", INTERRUPTED, "", 1, ItemState.INTERRUPTED)
    if found:
        ledger.commit(None, list(found.values()), run_id or 0)
    os.truncate(rd.inflight, 0)
    return list(found.values())


def worker_death_failure(pos: int, key: object, guilt: int, message: str) -> Failure:
    return Failure(pos, key, "Quarantined", f"{message} (died {guilt} times)", "", guilt, ItemState.QUARANTINED)


def record_death(rd: RunDir, cause: str) -> None:
    """Called by the supervisor after an abnormal exit: the next run quotes it when it quarantines an item."""
    rd.logs.mkdir(parents=True, exist_ok=True)
    rd.last_death.write_text(json.dumps({"cause": cause, "at": time.time()}))
