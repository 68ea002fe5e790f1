"""Errors durabatch raises on purpose. One base class, a shallow tree:

    DurabatchError                 anything durabatch reports to the user (CLI exit 2)
    ├── ConfigError                a bad setting, job file or function reference
    ├── InputError                 a bad source: malformed row, missing key column, duplicate keys
    ├── ChangedJobError            resume refused: the job's fingerprint differs (carries the diff)
    ├── RunLockedError             another process holds the run directory (carries its pid)
    ├── LedgerError                the ledger or a shard is unreadable or inconsistent
    └── DiskFullError              no space left for a shard or the ledger; resumable once space is freed

Beside the tree, the vocabulary every layer shares: `ExitCode` (the one place exit codes are defined),
`ErrorKind` (the error types durabatch itself records for an item) and `ItemError` (why one item failed).
"""

from __future__ import annotations

import re
import traceback
from dataclasses import dataclass
from enum import IntEnum, StrEnum


class ExitCode(IntEnum):
    """What `durabatch run` (and the supervisor) exit with; a wrapper (Slurm, systemd, bash) can act on them."""

    DONE = 0  # every item done
    FAILED = 1  # finished, with failed, quarantined or interrupted items (listed)
    USAGE = 2  # usage, configuration or input error
    GAVE_UP = 70  # the supervisor stopped restarting (a crash loop, or --restarts used up): EX_SOFTWARE
    STOPPED = 75  # stopped early (signal, deadline, budget) and resumable: EX_TEMPFAIL


class ErrorKind(StrEnum):
    """Error types durabatch records for an item itself (a user's exception is recorded by its class name)."""

    WORKER_DIED = "WorkerDied"  # the worker process died under the item's batch
    ITEM_TIMEOUT = "ItemTimeout"  # past --item-timeout
    NOT_STARTED = "NotStarted"  # never started because the run was stopping: not a failure, redone next run
    INTERRUPTED = "Interrupted"  # at-most-once: the call may have happened; never re-called by itself
    QUARANTINED = "Quarantined"  # killed its worker or the runner K times running alone
    BAD_ROW = "BadRow"  # an input row that cannot be read or has no key
    BATCH_LENGTH = "BatchLengthError"  # a batch function returned the wrong number or shape of results


class DurabatchError(Exception):
    """Base class: the message is meant for the user as it is."""


class ConfigError(DurabatchError):
    pass


class InputError(DurabatchError):
    pass


class ChangedJobError(DurabatchError):
    def __init__(self, message: str, diff: list[str]):
        super().__init__(message)
        self.diff = diff


class RunLockedError(DurabatchError):
    def __init__(self, message: str, pid: int | None):
        super().__init__(message)
        self.pid = pid


class LedgerError(DurabatchError):
    pass


class DiskFullError(DurabatchError):
    pass


@dataclass(frozen=True, slots=True)
class ItemError:
    """Why one item failed: what the ledger records and `export --failed` shows."""

    error_type: str
    message: str
    traceback: str
    kinds: tuple[str, ...] = ()  # names of the exception's classes (MRO), for retry rules
    status: int | None = None  # an HTTP status the exception carries, if any
    retry_after: float | None = None  # seconds the server asked us to wait, if it said

    @classmethod
    def from_exception(cls, exc: BaseException) -> ItemError:
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        kinds = tuple(k.__name__ for k in type(exc).__mro__ if k not in (object, BaseException))
        return cls(type(exc).__qualname__, str(exc)[:2000], tb[-8000:], kinds, _status(exc), _retry_after(exc))


def _status(exc: BaseException) -> int | None:
    """The HTTP status of openai / httpx / requests / aiohttp errors, found by attribute, without importing them."""
    for holder in (exc, getattr(exc, "response", None)):
        for name in ("status_code", "status"):
            value = getattr(holder, name, None)
            if isinstance(value, int):
                return value
    return None


def _retry_after(exc: BaseException) -> float | None:
    """Seconds the server asked to wait: Retry-After (seconds), retry-after-ms, or x-ratelimit-reset-* ("1s",
    "6m0s", "20ms"), found on the exception or its response, whatever the HTTP library."""
    for holder in (exc, getattr(exc, "response", None)):
        value = getattr(holder, "retry_after", None)
        if isinstance(value, int | float):
            return float(value)
        headers = getattr(holder, "headers", None)
        if headers is None:
            continue
        try:
            if headers.get("retry-after-ms"):
                return float(headers.get("retry-after-ms")) / 1000
            if headers.get("retry-after"):
                return float(headers.get("retry-after"))
            resets = [_duration(headers.get(h)) for h in ("x-ratelimit-reset-requests", "x-ratelimit-reset-tokens")]
            resets = [r for r in resets if r is not None]
            if resets:
                return max(resets)
        except (TypeError, ValueError, AttributeError):
            return None
    return None


def _duration(text: str | None) -> float | None:
    """'1s', '6m0s', '20ms', '1h2m3.5s' -> seconds."""
    if not text:
        return None
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", text)
    if not parts:
        return None
    scale = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    return sum(float(n) * scale[u] for n, u in parts)


class ItemTimeout(TimeoutError):
    """An item took longer than --item-timeout."""
