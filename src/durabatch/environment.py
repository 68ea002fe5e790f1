"""The process environment, read in one place at the edge: the CLI, api.py, the supervisor and the Checkpointer
(a loop's own entry point) ask here; the core and the policies get plain values."""

from __future__ import annotations

import os

SUPERVISED = "DURABATCH_SUPERVISED"  # set by the supervisor in its child: the child must not supervise again


def slurm_end_time() -> str | None:
    """Slurm's job end time (epoch seconds), when running as a Slurm job that exports it."""
    return os.environ.get("SLURM_JOB_END_TIME")


def supervised() -> bool:
    return bool(os.environ.get(SUPERVISED))


def variables() -> dict[str, str]:
    return dict(os.environ)


SECRET_WORDS = ("KEY", "TOKEN", "SECRET", "PASSWORD")


def secret_values() -> dict[str, str]:
    """{name: value} of the variables whose name says they hold a secret (…KEY, …TOKEN, …SECRET, …PASSWORD):
    redacted from error messages and tracebacks before they are stored (errors.install_redaction)."""
    return {name: value for name, value in os.environ.items()
            if value and any(word in name.upper() for word in SECRET_WORDS)}
