"""The user's function as the engines run it: resolve a reference, set it up once per worker, and call it on a
batch of records, turning exceptions into per-item errors (a failing batch function is bisected)."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import signal
import sys
import threading
import warnings
from collections.abc import Iterator, Sequence
from operator import itemgetter
from typing import Any

import pyarrow as pa

from ..columns import ArrowRecords, from_columns, join, to_columns
from ..errors import ConfigError, ErrorKind, ItemError, ItemTimeout


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


def resolve(ref: str) -> Any:
    """Import "package.module:name" (also "package.module.name")."""
    module_name, sep, attr = ref.partition(":")
    if not sep:
        module_name, _, attr = ref.rpartition(".")
    if not module_name or not attr:
        raise ConfigError(f"fn '{ref}': expected package.module:callable")
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")  # like `python -m`: the current directory's modules are importable
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"fn '{ref}': cannot import module '{module_name}': {exc}") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(f"fn '{ref}': module '{module_name}' has no attribute '{attr}'") from None
    if not callable(obj):
        raise ConfigError(f"fn '{ref}' is not callable")
    return obj


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

    def __init__(self, target: Any, batched: bool, cleanup_every: int = 0, columns: bool = False):
        self.target = target
        self.batched = batched
        self.columns = columns  # a batch function of {field: values} (batch_format="columns")
        self.cleanup_every = cleanup_every
        self.batch_limit: int | None = None  # lowered when the batch function runs out of memory
        self.note: str | None = None  # something the runner should report (taken by the engine)
        self._calls = 0
        self._fn: Any = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fn": None}

    def copy(self) -> Work:
        """An unprepared copy, for another worker."""
        return Work(self.target, self.batched, self.cleanup_every, self.columns)

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
        if inspect.isclass(target):
            target = target()
        setup = getattr(target, "setup", None)
        if callable(setup) and not inspect.isfunction(target):
            setup()
        self._fn = target
        call = target if inspect.isfunction(target) or inspect.ismethod(target) else type(target).__call__
        self._is_async = inspect.iscoroutinefunction(call)

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
        (a columns batch that fully succeeded returns its results as one ArrowRecords).
        `timeout` (seconds per record) is enforced in the main thread only: engines elsewhere enforce their own."""
        if self._fn is None:
            self.prepare()
        outputs: list[Any] = [None] * len(records)
        errors: dict[int, ItemError] = {}
        self._calls += 1
        if self.cleanup_every and self._calls % self.cleanup_every == 0:
            cleanup()
        if self.batched:
            pieces: list[tuple[int, ArrowRecords]] = []  # columns: (start, results) of each call that succeeded
            with time_limit(timeout * len(records) if timeout else None):
                step = self.batch_limit or len(records)
                for lo in range(0, len(records), step):
                    self._run_batch(records, lo, min(lo + step, len(records)), outputs, errors, pieces)
            if self.columns:
                return _aligned(pieces, outputs, errors), errors
        elif self._is_async:
            with time_limit(timeout * len(records) if timeout else None):
                self._run_async(records, outputs, errors)
        elif timeout:
            for i, record in enumerate(records):
                try:
                    with time_limit(timeout):
                        outputs[i] = self._fn(record)
                except Exception as exc:  # noqa: BLE001 - a user error fails its item, not the run
                    errors[i] = ItemError.from_exception(exc)
        else:
            fn = self._fn
            for i, record in enumerate(records):
                try:
                    outputs[i] = fn(record)
                except Exception as exc:  # noqa: BLE001 - a user error fails its item, not the run
                    errors[i] = ItemError.from_exception(exc)
        return outputs, errors

    def _run_batch(self, records: Sequence, lo: int, hi: int, outputs: list, errors: dict,
                   pieces: list[tuple[int, ArrowRecords]]) -> None:
        try:
            if self.columns:
                result = self._call(to_columns(records[lo:hi]))
                try:
                    pieces.append((lo, from_columns(result, hi - lo)))
                except (TypeError, ValueError, pa.ArrowException) as exc:
                    error = ItemError(ErrorKind.BATCH_LENGTH, str(exc), "")  # the function's shape, not an item's
                    errors.update(dict.fromkeys(range(lo, hi), error))
                return
            result = self._call(records[lo:hi])
        except Exception as exc:  # noqa: BLE001
            if hi - lo == 1:
                errors[lo] = ItemError.from_exception(exc)
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

    def _call(self, records: list) -> Any:
        result = self._fn(records)
        if inspect.isawaitable(result):
            result = asyncio.run(_awaited(result))
        return result

    def _run_async(self, records: list, outputs: list, errors: dict) -> None:
        # Until the asyncio engine exists, an async function runs its batch concurrently in a private loop.
        async def gather() -> list:
            return await asyncio.gather(*(self._fn(r) for r in records), return_exceptions=True)

        for i, result in enumerate(asyncio.run(gather())):
            if isinstance(result, Exception):
                errors[i] = ItemError.from_exception(result)
            elif isinstance(result, BaseException):
                raise result
            else:
                outputs[i] = result


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
