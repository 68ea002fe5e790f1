"""The user's function as the engines run it: resolve a reference, set it up once per worker, and call it on a
batch of records, turning exceptions into per-item errors (a failing batch function is bisected)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from operator import itemgetter
from typing import Any, NoReturn

import pyarrow as pa

from .. import errors as _errors
from ..columns import ArrowRecords, from_columns, join, to_columns
from ..errors import ErrorKind, ItemError, ItemTimeout, ProcessExit, StopInterrupt
from . import storable
from .resolve import resolve


@contextlib.contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Interrupt the code inside after `seconds` with ItemTimeout (SIGALRM: main thread only, else no limit)."""
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_alarm(signum: int, frame: object) -> None:
        raise ItemTimeout(f"no result after {seconds:g}s (--item-timeout)")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def timed_out(seconds: float, late: bool = False, batch: int = 1) -> ItemError:
    """The error of an item past its deadline; late: the function returned, but after the deadline (it swallowed
    the interrupt, or ran where no signal reaches); batch: the deadline was a whole batch's."""
    what = f"for a batch of {batch} records after {seconds:g}s" if batch > 1 else f"after {seconds:g}s"
    how = "; it returned after its deadline, so its result is discarded" if late else ""
    return ItemError.from_exception(ItemTimeout(f"no result {what} (--item-timeout){how}"))


def item_error(exc: BaseException) -> ItemError:
    """Whatever the function raised is its item's error (SystemExit, KeyboardInterrupt, BaseException too); only
    a real stop signal (StopInterrupt, raised by the stop flag) goes on up and stops the run."""
    if isinstance(exc, StopInterrupt):
        raise exc
    return ItemError.from_exception(exc)


async def guarded(fn: Any, record: Any) -> tuple[Any, ItemError | None]:
    """(await fn(record), None) or (None, the item's error): a coroutine that raises KeyboardInterrupt or
    SystemExit must not escape into (and stop) the event loop. A cancellation from outside, the batch's own
    deadline (ItemTimeout) and a real stop go on up."""
    _local.in_fn = True  # an event loop's thread runs only the engine and the function
    try:
        return await fn(record), None
    except asyncio.CancelledError as exc:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        return None, item_error(exc)
    except ItemTimeout:
        raise
    except BaseException as exc:  # noqa: BLE001 - the item's failure, not the run's
        return None, item_error(exc)


# -- a function that ends the process ---------------------------------------------------------------------------
_local = threading.local()  # in_fn: this thread is running the job's function now
_REAL_EXIT = os._exit
_guard_pid: int | None = None


def _exit_guard(status: int) -> NoReturn:
    """os._exit while a worker thread runs the function: that item's failure (ProcessExit), not the process's end.
    Anywhere else (another thread, a forked child) it is the real os._exit."""
    if os.getpid() == _guard_pid and getattr(_local, "in_fn", False):
        raise ProcessExit(f"the function called os._exit({status}): ending the process is not a result, so this "
                          "item failed instead")
    _REAL_EXIT(status)


def guard_process_exit() -> None:
    """Route os._exit through _exit_guard in this process (idempotent). What bypasses it (posix._exit, an os._exit
    bound before, C code calling exit()) still ends the process: the journal then pins and quarantines the item."""
    global _guard_pid
    _guard_pid = os.getpid()
    os._exit = _exit_guard


def takes_no_arguments(init: Any) -> bool:
    """A constructor that takes nothing but self (params then go to setup())."""
    return init is object.__init__ or list(inspect.signature(init).parameters) == ["self"]


def is_async_target(target: Any) -> bool:
    """An `async def` function, or a class / object whose __call__ is one."""
    if inspect.isfunction(target) or inspect.ismethod(target):
        return inspect.iscoroutinefunction(target)
    owner = target if inspect.isclass(target) else type(target)
    return inspect.iscoroutinefunction(owner.__dict__.get("__call__") or getattr(owner, "__call__", None))  # noqa: B004


def identity(target: Any) -> str:
    """module:qualname of a function, class or callable instance."""
    obj = target if inspect.isfunction(target) or inspect.isclass(target) else type(target)
    return f"{getattr(obj, '__module__', '?')}:{getattr(obj, '__qualname__', repr(obj))}"


class Work:
    """One worker's view of the job's function. Picklable while unprepared, so process workers can build their own."""

    def __init__(self, target: Any, batched: bool, cleanup_every: int = 0, columns: bool = False,
                 params: dict[str, Any] | None = None):
        self.target = target
        self.params = params or {}  # the job's params: to the constructor, setup(), or every call as keywords
        self.batched = batched
        self.columns = columns  # a batch function of {field: values} (batch_format="columns")
        self.cleanup_every = cleanup_every
        self.batch_limit: int | None = None  # lowered when the batch function runs out of memory
        self.note: str | None = None  # something the runner should report (taken by the engine)
        self._calls = 0
        self._fn: Any = None

    def __getstate__(self) -> dict:
        # A process worker redacts the same secrets as the runner (the edge installed them there).
        return {**self.__dict__, "_fn": None, "_redaction": _errors.redaction()}

    def __setstate__(self, state: dict) -> None:
        secrets = state.pop("_redaction", None)
        if secrets:
            _errors.install_redaction(secrets)
        self.__dict__.update(state)

    def copy(self) -> Work:
        """An unprepared copy, for another worker."""
        return Work(self.target, self.batched, self.cleanup_every, self.columns, self.params)

    @property
    def is_async(self) -> bool:
        return self._is_async

    def call(self, record: dict) -> Any:
        """The function applied to one record (a coroutine for an async function)."""
        return self._fn(record)

    def take_note(self) -> str | None:
        note, self.note = self.note, None
        return note

    def prepare(self) -> None:
        """Instantiate a class and run its setup() once (load the model here, not per item)."""
        target = resolve(self.target) if isinstance(self.target, str) else self.target
        params, to_setup = self.params, False
        if inspect.isclass(target):
            to_setup = bool(params) and takes_no_arguments(target.__init__) and callable(getattr(target, "setup", 0))
            target = target() if to_setup or not params else target(**params)
            params = {}
        setup = getattr(target, "setup", None)
        if callable(setup) and not inspect.isfunction(target):
            if to_setup:
                setup(**self.params)
            else:
                setup()
        self._fn = functools.partial(target, **params) if params else target
        call = target if inspect.isfunction(target) or inspect.ismethod(target) else type(target).__call__
        self._is_async = inspect.iscoroutinefunction(call)
        guard_process_exit()

    def teardown(self) -> Any:
        """Call the function object's teardown() if it has one (close a client, free a GPU), once; returns what
        it returns, an awaitable for `async def teardown` (the asyncio engine awaits it in its loop)."""
        fn, self._fn = self._fn, None
        teardown = getattr(fn, "teardown", None)
        if fn is None or inspect.isfunction(fn) or not callable(teardown):
            return None
        return teardown()

    def close(self) -> None:
        """teardown() from a synchronous worker; an error in it cannot fail any item, so it is only warned."""
        try:
            result = self.teardown()
            if inspect.isawaitable(result):
                asyncio.run(_awaited(result))
        except Exception as exc:  # noqa: BLE001
            warnings.warn(f"teardown() failed: {type(exc).__name__}: {exc}", RuntimeWarning, stacklevel=1)

    def execute(self, records: Sequence[dict], timeout: float | None = None) -> tuple[Sequence, dict[int, ItemError]]:
        """Run the function over records: outputs aligned with records (None where failed) and errors by index
        (a columns batch that fully succeeded returns its results as one ArrowRecords). Whatever the function
        raises (SystemExit, KeyboardInterrupt, os._exit too) or returns that cannot be stored is that item's error.
        `timeout` (seconds per record) interrupts the main thread only; anywhere, an item (a batch function's or
        async batch's whole call) past its deadline is timed out even if it returned."""
        if self._fn is None:
            self.prepare()
        self._calls += 1
        if self.cleanup_every and self._calls % self.cleanup_every == 0:
            cleanup()
        _local.in_fn = True
        try:
            if self.batched or self._is_async:
                return self._execute_together(records, timeout)
            outputs, errors = self._execute_each(records, timeout)
        finally:
            _local.in_fn = False
        storable.check(outputs, errors)
        return outputs, errors

    def _execute_each(self, records: Sequence[dict], timeout: float | None) -> tuple[list, dict[int, ItemError]]:
        outputs: list[Any] = [None] * len(records)
        errors: dict[int, ItemError] = {}
        fn = self._fn
        if timeout:
            for i, record in enumerate(records):
                t0 = time.monotonic()
                try:
                    with time_limit(timeout):
                        output = fn(record)
                except BaseException as exc:  # noqa: BLE001 - the item's failure, not the run's
                    errors[i] = item_error(exc)
                    continue
                if time.monotonic() - t0 > timeout:
                    errors[i] = timed_out(timeout, late=True)  # swallowed the interrupt: the result is void
                else:
                    outputs[i] = output
        else:
            for i, record in enumerate(records):
                try:
                    outputs[i] = fn(record)
                except BaseException as exc:  # noqa: BLE001 - the item's failure, not the run's
                    errors[i] = item_error(exc)
        return outputs, errors

    def _execute_together(self, records: Sequence[dict], timeout: float | None) -> tuple[Sequence, dict]:
        """A batch function's calls, or an async function's batch in a private loop, under one deadline. Past it,
        every item of the batch is timed out (the runner then runs each alone, under its own deadline)."""
        n = len(records)
        outputs: list[Any] = [None] * n
        errors: dict[int, ItemError] = {}
        pieces: list[tuple[int, ArrowRecords]] = []  # columns: (start, results) of each call that succeeded
        limit = timeout * n if timeout else None
        t0 = time.monotonic()
        try:
            with time_limit(limit):
                if self.batched:
                    step = self.batch_limit or n
                    for lo in range(0, n, step):
                        self._run_batch(records, lo, min(lo + step, n), outputs, errors, pieces)
                else:
                    self._run_async(records, outputs, errors)
        except ItemTimeout:
            return [None] * n, dict.fromkeys(range(n), timed_out(limit or 0.0, batch=n))
        if limit is not None and time.monotonic() - t0 > limit:
            return [None] * n, dict.fromkeys(range(n), timed_out(limit, late=True, batch=n))
        if self.columns:
            return _aligned(pieces, outputs, errors), errors
        storable.check(outputs, errors)
        return outputs, errors

    def _run_batch(self, records: Sequence, lo: int, hi: int, outputs: list, errors: dict,
                   pieces: list[tuple[int, ArrowRecords]]) -> None:
        try:
            if self.columns:
                result = self._call(to_columns(records[lo:hi]))
                self._columns_result(result, lo, hi, outputs, errors, pieces)
                return
            result = self._call(records[lo:hi])
        except BaseException as exc:  # noqa: BLE001 - bisected down to the items that raise
            if isinstance(exc, ItemTimeout | StopInterrupt):
                raise  # the whole batch's deadline, or a real stop: not this call's failure
            if hi - lo == 1:
                errors[lo] = item_error(exc)
                return
            if is_out_of_memory(exc):
                # Carry on with halves, and keep that size for later batches, instead of dying at hour 11.
                cleanup()
                self.batch_limit = (hi - lo) // 2
                note = (f"the batch function ran out of memory on {hi - lo} records ({type(exc).__name__}); "
                        f"continuing with batches of {self.batch_limit}")
                self.note = f"{self.note}; {note}" if self.note else note
            mid = (lo + hi) // 2  # bisect so that only the items that really fail are recorded as failed
            self._run_batch(records, lo, mid, outputs, errors, pieces)
            self._run_batch(records, mid, hi, outputs, errors, pieces)
            return
        if not isinstance(result, list | tuple) or len(result) != hi - lo:
            got = f"{len(result)} results" if hasattr(result, "__len__") else type(result).__name__
            error = ItemError(ErrorKind.BATCH_LENGTH, f"batch function returned {got} for {hi - lo} records", "")
            for i in range(lo, hi):
                errors[i] = error
            return
        outputs[lo:hi] = result

    @staticmethod
    def _columns_result(result: Any, lo: int, hi: int, outputs: list, errors: dict,
                        pieces: list[tuple[int, ArrowRecords]]) -> None:
        """A columns call's result as one piece; rows holding a value that cannot be stored fail alone."""
        bad = storable.column_problems(result, hi - lo)
        try:
            if bad:
                rows = from_columns({k: [None if i in bad else v for i, v in enumerate(values)]
                                     for k, values in result.items()}, hi - lo).rows()
                for i, row in enumerate(rows):
                    if i in bad:
                        errors[lo + i] = storable.unstorable(bad[i])
                    else:
                        outputs[lo + i] = row
                return
            pieces.append((lo, from_columns(result, hi - lo)))
        except (TypeError, ValueError, pa.ArrowException) as exc:
            error = ItemError(ErrorKind.BATCH_LENGTH, str(exc), "")  # the function's shape, not an item's
            errors.update(dict.fromkeys(range(lo, hi), error))

    def _call(self, records: list) -> Any:
        result = self._fn(records)
        if inspect.isawaitable(result):
            result = asyncio.run(_awaited(result))
        return result

    def _run_async(self, records: Sequence, outputs: list, errors: dict) -> None:
        # Without the asyncio engine, an async function runs its batch concurrently in a private loop.
        async def gather() -> list:
            return await asyncio.gather(*(guarded(self._fn, r) for r in records))

        for i, (output, error) in enumerate(asyncio.run(gather())):
            if error is None:
                outputs[i] = output
            else:
                errors[i] = error


def _aligned(pieces: list[tuple[int, ArrowRecords]], outputs: list, errors: dict) -> Sequence:
    """A columns batch's results: one table when every call succeeded, else a list with None where failed."""
    if not errors:
        return join([piece for _, piece in sorted(pieces, key=itemgetter(0))])
    for lo, piece in pieces:
        outputs[lo:lo + len(piece)] = piece.rows()
    return outputs


def is_out_of_memory(exc: BaseException) -> bool:
    """MemoryError, torch.cuda.OutOfMemoryError, or a RuntimeError saying CUDA/MPS is out of memory."""
    names = {k.__name__ for k in type(exc).__mro__}
    return bool(names & {"MemoryError", "OutOfMemoryError"}) or "out of memory" in str(exc).lower()


def cleanup() -> None:
    """Free what can be freed: Python garbage, and cached GPU memory when torch is already loaded."""
    import gc

    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:  # noqa: BLE001 - best effort
            pass


async def _awaited(awaitable: Any) -> Any:
    return await awaitable
