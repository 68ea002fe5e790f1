"""durabatch: run a function over a large dataset as a job that survives kill -9, resumes by itself and commits
every result exactly once."""

from .api import run
from .errors import (
    ChangedJobError,
    ConfigError,
    DurabatchError,
    InputError,
    LedgerError,
    RunLockedError,
)
from .integrations.torch import TorchState
from .loop import CallableState, Checkpointer, PickleState
from .observe import Observer, Stats
from .observe.floodguard import guard_logs
from .output import export
from .retry import RetryPolicy
from .runner import RunSummary
from .settings import JobSettings
from .status import status

__version__ = "0.1.0"

__all__ = [
    "CallableState", "ChangedJobError", "Checkpointer", "ConfigError", "DurabatchError", "InputError", "JobSettings",
    "LedgerError", "Observer", "PickleState", "RetryPolicy", "RunLockedError", "RunSummary", "Stats", "TorchState",
    "export", "guard_logs", "run", "status",
]
