"""Fakes for testing jobs: a clock you move by hand, a call counter that works across processes, and wrappers
that make a function flaky (transient failures, then success) or poisonous (kill, crash or hang its worker).

The wrappers are module-level classes holding only picklable state (the wrapped function, a directory, a few
names), so the processes engine can send them to spawned workers. Call counts live in files, not in memory:
a spawned worker, a restarted runner and the test itself all see the same numbers."""

from __future__ import annotations

import inspect
import os
import posix
import signal
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, unquote


class FakeClock:
    """A monotonic clock that moves only when told: pass it as `clock=` (and its `sleep` as `sleep=`) to the
    policies, so that a test of a 60-second rate window runs in milliseconds and never depends on load."""

    def __init__(self, start: float = 0.0):
        self.now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        """Move time forward; returns the new time. Time never goes back (a monotonic clock does not)."""
        if seconds < 0:
            raise ValueError(f"a monotonic clock cannot go back ({seconds} s)")
        with self._lock:
            self.now += seconds
            return self.now

    def sleep(self, seconds: float) -> None:
        """A sleep that returns at once, having advanced the clock (negative waits are no wait, as time.sleep(0))."""
        self.advance(max(0.0, seconds))


class Calls:
    """Counts calls per key in a directory: one file per key, one byte appended per call. O_APPEND makes each
    append atomic, so concurrent threads, spawned workers and later runs count together without a lock."""

    def __init__(self, directory: str | os.PathLike[str]):
        self.directory = Path(directory)

    def add(self, key: object) -> int:
        """Count one call for key; returns its ordinal (1 for the first call ever, across processes)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.directory / quote(str(key), safe=""), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, b".")
            return os.lseek(fd, 0, os.SEEK_CUR)  # the end of our own byte: exact even with concurrent writers
        finally:
            os.close(fd)

    def count(self, key: object) -> int:
        path = self.directory / quote(str(key), safe="")
        return path.stat().st_size if path.exists() else 0

    def counts(self) -> dict[str, int]:
        """{key (as a string): calls} for every key called at least once."""
        if not self.directory.exists():
            return {}
        return {unquote(p.name): p.stat().st_size for p in self.directory.iterdir()}

    def total(self) -> int:
        return sum(self.counts().values())


class TransientError(ConnectionError):
    """What Flaky raises: a ConnectionError, which durabatch's default retry rule treats as worth another try."""


class _Wrapper:
    """Calls the wrapped function; a wrapped class is instantiated (and set up, torn down) once per worker, as
    durabatch does for a class given directly."""

    def __init__(self, fn: Callable[[dict], Any], key: str):
        self.fn, self.key = fn, key
        self._target: Any = None

    def setup(self) -> None:
        self._target = self.fn() if inspect.isclass(self.fn) else self.fn
        if inspect.isclass(self.fn) and callable(getattr(self._target, "setup", None)):
            self._target.setup()

    def teardown(self) -> None:
        if inspect.isclass(self.fn) and callable(getattr(self._target, "teardown", None)):
            self._target.teardown()

    def _call(self, record: dict) -> Any:
        if self._target is None:
            self.setup()
        return self._target(record)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_target": None}  # each worker builds its own instance


class Flaky(_Wrapper):
    """fn, except that each key's first `failures` calls raise TransientError: tests that a job retries
    transient errors to success (e.g. `durabatch.run(Flaky(fn, tmp_path / "calls"), ..., backoff_base=0)`) and
    how many calls it took (`flaky.calls.count(key)`). Counting is per key, in `calls_dir`, across processes
    and runs. `keys` limits the flakiness to those keys (None: every key). Synchronous functions only."""

    def __init__(self, fn: Callable[[dict], Any], calls_dir: str | os.PathLike[str], failures: int = 1,
                 keys: Iterable[object] | None = None, key: str = "id"):
        super().__init__(fn, key)
        self.calls = Calls(calls_dir)
        self.failures = failures
        self.keys = None if keys is None else frozenset(map(str, keys))

    def __call__(self, record: dict) -> Any:
        key = record[self.key]
        n = self.calls.add(key)
        if n <= self.failures and (self.keys is None or str(key) in self.keys):
            raise TransientError(f"flaky: dropped connection for {key} (call {n} of {self.failures} that fail)")
        return self._call(record)


Harm = Literal["exit", "segfault", "hang", "raise"]


class PoisonError(RuntimeError):
    """What Poison(how="raise") raises: not transient, so the item fails without retries."""


class Poison(_Wrapper):
    """fn, except on the listed keys, where it does harm a job must survive: "exit" ends the worker process
    (posix._exit, below durabatch's os._exit guard), "segfault" kills it with SIGSEGV as a crashing C extension
    would, "hang" never returns, "raise" raises PoisonError (not retried). On the processes engine "exit" and
    "segfault" test quarantine: only the poison keys end up quarantined, every other item completes; "hang" tests
    item_timeout (the item fails with a timeout). On inline, "exit" and "segfault" kill the runner itself (that
    is what --supervise is for). Synchronous functions only."""

    def __init__(self, fn: Callable[[dict], Any], keys: Iterable[object], how: Harm = "exit", key: str = "id",
                 exit_code: int = 3):
        if how not in ("exit", "segfault", "hang", "raise"):
            raise ValueError(f"how={how!r}: expected exit, segfault, hang or raise")
        super().__init__(fn, key)
        self.keys = frozenset(map(str, keys))
        self.how = how
        self.exit_code = exit_code

    def __call__(self, record: dict) -> Any:
        key = record[self.key]
        if str(key) not in self.keys:
            return self._call(record)
        if self.how == "exit":
            # posix._exit, not os._exit: durabatch turns a function's os._exit into that item's failure, and this
            # is a real death (a C library's exit(), a killed worker) that only quarantine can answer.
            posix._exit(self.exit_code)
        if self.how == "segfault":
            os.kill(os.getpid(), signal.SIGSEGV)
        if self.how == "hang":
            while True:  # until the item timeout: SIGALRM interrupts the sleep, or the engine kills the worker
                time.sleep(3600)
        raise PoisonError(f"poison key {key}")
