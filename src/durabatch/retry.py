"""Retry policy: how many attempts, how long to wait, which errors are worth another try.

Policies are tiny callables; the runner keeps waiting items in a delay queue, never in a worker slot."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from .work import ItemError

# Programming errors: another attempt gives the same answer.
FATAL = frozenset({"ValueError", "TypeError", "KeyError", "AttributeError", "IndexError", "BadRow",
                   "BatchLengthError", "NotImplementedError", "ZeroDivisionError", "AssertionError"})


def full_jitter(base: float = 1.0, cap: float = 60.0) -> Callable[[int], float]:
    """Exponential backoff with full jitter: attempt n waits U(0, min(cap, base * 2**(n-1)))."""
    return lambda attempt: random.uniform(0, min(cap, base * 2 ** (attempt - 1)))


def default_retryable(error: ItemError) -> bool:
    return error.error_type not in FATAL


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 1
    backoff: Callable[[int], float] = field(default_factory=full_jitter)
    retryable: Callable[[ItemError], bool] = default_retryable

    def should_retry(self, error: ItemError, attempt: int) -> bool:
        return attempt < self.max_attempts and self.retryable(error)

    def delay(self, attempt: int) -> float:
        return self.backoff(attempt)
