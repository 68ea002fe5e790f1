"""Poison items: records whose processing kills the worker or the whole runner (a segfault, os.abort, the OOM
killer). A bash restart loop retries such an item forever; durabatch pins deaths on items and quarantines them.

- Every dispatched batch is journalled (core/journal.py). After an unclean death, the journal names the
  batches in flight.
- Their items become *suspects*: the next run sends them as one group (up to a commit's worth) with nothing
  else in flight, and commits it: after an external kill the replay costs about one batch's time instead of one
  call per suspect. A group that completes clears its members. A death during a group splits it: its members'
  cap (ledger meta `suspect_caps`) becomes 1, so they run alone next time. Splitting to singles at once, not
  in halves, keeps what a poison item costs at one death more than before (halving costs log2(n) deaths,
  each a restart that may reload a model), and a group death is rare unless an item is poison.
- A death while a suspect ran alone (a group of one) makes it *guilty* once more; guilty K times (default 3),
  it is quarantined with the reason, reported and skipped. A random external kill would have to land three
  times on the same item while it runs alone to quarantine an innocent.
- A worker process that dies is pinned exactly by the processes engine; the same count applies."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field

from .. import intervals
from ..errors import ErrorKind, command
from ..store.ledger import Failure, ItemState, Ledger
from ..store.rundir import RunDir
from .journal import unfinished
from .outcomes import INTERRUPTED
from .spec import Safety

CAPS = "suspect_caps"  # ledger meta: {position: largest group}, for suspects whose group killed a runner
SPLIT = 1  # the cap of a dead group's members: alone
NO_CAUSE = "the runner process died while running this item alone (cause not recorded: use --supervise to record it)"


@dataclass
class Review:
    suspects: set[int]
    quarantined: list[Failure]
    caps: dict[int, int] = field(default_factory=dict)  # suspect -> the largest group it may run in


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
    caps = {int(p): c for p, c in (ledger.get_meta(CAPS) or {}).items()}
    cause = death_cause(rd) if entries else ""
    for entry in entries:
        positions = intervals.expand([tuple(s) for s in entry["spans"]])
        if entry.get("group"):  # a group of suspects died: its members run alone next time
            for pos in positions:
                suspects.setdefault(pos, (None, 0, None))
                caps[pos] = SPLIT
        elif entry.get("solo"):
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
    caps = {p: c for p, c in caps.items() if p in remaining}
    ledger.set_meta(**{CAPS: {str(p): c for p, c in caps.items()}})
    if guilty:
        ledger.commit(None, guilty, run_id or 0)
    if entries:
        os.truncate(rd.inflight, 0)
    return Review(set(remaining), guilty, caps)


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


def after_last_run(safety: Safety, ledger: Ledger, rd: RunDir,
                   run_id: int) -> tuple[set[int], list[str], dict[int, int]]:
    """What the last run's death left: suspects to run in groups, their caps, and notes for
    the user (or, at most once, the interrupted items, never called again by themselves)."""
    if safety.at_most_once:
        lost = interrupted(ledger, rd, run_id)
        listing = command("export", rd.path, failed=True, to="failed.jsonl")
        return set(), [f"{len(lost)} item(s) were interrupted mid-call by the last run's end and will not be "
                       f"called again (at-most-once); see `{listing}`"] if lost else [], {}
    found = review(ledger, rd, safety.quarantine_after, run_id)
    notes = [f"quarantined {f.key!r} (position {f.pos}): {f.message}" for f in found.quarantined]
    if found.suspects:
        notes.append(f"{len(found.suspects)} item(s) were in flight when the last run died: running them in "
                     "a group with nothing else in flight (if it kills the runner, they run one at a time)")
    return found.suspects, notes, found.caps
