"""Batches whose shard the worker wrote itself (the Ray engine with ray_shards "actors"): the driver lists the shard
and its refused rows in one ledger transaction, and hands only the batch's item errors to the usual outcomes.

One type per result field still holds: the actor built its shard with the driver's field types of when the batch
left; another actor may have fixed a new field's type meanwhile. A shard that cannot join the types now known is
deleted before anything lists it (else the orphan rules would adopt it) and its items run again, as `WorkerLost`
(not their fault, no attempt counted): with the types now fixed, the actor refuses the odd rows one by one."""

from __future__ import annotations

from ..columns import FieldTypes
from ..engines.base import BatchResult, Engine
from ..errors import ErrorKind, ItemError
from ..store import orphans
from ..store.actor_shards import ShardWriter
from ..store.ledger import Failure, Ledger
from ..store.rundir import RunDir
from .committer import Committer, Pending
from .events import Stats
from .failfast import FailFast

RESULT_TYPE = "ResultTypeError"  # as the driver's own shards record a refused value


def attach(engine: Engine, committer: Committer, rd: RunDir) -> None:
    """Tell an engine that writes its own shards where and how, and how to read the field types at each batch."""
    if getattr(engine, "writes_shards", False):
        engine.shard_writer = ShardWriter(str(rd.shards), committer.fmt, committer.key_column,  # type: ignore
                                          committer.job_id)
        engine.field_types = committer.fields.dump  # type: ignore[attr-defined]


def record(committer: Committer, result: BatchResult, stats: Stats, failfast: FailFast) -> BatchResult:
    """List the batch's shard (or delete it and send its items back); what is returned holds only the items that
    failed in the function, for the usual outcomes (retries, quarantine, failures)."""
    batch = result.batch
    shard, refused, types = result.written
    done = [i for i in range(len(batch.positions)) if i not in result.errors and i not in refused]
    trial = FieldTypes(committer.fields.dump())
    if shard is not None and not all(trial.join(name, kind) for name, kind in FieldTypes(types).types.items()):
        (committer.run_dir.shards / shard.name).unlink(missing_ok=True)
        again = ItemError(ErrorKind.WORKER_LOST, "its shard's field types conflict with a shard another actor "
                          "wrote meanwhile: the shard was deleted and the batch runs again", "")
        errors = {**result.errors, **dict.fromkeys([*done, *refused], again)}
        return BatchResult(batch, [None] * len(batch.positions), errors, result.seconds, result.note)
    failures = [Failure(batch.positions[i], batch.keys[i], RESULT_TYPE, message, "", batch.attempt)
                for i, message in refused.items()]
    if shard is not None or failures:
        meta = None
        if trial.changed:
            committer.fields.types, meta = trial.types, {"result_types": trial.dump()}
        committer.submit_written(Pending(positions=[batch.positions[i] for i in done], failures=failures,
                                         meta=meta, written=shard))
    stats.done, stats.failed = stats.done + len(done), stats.failed + len(failures)
    if done:
        failfast.succeeded()
    return result.only(sorted(result.errors))


def settle_leftovers(engine: Engine, rd: RunDir, ledger: Ledger) -> list[str]:
    """After the run, its actors gone: shards that actors wrote but never reported (an actor lost with its node
    after writing, before replying) are settled now, not left for the next run: removed when their batch ran again
    (a copy), adopted when it did not."""
    if not getattr(engine, "writes_shards", False):
        return []
    settled = orphans.settle(rd, ledger)
    copies, notes = len(settled.removed) - len(settled.conflicting), []
    if copies:
        notes.append(f"removed {copies} shard(s) written by actors lost before they replied (their batches ran "
                     "again)")
    if settled.conflicting:
        notes.append(f"removed {len(settled.conflicting)} shard(s) of lost actors whose field types conflict (their "
                     "items run next time)")
    if settled.adopted:
        notes.append(f"kept {len(settled.adopted)} shard(s) written by actors lost before they replied")
    return notes
