"""Fail fast: a job whose items all fail the same way (a typo, a wrong key, an expired API key) stops after a bounded
number of them instead of burning through a million items or an API budget.

Only final failures count (an item that will be retried has not failed yet); any success starts the count again.
Counts are per error type, so two errors in turn with nothing succeeding stop the run too."""

from __future__ import annotations

from ..errors import command, option, run_again

REASON = "too many failures"


class FailFast:
    """limit: failures of one error type in a row (no success between) that stop the run; 0 never stops."""

    def __init__(self, limit: int):
        self.limit = limit
        self._counts: dict[str, int] = {}
        self.tripped: str | None = None  # the message, once the limit was reached

    def succeeded(self) -> None:
        if self._counts:
            self._counts.clear()

    def failed(self, error_type: str, message: str) -> bool:
        """Count one final failure; True the first time the limit is reached."""
        if not self.limit or self.tripped is not None:
            return False
        count = self._counts[error_type] = self._counts.get(error_type, 0) + 1
        if count < self.limit:
            return False
        self.tripped = (f"stopping: the last {count} items failed with {error_type}: {message[:300]} (and none "
                        f"succeeded in between). Fix the cause, then `{command('retry-failed', 'RUN_DIR')}` and "
                        f"{run_again()}; to go on through such failures, raise "
                        f"{option('max_consecutive_failures', None)} (0: never stop)")
        return True
