"""The engine contract: what the core calls, and the batches that cross it. Every engine (inline, threads,
processes, asyncio, Ray) implements the same protocol; the runner does not change."""

from __future__ import annotations

import queue
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ..errors import ErrorKind, ItemError
from .user_fn import Work


@dataclass(slots=True)
class Batch:
    """Records to run together. `positions` and `keys` stay with the runner's copy; engines only need records."""

    id: int
    positions: list[int]
    keys: list[Any]
    records: Sequence[dict]  # a list, or ArrowRecords (columns mode)
    attempt: int = 1
    solo: bool = False  # one suspect item, run alone to find out whether it kills its worker


@dataclass(slots=True)
class BatchResult:
    batch: Batch
    outputs: Sequence[Any]  # aligned with batch.records; None where failed (ArrowRecords: all succeeded)
    errors: dict[int, ItemError]  # index in the batch -> error
    seconds: float
    note: str | None = None  # e.g. the batch function ran out of memory and continues with smaller batches
    written: Any = None  # (ShardRecord | None, {index: why its result's type was refused}, field types) when the
    # worker wrote the batch's shard itself (Ray, ray_shards "actors"): outputs are then all None

    def only(self, rows: list[int]) -> BatchResult:
        """This result for some of its batch's rows (indexes), in that order."""
        b = self.batch
        part = Batch(b.id, [b.positions[i] for i in rows], [b.keys[i] for i in rows], [b.records[i] for i in rows],
                     b.attempt, b.solo)
        index = {i: j for j, i in enumerate(rows)}
        return BatchResult(part, [self.outputs[i] for i in rows],
                           {index[i]: e for i, e in self.errors.items() if i in index}, self.seconds, self.note)


def drain(done: queue.Queue, timeout: float) -> list[BatchResult]:
    """Everything finished: waiting up to `timeout` for the first result, then taking whatever else is there."""
    results = []
    try:
        results.append(done.get(timeout=timeout) if timeout > 0 else done.get_nowait())
        while True:
            results.append(done.get_nowait())
    except queue.Empty:
        pass
    return results


class ResultQueue:
    """Finished batches handed from worker threads (or an event loop) to the runner's thread: the poll() and
    in_flight() of the engines whose workers live in this process."""

    def __init__(self) -> None:
        self._done: queue.Queue = queue.Queue()
        self._in_flight = 0

    def poll(self, timeout: float) -> list[BatchResult]:
        results = drain(self._done, timeout)
        self._in_flight -= len(results)
        return results

    def in_flight(self) -> int:
        return self._in_flight


# Not a failure: the next run does the item.
NOT_STARTED = ItemError(ErrorKind.NOT_STARTED, "not started: the run was stopping", "")


class Engine(Protocol):
    """All the core calls. Engines execute; they never touch the ledger (only the core commits)."""

    slots: int
    """How many batches may be in flight at once; the runner never submits more."""
    pins_deaths: bool
    """True when a worker's death is reported on exactly the batch it ran (separate processes): then a suspect
    may run alone while other batches are in flight. Otherwise a suspect runs with nothing else in flight."""
    # Optional: `batch_seconds: float`, the work per batch of a per-record function the engine asks for (read with
    # getattr by the runner; 0.02 s when absent). Remote engines (Ray) ask for more, to amortise each call.

    def start(self, work: Work) -> None:
        """Prepare workers (each runs work.prepare() once). May raise ConfigError for unusable work."""

    def submit(self, batch: Batch) -> None:
        """Hand a batch over; must not block for long. Called only while fewer than `slots` are in flight."""

    def poll(self, timeout: float) -> list[BatchResult]:
        """Finished batches, waiting up to `timeout` seconds for the first one. Every submitted batch comes back
        exactly once: with outputs, or with an error for each item (e.g. a worker that died)."""

    def in_flight(self) -> int:
        """Submitted batches not yet returned by poll()."""

    def stop_starting(self) -> None:
        """A stop was asked for: calls not yet started should not start (they come back as NotStarted, and the
        next run does them). Engines that cannot tell started from queued calls do nothing."""

    def close(self, cancel: bool = False) -> None:
        """Release workers. cancel=True abandons in-flight batches (a second Ctrl-C) instead of waiting."""
