"""Retry policy: how many attempts, how long to wait, which errors are worth another try.

Policies are tiny callables (tenacity's shape): a backoff is `attempt -> seconds`, a rule is `error -> bool`.
The runner keeps waiting items in a delay queue, never in a worker slot."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ..errors import ErrorKind, ItemError

# Worth another attempt: timeouts, dropped connections, rate limits, overloaded servers. Names cover the stdlib,
# openai, httpx, requests and aiohttp, matched against the exception's class hierarchy without importing them.
TRANSIENT = frozenset({
    "TimeoutError", "ConnectionError", ErrorKind.ITEM_TIMEOUT, ErrorKind.WORKER_DIED, "BrokenPipeError",
    "APITimeoutError", "APIConnectionError", "RateLimitError", "InternalServerError", "ServiceUnavailableError",
    "TimeoutException", "ConnectTimeout", "ReadTimeout", "WriteTimeout", "PoolTimeout", "NetworkError",
    "RemoteProtocolError", "ConnectError", "ReadError", "Timeout", "ChunkedEncodingError",
    "ClientConnectionError", "ServerDisconnectedError", "ServerTimeoutError", "ClientOSError",
})
TRANSIENT_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
# Programming errors: another attempt gives the same answer.
FATAL = frozenset({"ValueError", "TypeError", "KeyError", "AttributeError", "IndexError", ErrorKind.BAD_ROW,
                   ErrorKind.BATCH_LENGTH, "NotImplementedError", "ZeroDivisionError", "AssertionError"})


def full_jitter(base: float = 1.0, cap: float = 60.0) -> Callable[[int], float]:
    """Exponential backoff with full jitter: after attempt n, wait U(0, min(cap, base * 2**(n-1)))."""
    return lambda attempt: random.uniform(0, min(cap, base * 2 ** (attempt - 1)))


def make_retryable(retry_on: Iterable[str] = (), fatal_on: Iterable[str] = ()) -> Callable[[ItemError], bool]:
    """The user's names come first (fatal_on, then retry_on), then the defaults."""
    fatal, extra = frozenset(fatal_on), frozenset(retry_on)

    def retryable(error: ItemError) -> bool:
        kinds = set(error.kinds) or {error.error_type}
        if kinds & fatal:
            return False
        if kinds & extra:
            return True
        if error.status is not None and error.status in TRANSIENT_STATUS:
            return True
        if error.error_type in FATAL:
            return False
        return bool(kinds & TRANSIENT)

    return retryable


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 3
    backoff: Callable[[int], float] = field(default_factory=full_jitter)
    retryable: Callable[[ItemError], bool] = field(default_factory=make_retryable)

    def should_retry(self, error: ItemError, attempt: int) -> bool:
        return attempt < self.max_attempts and self.retryable(error)

    def delay(self, error: ItemError, attempt: int) -> float:
        """The server's Retry-After when it gave one, else the backoff."""
        if error.retry_after is not None:
            return max(0.0, error.retry_after)
        return self.backoff(attempt)
