"""Errors durabatch raises on purpose. One base class, a shallow tree:

    DurabatchError                 anything durabatch reports to the user (CLI exit 2)
    ├── ConfigError                a bad setting, job file or function reference
    ├── InputError                 a bad source: malformed row, missing key column, duplicate keys
    ├── ChangedJobError            resume refused: the job's fingerprint differs (carries the diff)
    ├── RunLockedError             another process holds the run directory (carries its pid)
    ├── LedgerError                the ledger or a shard is unreadable or inconsistent
    └── DiskFullError              no space left for a shard or the ledger; resumable once space is freed
"""

from __future__ import annotations


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
