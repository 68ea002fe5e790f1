"""The dispatch journal: one short line when a batch goes to the engine, one when it comes back (no fsync: it
only has to survive the death of this process; fsynced per line in at-most-once mode, where it is the durable
"started" mark). After an unclean death it names the batches that were in flight (core/quarantine.py)."""

from __future__ import annotations

import json
import os

from .. import intervals
from ..engines.base import Batch


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
        entry: dict = {"b": batch.id, "spans": spans}
        if solo and len(batch.keys) > 1:  # a group of suspects with nothing else in flight
            entry["group"] = True
        elif solo or len(batch.keys) == 1:
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
