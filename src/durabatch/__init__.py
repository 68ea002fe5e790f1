"""durabatch: run a function over a large dataset as a job that survives kill -9, resumes by itself and commits
every result exactly once."""

from .api import retry_failed, run
from .config.settings import JobSettings
from .core.events import Observer, Stats
from .core.runner import RunSummary
from .errors import (
    ChangedJobError,
    ConfigError,
    DurabatchError,
    InputError,
    LedgerError,
    RunLockedError,
)
from .loops.checkpointer import CallableState, Checkpointer, PickleState
from .loops.torch import TorchState
from .observe.floodguard import guard_logs
from .observe.status import status
from .policies.limits import report_headers
from .policies.retry import RetryPolicy
from .store.export import UnfinishedError, export
from .store.verify import verify

__version__ = "0.1.0"

__all__ = [
    "CallableState", "ChangedJobError", "Checkpointer", "ConfigError", "DurabatchError", "InputError", "JobSettings",
    "LedgerError", "Observer", "PickleState", "RetryPolicy", "RunLockedError", "RunSummary", "Stats", "TorchState",
    "UnfinishedError", "export", "guard_logs", "report_headers", "retry_failed", "run", "status", "verify",
]
