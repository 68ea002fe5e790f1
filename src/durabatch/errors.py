"""Errors durabatch raises on purpose. One base class, a shallow tree:

    DurabatchError                 anything durabatch reports to the user (CLI exit 2)
    ├── ConfigError                a bad setting, job file or function reference
    ├── InputError                 a bad source: malformed row, missing key column, duplicate keys
    ├── ChangedJobError            resume refused: the job's fingerprint differs (carries the diff)
    ├── RunLockedError             another process holds the run directory (carries its pid)
    ├── LedgerError                the ledger or a shard is unreadable or inconsistent
    ├── DiskFullError              no space left for a shard or the ledger; resumable once space is freed
    └── StorageError               a worker (a Ray actor) could not write its shard to the run directory

Beside the tree, the vocabulary every layer shares: `ExitCode` (the one place exit codes are defined),
`ErrorKind` (the error types durabatch itself records for an item) and `ItemError` (why one item failed), and
the BaseExceptions durabatch raises inside the user's code: `ItemTimeout`, `ProcessExit`, `StopInterrupt`.

Secrets: the edge installs the values of secret-looking environment variables (`install_redaction`); every
`ItemError.from_exception` replaces them by their variable's name, so they never reach the ledger.
"""

from __future__ import annotations

import contextlib
import re
import traceback
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Any


class ExitCode(IntEnum):
    """What `durabatch run` (and the supervisor) exit with; a wrapper (Slurm, systemd, bash) can act on them."""

    DONE = 0  # every item done
    FAILED = 1  # finished, with failed, quarantined or interrupted items (listed)
    USAGE = 2  # usage, configuration or input error
    INTERNAL = 70  # EX_SOFTWARE: a durabatch bug (a traceback is printed); the supervisor restarts after it
    GAVE_UP = 70  # the supervisor stopped restarting (a crash loop, or --restarts used up)
    STOPPED = 75  # stopped early (signal, deadline, budget) and resumable: EX_TEMPFAIL


class ErrorKind(StrEnum):
    """Error types durabatch records for an item itself (a user's exception is recorded by its class name)."""

    WORKER_DIED = "WorkerDied"  # the worker process died under the item's batch
    WORKER_LOST = "WorkerLost"  # lost with its node or actor (Ray), not the item's fault: retried, never pinned
    ITEM_TIMEOUT = "ItemTimeout"  # past --item-timeout
    NOT_STARTED = "NotStarted"  # never started because the run was stopping: not a failure, redone next run
    INTERRUPTED = "Interrupted"  # at-most-once: the call may have happened; never re-called by itself
    QUARANTINED = "Quarantined"  # killed its worker or the runner K times running alone
    BAD_ROW = "BadRow"  # an input row that cannot be read or has no key
    INPUT = "InputError"  # the input cannot be read as it was planned (changed during the run): the run stops
    STORAGE = "StorageError"  # a worker could not write to the run directory (Ray actors' shards): the run stops
    BATCH_LENGTH = "BatchLengthError"  # a batch function returned the wrong number or shape of results
    UNSTORABLE = "UnstorableResult"  # a result durabatch cannot store as it is (an object, a generator, a set)
    PROCESS_EXIT = "ProcessExit"  # the function tried to end the process (os._exit)


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


class StorageError(DurabatchError):
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
    limit_rpm: float | None = None  # the requests-per-minute limit its response's x-ratelimit headers state

    @classmethod
    def from_exception(cls, exc: BaseException) -> ItemError:
        tb = redact("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
        kinds = tuple(k.__name__ for k in type(exc).__mro__ if k not in (object, BaseException))
        if isinstance(exc, ItemTimeout):
            kinds += ("TimeoutError",)  # retry rules written for the TimeoutError it used to derive from
        message = redact(str(exc))[:2000]
        return cls(type(exc).__qualname__, message, tb[-8000:], kinds, _status(exc), _retry_after(exc),
                   _limit_rpm(exc))


# -- redaction of secrets ------------------------------------------------------------------------------------------
_SECRETS: dict[str, str] = {}  # value -> the name of the environment variable that holds it
MIN_SECRET = 6  # shorter values ("1", "true") are not worth mangling every message for


def install_redaction(secrets: Mapping[str, str]) -> None:
    """{variable name: value} of secrets (read by the edge: environment.secret_values()) to redact from now on."""
    _SECRETS.clear()
    for name, value in sorted(secrets.items(), key=lambda item: -len(item[1] or "")):  # longest first
        if value and len(value) >= MIN_SECRET:
            _SECRETS[value] = name


def redaction() -> dict[str, str]:
    """What is installed, as {name: value} (process workers get it with their work)."""
    return {name: value for value, name in _SECRETS.items()}


@contextlib.contextmanager
def redacting(secrets: Mapping[str, str]) -> Iterator[None]:
    previous = redaction()
    install_redaction(secrets)
    try:
        yield
    finally:
        install_redaction(previous)


def redact(text: str) -> str:
    for value in _SECRETS:
        if value in text:
            text = text.replace(value, f"[redacted ${_SECRETS[value]}]")
    return text


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


def ratelimit_headers(headers: Any) -> tuple[float | None, float | None, float | None]:
    """(limit per minute, remaining, seconds to reset) of requests from OpenAI-style x-ratelimit-limit-requests,
    x-ratelimit-remaining-requests, x-ratelimit-reset-requests headers (any mapping with .get); None where absent
    or unreadable."""
    def number(name: str) -> float | None:
        try:
            value = headers.get(name)
            return float(value) if value not in (None, "") else None
        except (TypeError, ValueError, AttributeError):
            return None

    try:
        reset = _duration(headers.get("x-ratelimit-reset-requests"))
    except (TypeError, AttributeError):
        reset = None
    return number("x-ratelimit-limit-requests"), number("x-ratelimit-remaining-requests"), reset


def _limit_rpm(exc: BaseException) -> float | None:
    response = getattr(exc, "response", None)
    headers = getattr(exc, "headers", None) or getattr(response, "headers", None)
    return ratelimit_headers(headers)[0] if headers is not None else None


def _duration(text: str | None) -> float | None:
    """'1s', '6m0s', '20ms', '1h2m3.5s' -> seconds."""
    if not text:
        return None
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", text)
    if not parts:
        return None
    scale = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    return sum(float(n) * scale[u] for n, u in parts)


class ItemTimeout(BaseException):
    """An item took longer than --item-timeout. Raised inside the function's code, so not an Exception: an
    `except Exception` around a hang must not turn it into a result."""


class ProcessExit(BaseException):
    """Raised where the function called os._exit(): ending the process is that item's failure, not the run's end."""


class StopInterrupt(KeyboardInterrupt):
    """A real second Ctrl-C / SIGTERM, raised inside the user's code by the stop flag (policies/stopping.py): the
    only KeyboardInterrupt that stops a run. One the function raises itself is that item's failure."""


# -- hints in the caller's own spelling -----------------------------------------------------------------------------
# A message that tells the user what to do next names a setting or a command the way the caller writes it:
# `--allow-changed` for the command line, `allow_changed=True` in Python (the default: a notebook is Python). The CLI
# switches to its spelling for the duration of a command (`cli_spelling`, giving the flags whose names differ from
# their setting's), so a message is spelled right where it is written, deep in the core, without string rewriting.
_CLI_FLAGS: dict[str, str] | None = None  # None: Python spelling
PYTHON_NAMES = {"input": "source"}  # settings that durabatch.run() takes under another name


def option(name: str, value: Any = True) -> str:
    """A setting as the caller sets it: `--allow-changed` / `allow_changed=True`, `--engine processes` /
    `engine='processes'`; value None names it only: `--item-timeout` / `item_timeout` (name: the JobSettings
    field)."""
    if _CLI_FLAGS is None:
        name = PYTHON_NAMES.get(name, name)
        return name if value is None else f"{name}={value!r}"
    flag = _CLI_FLAGS.get(name, "--" + name.replace("_", "-"))
    return flag if value is True or value is None else f"{flag} {value}"


def command(name: str, run_dir: Any, **options: Any) -> str:
    """A follow-up command: `durabatch export RUN --failed --to F` / `durabatch.export('RUN', failed=True,
    to='F')` (name: the subcommand, whose Python function has the same name with '_' for '-')."""
    if _CLI_FLAGS is None:
        args = [repr(str(run_dir)), *(f"{k}={v!r}" for k, v in options.items())]
        return f"durabatch.{name.replace('-', '_')}({', '.join(args)})"
    flags = ["--" + k.replace("_", "-") + ("" if v is True else f" {v}") for k, v in options.items()]
    return " ".join(["durabatch", name, str(run_dir), *flags])


def run_again() -> str:
    """How to resume: the same command, or the same durabatch.run() call."""
    return ("run the same command again" if _CLI_FLAGS is not None
            else "call durabatch.run() again with the same run_dir")


def cli_spelling(flags: Mapping[str, str]) -> Callable[[], None]:
    """Spell hints for the command line from now on; returns the function that restores the previous spelling."""
    global _CLI_FLAGS
    previous, _CLI_FLAGS = _CLI_FLAGS, dict(flags)

    def restore() -> None:
        global _CLI_FLAGS
        _CLI_FLAGS = previous
    return restore
