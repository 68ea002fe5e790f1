"""Batches whose worker did part of the driver's I/O (the Ray engine with ray_reads or ray_shards "actors").

Records read by an actor (the driver read only the keys): a row that cannot be read is handled as the driver
handles its own bad rows, a failure with --skip-bad-rows, else the run stops naming the file and line (after this
batch's other results are kept). A record whose key differs from the one the driver read means the input changed
under the run, and a shard an actor could not write means the run directory is not writable from its node: both
stop the run, with nothing counted against the items (they are simply not done)."""

from __future__ import annotations

from ..engines.base import BatchResult
from ..errors import DurabatchError, ErrorKind, InputError, StorageError, option
from ..store.ledger import Failure

STOPS = {ErrorKind.INPUT: InputError, ErrorKind.STORAGE: StorageError}


def sort_out(result: BatchResult, skip_bad_rows: bool) -> tuple[BatchResult, list[Failure], DurabatchError | None]:
    """(the batch's other rows, for the usual outcomes; failures to record; the error that stops the run)."""
    errors = result.errors
    bad = [i for i, e in errors.items() if e.error_type == ErrorKind.BAD_ROW]
    broken = [i for i, e in errors.items() if e.error_type in STOPS]
    if not bad and not broken:
        return result, [], None
    batch = result.batch
    stop = STOPS[errors[broken[0]].error_type](errors[broken[0]].message) if broken else None
    failures = []
    if skip_bad_rows:
        failures = [Failure(batch.positions[i], batch.keys[i], ErrorKind.BAD_ROW, errors[i].message, "", 1)
                    for i in bad]
    elif bad and stop is None:
        stop = InputError(f"{errors[bad[0]].message}. Fix the row, or pass {option('skip_bad_rows')} to record it "
                          "as a failure.")
    # Rows not read stay undone (not failed): the next run reads them again.
    left = set(bad) | set(broken)
    return result.only([i for i in range(len(batch.positions)) if i not in left]), failures, stop
