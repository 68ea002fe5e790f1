"""The Ray engine: Ray Core actors run batches on a cluster; this process (the driver) keeps the one ledger and the
committer. Ray Data is not used: it fails a whole dataset on one bad row and cannot isolate a poison item.

Each actor holds its own copy of the job's `Work` (setup() once per actor) and runs one batch at a time, so a death
names its batch (`pins_deaths`). Ray's errors tell two deaths apart:

- the actor's process died with its node alive (a segfault, os.abort, the OOM killer inside the function): the
  batch's items die as `WorkerDied` and are pinned one by one, then quarantined after K deaths, as locally;
- the actor was lost with its node (the node died or was drained, the actor is unreachable): `WorkerLost`, not the
  items' fault, so they go back to the retry queue in normal batches and nothing is pinned on them.

Heavy items: with a `reader` (ray_reads "actors") an actor is sent positions and keys and reads the records
itself (sources/row_reader.py); with `shards="actors"` it writes its batch's shard itself (store/actor_shards.py).
What it could not read or write comes back as the items' errors of kinds the core sorts out (core/actor_reads.py).

Batches aim at `BATCH_SECONDS` of work (a remote call costs a few ms, not the microseconds of a local queue).
Ray is imported only when this engine starts: the core does not need it."""

from __future__ import annotations

import gc
import os
import pickle
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..columns import ArrowRecords
from ..errors import ConfigError, ErrorKind, ItemError
from ..sources.base import BadRow
from .base import Batch, BatchResult
from .user_fn import Work

BATCH_SECONDS = 0.5  # per remote call: its overhead (ms) stays under 1%, and a lost node costs little to redo
INSTALL = "the ray engine needs Ray: pip install 'durabatch[ray]'"


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError(INSTALL) from None
    return ray


class BatchActor:
    """Runs in a Ray actor (wrapped by ray.remote when the engine starts; pickled by reference, so a worker needs
    only durabatch installed). A failed setup() is kept and reported by ready(), not raised in the constructor:
    the driver then shows the function's own error."""

    def __init__(self, work_bytes: bytes, item_timeout: float | None, reader: Any = None, key: str | None = None):
        self.item_timeout = item_timeout
        self.reader, self.key = reader, key  # ray_reads "actors": a sources.row_reader.RowReader, the key column
        self.setup_error: ItemError | None = None
        try:
            self.work: Work = pickle.loads(work_bytes)
            self.work.prepare()
        except BaseException as exc:  # noqa: BLE001 - reported to the driver by ready()
            self.setup_error = ItemError.from_exception(exc)

    def ready(self) -> tuple[ItemError | None, str, str]:
        """(setup error, node id, host:pid): where this actor runs, to tell a node's death from its own."""
        import ray

        return self.setup_error, ray.get_runtime_context().get_node_id(), f"{socket.gethostname()}:{os.getpid()}"

    def run(self, records: Any, positions: list[int] | None = None,
            keys: list | None = None) -> tuple[Any, dict[int, ItemError], float, str | None]:
        """The batch's results and errors. With a reader, `records` is None: the actor reads them at `positions`."""
        t0 = time.perf_counter()
        unread: dict[int, ItemError] = {}
        if self.reader is not None:
            records, unread = read_records(self.reader, self.key, positions or [], keys or [])
        try:
            if unread:  # the function runs the rows that were read; the others keep their read error
                rows = [i for i in range(len(records)) if i not in unread]
                outputs, errors = [None] * len(records), dict(unread)
                done, failed = self.work.execute([records[i] for i in rows], self.item_timeout)
                for j, i in enumerate(rows):
                    outputs[i] = done[j]
                errors.update({rows[j]: error for j, error in failed.items()})
            else:
                outputs, errors = self.work.execute(records, self.item_timeout)
        except BaseException as exc:  # noqa: BLE001 - every item's error, not the actor's end
            error = ItemError.from_exception(exc)
            outputs, errors = [None] * len(records), {**dict.fromkeys(range(len(records)), error), **unread}
        return outputs, errors, time.perf_counter() - t0, self.work.take_note()

    def run_and_write(self, records: Any, positions: list[int], keys: list, writer: Callable,
                      types: str | None) -> tuple[None, dict[int, ItemError], float, str | None, tuple]:
        """ray_shards "actors": the batch's results go into a shard this actor writes (`writer`:
        store.actor_shards.ShardWriter, given by the core); only the shard's record and the errors go back."""
        outputs, errors, seconds, note = self.run(records, positions, keys)
        ok = [i for i in range(len(positions)) if i not in errors]
        written: tuple = (None, {}, types)
        if ok:
            pieces = [outputs] if len(ok) == len(positions) else [[outputs[i] for i in ok]]
            try:
                shard, refused, fixed = writer([positions[i] for i in ok], [keys[i] for i in ok], pieces, types)
                written = (shard, {ok[i]: why for i, why in refused.items()}, fixed)
            except OSError as exc:  # storage full, read-only, not shared with this node: not the items' fault
                errors.update(dict.fromkeys(ok, ItemError(ErrorKind.STORAGE, f"a Ray actor on {socket.gethostname()}"
                                                          f" could not write its shard: {exc}. --ray-shards actors "
                                                          "needs the run directory on storage every node can write",
                                                          "")))
            except Exception as exc:  # noqa: BLE001 - a result the shard cannot hold: the items' error, retried
                errors.update(dict.fromkeys(ok, ItemError.from_exception(exc)))
        return None, errors, seconds, note, written

    def close(self) -> None:
        if self.setup_error is None:
            self.work.close()


@dataclass
class _Slot:
    handle: Any
    ready_ref: Any
    node_id: str | None = None
    batch: Batch | None = None
    ref: Any = None
    started: float = 0.0
    killed_for: ItemError | None = None  # why the engine itself killed this actor


class RayEngine:
    """workers: actors; cpus/gpus: Ray resources reserved per actor; address: the cluster (None: RAY_ADDRESS, an
    existing local cluster, else a local Ray started for this run, as ray.init decides)."""

    pins_deaths = True  # one batch per actor at a time: a death names its batch
    batch_seconds = BATCH_SECONDS
    shard_writer: Callable | None = None  # shards "actors": set by the core (core/written.attach) before a batch
    field_types: Callable[[], str] | None = None

    def __init__(self, workers: int, address: str | None = None, cpus_per_worker: float | None = None,
                 gpus_per_worker: float | None = None, item_timeout: float | None = None, shards: str = "driver",
                 reader: Any = None, key: str | None = None, env: dict[str, str] | None = None):
        self.slots = workers
        self.address = address
        self.cpus = 1.0 if cpus_per_worker is None else cpus_per_worker
        self.gpus = gpus_per_worker or 0.0
        self.item_timeout = item_timeout
        self.writes_shards = shards == "actors"  # each actor writes its batches' shards (heavy results)
        self.reader, self.key = reader, key  # ray_reads "actors": each actor reads its batches' records (heavy items)
        self.env = env or {}  # ray_env: variables of the driver's environment set in every actor's (runtime_env)
        self._pool: list[_Slot] = []
        self._owns_ray = False

    def start(self, work: Work) -> None:
        ray = self._ray = import_ray()
        try:
            # Ray's cloudpickle: a function of the main script or a notebook travels by value; an importable one
            # by reference (its module must then be importable on every node).
            self._work_bytes = ray.cloudpickle.dumps(work)
        except Exception as exc:  # noqa: BLE001
            raise ConfigError(f"the ray engine cannot send this function to its actors: {exc}") from None
        if not ray.is_initialized():
            try:
                ray.init(address=self.address, logging_level="WARNING", log_to_driver=True)
            except (ConnectionError, ValueError, RuntimeError) as exc:
                raise ConfigError(f"cannot join the Ray cluster {self.address or '(RAY_ADDRESS or local)'}: {exc}. "
                                  "Check --ray-address / RAY_ADDRESS, or start it with `ray start --head`") from None
            self._owns_ray = True
        try:
            self._check_resources()
            self._actor = ray.remote(max_restarts=0, max_task_retries=0)(BatchActor)
            self._work_ref = ray.put(self._work_bytes)
            self._pool = [self._new_slot() for _ in range(self.slots)]
            for slot in self._pool:
                self._await_ready(slot)
        except BaseException:
            self.close(cancel=True)  # the runner does not close an engine that failed to start
            raise

    def _check_resources(self) -> None:
        """A cluster that can never place the actors would wait forever: refuse at once, naming what it has."""
        have = self._ray.cluster_resources()
        for name, each in (("CPU", self.cpus), ("GPU", self.gpus)):
            if each and self.slots * each > have.get(name, 0) + 1e-9:
                raise ConfigError(f"--workers {self.slots} with {each:g} {name} each needs {self.slots * each:g} "
                                  f"{name}, the Ray cluster has {have.get(name, 0):g}: ask for fewer --workers, or "
                                  f"less with --{name.lower()}s-per-worker")

    def _new_slot(self) -> _Slot:
        options: dict[str, Any] = {"num_cpus": self.cpus, "scheduling_strategy": "SPREAD"}
        if self.gpus:
            options["num_gpus"] = self.gpus
        if self.env:
            options["runtime_env"] = {"env_vars": self.env}
        handle = self._actor.options(**options).remote(self._work_ref, self.item_timeout, self.reader, self.key)
        return _Slot(handle, handle.ready.remote())

    def _await_ready(self, slot: _Slot, timeout: float | None = None, starting: bool = True) -> None:
        """Raises ConfigError for a failed setup(); for an actor that died while starting, only when the run starts
        (later, its batch's own error says whether it was lost with its node)."""
        try:
            setup_error, slot.node_id, _ = self._ray.get(slot.ready_ref, timeout=timeout)
        except self._ray.exceptions.GetTimeoutError:
            return
        except self._ray.exceptions.RayError as exc:
            if not starting:
                return
            raise ConfigError(f"a Ray actor died while starting: {exc}") from None
        if setup_error is not None:
            raise ConfigError(f"the function's setup failed in a Ray actor: {setup_error.error_type}: "
                              f"{setup_error.message}\n{setup_error.traceback}")

    def submit(self, batch: Batch) -> None:
        slot = next(s for s in self._pool if s.batch is None)
        slot.batch, slot.started = batch, time.monotonic()
        # A plain list crosses to the actor (ArrowRecords too: it pickles as its Arrow table); with a reader, only
        # positions and keys do (the batch's records hold only its keys).
        records = None if self.reader is not None else batch.records
        if self.writes_shards:
            assert self.shard_writer is not None and self.field_types is not None
            slot.ref = slot.handle.run_and_write.remote(records, batch.positions, batch.keys,
                                                        self.shard_writer, self.field_types())
        elif self.reader is not None:
            slot.ref = slot.handle.run.remote(None, batch.positions, batch.keys)
        else:
            slot.ref = slot.handle.run.remote(batch.records)

    def poll(self, timeout: float) -> list[BatchResult]:
        busy = {s.ref: s for s in self._pool if s.batch is not None}
        if not busy:
            return []
        if self.item_timeout:
            timeout = min(timeout, 0.05)
        ray = self._ray
        ready, _ = ray.wait(list(busy), num_returns=1, timeout=timeout)
        if ready:
            ready, _ = ray.wait(list(busy), num_returns=len(busy), timeout=0)
        self._watch()
        results = []
        for ref in ready:
            slot = busy[ref]
            batch = slot.batch
            assert batch is not None
            slot.batch = slot.ref = None
            try:
                if slot.node_id is None:  # a replacement's first batch: its setup() must have worked
                    self._await_ready(slot, timeout=10, starting=False)
                outputs, errors, seconds, note, *written = ray.get(ref)
            except ray.exceptions.RayError as exc:
                error = self._death(slot, exc)
                note = f"{error.message}: its batch of {len(batch.records)} runs again" \
                    if error.error_type == ErrorKind.WORKER_LOST else None
                results.append(BatchResult(batch, [None] * len(batch.records),
                                           dict.fromkeys(range(len(batch.records)), error), 0.0, note))
                continue
            if written:  # the actor wrote the shard: no outputs came back
                outputs = [None] * len(batch.records)
            results.append(BatchResult(batch, outputs, errors, seconds, note, written[0] if written else None))
        return results

    def _watch(self) -> None:
        """An actor stuck past its batch's time (in C code, where the timeout's signal cannot reach) is killed."""
        if not self.item_timeout:
            return
        now = time.monotonic()
        for slot in self._pool:
            if slot.batch is not None and slot.killed_for is None and \
                    now - slot.started > self.item_timeout * len(slot.batch.records) + 5.0:
                slot.killed_for = ItemError(ErrorKind.ITEM_TIMEOUT, f"no result after {now - slot.started:.1f}s "
                                            f"(--item-timeout {self.item_timeout:g}s per item); the actor was killed",
                                            "", (ErrorKind.ITEM_TIMEOUT, "TimeoutError"))
                self._ray.kill(slot.handle, no_restart=True)

    def _death(self, slot: _Slot, exc: BaseException) -> ItemError:
        """The error of every item of a batch whose call failed in Ray, and a fresh actor in the slot."""
        ray = self._ray
        if isinstance(exc, ray.exceptions.RayTaskError) and not isinstance(exc, ray.exceptions.RayActorError):
            return ItemError.from_exception(exc)  # the call ran and failed (e.g. a result Ray could not return)
        error = slot.killed_for or self._why_lost(slot, exc)
        try:
            ray.kill(slot.handle, no_restart=True)  # unreachable is not dead: make sure before replacing it
        except Exception:  # noqa: BLE001 - already gone
            pass
        index = self._pool.index(slot)
        self._pool[index] = fresh = self._new_slot()
        self._await_ready(fresh, timeout=0, starting=False)  # a setup error known already; else at its first batch
        return error

    def _why_lost(self, slot: _Slot, exc: BaseException) -> ItemError:
        exceptions = self._ray.exceptions
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, exceptions.RayActorError) and not isinstance(exc, exceptions.ActorUnavailableError) \
                and not getattr(exc, "preempted", False) and self._node_alive(slot):
            return ItemError(ErrorKind.WORKER_DIED, f"the Ray actor's process died while running this item's "
                             f"batch (its node is alive): {_detail(exc)}", "")
        return ItemError(ErrorKind.WORKER_LOST, f"a Ray actor was lost with its node or connection, not because "
                         f"of its items ({type(exc).__name__}: {message})", "")

    def _node_alive(self, slot: _Slot) -> bool:
        if slot.node_id is None:
            try:
                _, slot.node_id, _ = self._ray.get(slot.ready_ref, timeout=1)
            except Exception:  # noqa: BLE001 - never started: its node is the question, not an item
                return False
        return any(n.get("NodeID") == slot.node_id and n.get("Alive") for n in self._ray.nodes())

    def in_flight(self) -> int:
        return sum(s.batch is not None for s in self._pool)

    def stop_starting(self) -> None:
        pass  # one batch per actor: nothing queued behind a running call

    def close(self, cancel: bool = False) -> None:
        ray = getattr(self, "_ray", None)
        if ray is None:
            return
        self._release(cancel)
        # Every ObjectRef and actor handle goes before the shutdown: one freed after it touches a dead core worker
        # (the driver segfaulted so here).
        self._pool, self._work_ref = [], None
        gc.collect()
        if self._owns_ray:
            ray.shutdown()  # the driver leaves the cluster; a local Ray started for this run stops

    def _release(self, cancel: bool) -> None:
        """teardown() in idle actors (unless cancelling), then every actor killed (its refs die with this frame)."""
        ray = self._ray
        if not cancel:
            refs = [s.handle.close.remote() for s in self._pool if s.batch is None]
            ray.wait(refs, num_returns=len(refs), timeout=10)
        for slot in self._pool:
            try:
                ray.kill(slot.handle, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass


def read_records(reader: Any, key: str | None, positions: list[int], keys: list) -> tuple[Any, dict[int, ItemError]]:
    """ray_reads "actors": the records at `positions`, read by this actor, and the errors of those it could not
    use: a bad row (BadRow, named by file and line) or a key other than the one the driver read (the input changed
    under the run: an InputError, which stops the run). An unreadable input fails every item with InputError."""
    try:
        records = reader.read(positions)
    except Exception as exc:  # noqa: BLE001 - e.g. a file changed or gone: the driver stops the run
        where = f" (on {socket.gethostname()}: --ray-reads actors needs the input files on storage every node can " \
            "read)" if isinstance(exc, OSError) else ""
        error = ItemError(ErrorKind.INPUT, f"{exc}{where}", "")
        return [None] * len(positions), dict.fromkeys(range(len(positions)), error)
    errors: dict[int, ItemError] = {}
    if type(records) is ArrowRecords:  # every row read by Arrow: no bad row, and the keys compared in one column
        rows = enumerate(zip(records.table.column(key).to_pylist(), keys, strict=True))
    else:
        for i, record in enumerate(records):
            if type(record) is BadRow:
                errors[i] = ItemError(ErrorKind.BAD_ROW, f"{record.where}: {record.message}", "")
        rows = ((i, (r.get(key), k)) for i, (r, k) in enumerate(zip(records, keys, strict=True)) if i not in errors)
    for i, (value, expected) in rows:
        if value != expected:
            errors[i] = ItemError(ErrorKind.INPUT, f"position {positions[i]}: the record read has {key}={value!r} "
                                  f"where the key pass read {expected!r}: the input changed during the run", "")
    return records, errors


def _detail(exc: BaseException) -> str:
    """The informative lines of Ray's actor death message (its first line says only that the actor died)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    keep = [line for line in lines[1:] if not line.startswith(("class_name", "actor_id", "namespace"))]
    return " ".join(keep)[:500] or (lines[0] if lines else type(exc).__name__)
