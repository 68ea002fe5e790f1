"""What becomes of each item of a batch that came back with errors: pure decisions, no I/O, no state.

    done          the item succeeded (its neighbours failed)
    retry         a transient error with attempts left: run again after a delay
    run_alone     the worker died (or stalled) under a batch of several: run each item alone to find the culprit
    retry         also: the worker was lost with its node or actor (WorkerLost): not the item's fault, no delay,
                  no guilt, batched again with the other retries
    redo          not a failure: never started because the run stopped, or died while the run stops; next run
    failed        recorded as failed (`retry-failed` puts it back)
    quarantined   killed its worker K times running alone
    interrupted   at-most-once: the call may have happened; never called again by itself

The runner (core/runner.py) applies them: to the pending commit, the dispatch queue, the guilt counts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum

from ..engines.base import Batch
from ..errors import ErrorKind, ItemError
from ..policies.retry import RetryPolicy
from ..store.ledger import Failure, ItemState

DEATHS = (ErrorKind.WORKER_DIED, ErrorKind.ITEM_TIMEOUT)
INTERRUPTED = ("the run stopped while this item's call was in progress: it may or may not have taken effect. "
               "At-most-once mode never calls it again by itself; `durabatch retry-failed --interrupted` does.")
ABANDONED = ("the run stopped and this item's call did not return (past the grace period, or on a second signal): "
             "abandoned, it may or may not have taken effect")


class Action(Enum):
    DONE = "done"
    RETRY = "retry"
    RUN_ALONE = "run_alone"
    REDO = "redo"
    FAILED = "failed"
    QUARANTINED = "quarantined"
    INTERRUPTED = "interrupted"


@dataclass(frozen=True, slots=True)
class Outcome:
    action: Action
    error: ItemError | None = None
    delay: float = 0.0  # retry: seconds to wait first
    guilt: int = 0  # deaths pinned on the item so far, when its worker died under it alone


@dataclass(frozen=True)
class Rules:
    retry: RetryPolicy
    at_most_once: bool = False
    quarantine_after: int = 3


DONE = Outcome(Action.DONE)
RUN_ALONE = Outcome(Action.RUN_ALONE)
REDO = Outcome(Action.REDO)


def decide(errors: Mapping[int, ItemError], positions: Sequence[int], attempt: int, rules: Rules,
           stopping: bool, guilt: Mapping[int, int]) -> list[Outcome]:
    """One outcome per item of a batch (aligned with positions). `guilt`: deaths pinned on positions earlier in
    this run; `stopping`: a stop was requested, so nothing is queued again."""
    if rules.at_most_once and any(e.error_type in DEATHS or e.error_type == ErrorKind.WORKER_LOST
                                  for e in errors.values()):
        # The call may have happened: never again by itself, whatever the error says.
        return [Outcome(Action.INTERRUPTED, errors[i]) if i in errors else DONE for i in range(len(positions))]
    if len(positions) > 1 and all(e.error_type in DEATHS for e in errors.values()):
        return [RUN_ALONE] * len(positions)  # the worker died under the whole batch: find the culprit
    return [_one(errors.get(i), pos, attempt, rules, stopping, guilt) for i, pos in enumerate(positions)]


def _one(error: ItemError | None, pos: int, attempt: int, rules: Rules, stopping: bool,
         guilt: Mapping[int, int]) -> Outcome:
    if error is None:
        return DONE
    if error.error_type == ErrorKind.WORKER_DIED:
        deaths = guilt.get(pos, 0) + 1
        if deaths >= rules.quarantine_after:
            return Outcome(Action.QUARANTINED, error, guilt=deaths)
        return Outcome(Action.REDO if stopping else Action.RUN_ALONE, error, guilt=deaths)
    if error.error_type == ErrorKind.NOT_STARTED:
        return REDO
    if error.error_type == ErrorKind.WORKER_LOST:  # a node or actor lost: whatever ran there runs again
        return REDO if stopping else Outcome(Action.RETRY, error)
    if not stopping and rules.retry.should_retry(error, attempt):
        return Outcome(Action.RETRY, error, delay=rules.retry.delay(error, attempt))
    return Outcome(Action.FAILED, error)


def abandoned(batches: Sequence[Batch], at_most_once: bool) -> tuple[list[Failure], str | None]:
    """Batches whose calls did not return when the run stopped (past the grace period, or on a second signal):
    their items are recorded as interrupted. At least once, the next run does them again (state pending); at most
    once, they are never called again by themselves. Also the message for the user."""
    state = ItemState.INTERRUPTED if at_most_once else ItemState.PENDING
    items = {p: (k, b.attempt) for b in batches for p, k in zip(b.positions, b.keys, strict=True)}
    failures = [Failure(p, k, ErrorKind.INTERRUPTED, ABANDONED, "", a, state) for p, (k, a) in items.items()]
    if not failures:
        return [], None
    again = "never called again by itself (at-most-once)" if at_most_once else "the next run does them again"
    return failures, (f"{len(failures)} item(s) in {len(batches)} batch(es) did not return before the stop: "
                      f"recorded as interrupted; {again}")
