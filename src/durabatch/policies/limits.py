"""Rate limits for API workloads: requests- and tokens-per-minute buckets shared by every worker, a global pause
when the provider says Retry-After, and adaptive limits that find a limit nobody stated (cut on 429, regrow
slowly on success) and then hold it.

Everything takes `clock` so tests of minute-long windows run in milliseconds. A bucket never sleeps itself: it
returns how long the caller must wait, so the same object serves threads (time.sleep) and asyncio (await)."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from typing import Any

from ..errors import ratelimit_headers
from .api_metrics import ApiMetrics, usage_of

Clock = Callable[[], float]
RECHECK = 0.25  # seconds: a longer wait set by the adaptive rate is asked again, not held (RateLimiter.place)


class TokenBucket:
    """`rate` tokens per second, bursts up to `capacity`. reserve(n) takes n tokens now, going into debt if
    needed, and returns the seconds to wait before using them: callers queue in arrival order."""

    def __init__(self, rate: float, capacity: float | None = None, clock: Clock = time.monotonic):
        self.rate = rate
        self.capacity = capacity if capacity is not None else max(1.0, rate)  # one second's worth
        self.clock = clock
        self._level = self.capacity
        self._at = clock()
        self._lock = threading.Lock()

    def _refill(self, now: float) -> None:
        self._level = min(self.capacity, self._level + (now - self._at) * self.rate)
        self._at = now

    def reserve(self, n: float = 1.0) -> float:
        with self._lock:
            now = self.clock()
            self._refill(now)
            self._level -= n
            return 0.0 if self._level >= 0 else -self._level / self.rate

    def refund(self, n: float) -> None:
        """Give back (n > 0) or take more (n < 0) once the true cost is known, e.g. actual token usage."""
        with self._lock:
            self._refill(self.clock())
            self._level = min(self.capacity, self._level + n)

    def set_rate(self, rate: float, capacity: float | None = None) -> None:
        with self._lock:
            self._refill(self.clock())
            self.rate = rate
            self.capacity = capacity if capacity is not None else max(1.0, rate)
            self._level = min(self._level, self.capacity)


@dataclass
class AdaptiveRate:
    """The request rate when no limit was stated and no header told it. Slow start: `start` requests/s, doubled
    every half second without a 429 (past `unlimited` there is no limit to find: the bucket goes). On a 429: `cut` of
    the lower of the current rate and the rate the server *admitted* lately (successes, which is the limit when
    saturated), then regrow by `grow` per `every` seconds without a 429. A continuous-refill limit forgives no
    overshoot, so the regrowth is slow: a few 429s per minute at most. One cut, then none until a request is
    admitted again: a storm that refuses everything (an overload, a quota another job drained) is waited out by
    Retry-After; cutting on each of its 429s compounds (0.9 ** 30 after 30 s) and slow regrowth pays for it."""

    start: float = 5.0
    cut: float = 0.9
    grow: float = 0.01
    every: float = 2.0
    window: float = 10.0
    unlimited: float = 1000.0
    clock: Clock = time.monotonic
    rate: float | None = None  # requests per second; None = no limit (set by __post_init__ to `start`)
    found: bool = False  # a 429 (or a learned rate) has set the rate: no more slow start
    _ok: deque = field(default_factory=deque)
    _last_change: float = 0.0
    _admitted_since_cut: bool = False

    def __post_init__(self) -> None:
        self.rate = self.start
        self._last_change = self.clock()

    def observed(self) -> float:
        """Successes per second over the last `window` seconds (0 when too few to say)."""
        now = self.clock()
        while self._ok and self._ok[0] < now - self.window:
            self._ok.popleft()
        if len(self._ok) < 2:
            return 0.0
        return len(self._ok) / max(now - self._ok[0], 1e-3)

    def on_rate_limited(self) -> float | None:
        now = self.clock()
        if self.found and (now - self._last_change < 1.0 or not self._admitted_since_cut):
            return self.rate  # one cut per burst of 429s, and none again before the cut rate is tried
        admitted = self.observed()
        if not self.found and not admitted:
            # Refused before anything was admitted (a burst of 429s at start-up, a quota still resetting): that
            # says nothing of the rate. The caller waits out the pause; then the slow start begins again (a cut
            # here would be of the 5/s ramp's start, and regrowth at 1% per 2 s takes minutes).
            self.rate, self._last_change = self.start, now
            return self.rate
        current = self.rate if self.rate is not None else float("inf")
        base = min(current, admitted or current)
        self.rate = max(0.1, (base if base != float("inf") else 1.0) * self.cut)
        self.found, self._admitted_since_cut = True, False
        self._last_change = now
        return self.rate

    def on_success(self) -> float | None:
        now = self.clock()
        self._ok.append(now)
        self._admitted_since_cut = True
        if self.rate is None or now - self._last_change < (self.every if self.found else 0.5):
            return self.rate
        self._last_change = now
        self.rate *= 1 + self.grow if self.found else 2.0
        if not self.found and self.rate > self.unlimited:
            self.rate = None
        return self.rate

    def seed(self, rate: float) -> None:
        """A rate learned by an earlier run (kept in the run directory): start there, no slow start."""
        self.rate, self.found, self._last_change = rate, True, self.clock()


class RateLimiter:
    """One named limit (a provider or a model): rpm and tpm buckets, the Retry-After pause, and, without a
    stated rpm, the rate the provider's x-ratelimit-* headers give (see `report_headers`), else an adaptive rate.
    Thread-safe; `wait_time` is called before each request."""

    def __init__(self, name: str = "default", rpm: float | None = None, tpm: float | None = None,
                 tokens_per_item: float = 500.0, clock: Clock = time.monotonic):
        self.name = name
        self.clock = clock
        self.tokens_per_item = tokens_per_item
        self.stated = rpm is not None
        self.header_rpm: float | None = None  # the limit the provider's headers state
        self.requests = _requests_bucket(rpm, clock) if rpm else None
        self.tokens = TokenBucket(tpm / 60, capacity=max(tpm / 60, tokens_per_item), clock=clock) if tpm else None
        self.adaptive = None if rpm else AdaptiveRate(clock=clock)
        self._adaptive_bucket = None if rpm else _adaptive_bucket(self.adaptive.rate, clock)
        self.paused_until = 0.0
        self.rate_limited = 0  # 429s seen
        self._lock = threading.Lock()

    def wait_time(self, tokens: float | None = None) -> float:
        """Seconds to wait before sending one request estimated at `tokens` tokens (reserves them)."""
        return self.place(tokens, recheck=None)[0]

    def place(self, tokens: float | None = None, recheck: float | None = RECHECK) -> tuple[float, bool]:
        """(seconds to wait, held) for one request of `tokens` tokens. Held: its place in the buckets is reserved,
        go after the wait. Not held: the wait comes from the adaptive rate and is longer than `recheck`, so nothing
        is reserved: sleep it and ask again. A queue of calls reserved at the 5/s of a slow start would otherwise
        keep waits of many seconds after the rate has doubled a few times, or a header has stated the limit."""
        estimate = tokens if tokens is not None else self.tokens_per_item
        with self._lock:
            now = self.clock()
            wait = max(0.0, self.paused_until - now)
            adaptive = 0.0
            if self.requests is not None:
                wait = max(wait, self.requests.reserve(1))
            elif self._adaptive_bucket is not None:
                adaptive = self._adaptive_bucket.reserve(1)
            by_tokens = self.tokens.reserve(estimate) if self.tokens is not None else 0.0
            if recheck is not None and adaptive > recheck and adaptive >= by_tokens and self._adaptive_bucket:
                self._adaptive_bucket.refund(1)
                if self.tokens is not None:
                    self.tokens.refund(estimate)
                return max(wait, recheck), False
            return max(wait, adaptive, by_tokens), True

    def pause_left(self) -> float:
        return max(0.0, self.paused_until - self.clock())

    def used(self, estimated: float | None, usage: dict | None) -> None:
        """Correct the token bucket with what the call really used."""
        if self.tokens is not None and usage is not None:
            self.tokens.refund((estimated if estimated is not None else self.tokens_per_item) - usage["total"])

    def on_success(self) -> None:
        if self.adaptive is not None and self.requests is None:
            with self._lock:
                self._set_adaptive(self.adaptive.on_success())

    def _set_adaptive(self, rate: float | None) -> None:
        if rate is None:
            self._adaptive_bucket = None
        elif self._adaptive_bucket is None:
            self._adaptive_bucket = _adaptive_bucket(rate, self.clock)
        elif rate != self._adaptive_bucket.rate:
            self._adaptive_bucket.set_rate(rate, _burst(rate))

    def on_rate_limited(self, retry_after: float | None) -> None:
        """A 429: pause everyone until Retry-After allows, and (without a stated limit) slow down."""
        with self._lock:
            self.rate_limited += 1
            if retry_after:
                self.paused_until = max(self.paused_until, self.clock() + retry_after)
            if self.adaptive is not None and self.requests is None:
                self._set_adaptive(self.adaptive.on_rate_limited())

    def on_headers(self, limit: float | None, remaining: float | None, reset: float | None) -> None:
        """What the provider's x-ratelimit-{limit,remaining,reset}-requests headers say (limit: per minute, as
        OpenAI's): a stated limit needs none of it; otherwise the limit becomes the requests bucket (a rate known
        before the first 429), and no requests remaining pauses everyone until the reset."""
        if self.stated:
            return
        with self._lock:
            if limit and limit > 0 and limit != self.header_rpm:
                self.header_rpm = float(limit)
                self.requests = _requests_bucket(self.header_rpm, self.clock)
            if remaining is not None and remaining <= 0 and reset:
                self.paused_until = max(self.paused_until, self.clock() + reset)

    def learned(self) -> dict | None:
        """The rate this limiter found (from headers or 429s), to keep in the run directory; None if none."""
        if self.stated:
            return None
        if self.header_rpm:
            return {"rpm": self.header_rpm, "from": "headers"}
        if self.adaptive is not None and self.adaptive.found and self.adaptive.rate:
            return {"rpm": round(self.adaptive.rate * 60, 3), "from": "429s"}
        return None

    def seed(self, learned: dict) -> None:
        """Start from what an earlier run learned: a resumed run starts near the limit, without a slow start."""
        rpm = learned.get("rpm") if isinstance(learned, dict) else None
        if self.stated or not isinstance(rpm, int | float) or rpm <= 0:
            return
        if learned.get("from") == "headers":
            self.on_headers(rpm, None, None)
        elif self.adaptive is not None:
            self.adaptive.seed(rpm / 60)
            with self._lock:
                self._set_adaptive(self.adaptive.rate)


def _requests_bucket(rpm: float, clock: Clock) -> TokenBucket:
    # Providers count requests in fixed windows or refill continuously: a bucket at 98.5% of the rate with a
    # burst of 1.5% of a second's worth never puts more than the limit in any one-second window, and still uses
    # 98.5% of it.
    return TokenBucket(0.985 * rpm / 60, capacity=max(1.0, 0.015 * rpm / 60), clock=clock)


def _burst(rate: float) -> float:
    return max(1.0, rate / 20)


def _adaptive_bucket(rate: float | None, clock: Clock) -> TokenBucket | None:
    return TokenBucket(rate, capacity=_burst(rate), clock=clock) if rate else None


# -- headers the user's function reports ---------------------------------------------------------------------------
_REPORTED: ContextVar[RateLimiter | None] = ContextVar("durabatch_limiter", default=None)


def report_headers(headers: Any) -> None:
    """Called inside the user's function with a response's headers (any mapping with .get, e.g. the openai
    client's `with_raw_response` headers): the limiter of the current call learns the provider's limit from
    x-ratelimit-limit-requests / -remaining-requests / -reset-requests. Outside a rate-limited call, a no-op."""
    limiter = _REPORTED.get()
    if limiter is None or headers is None:
        return
    limit, remaining, reset = ratelimit_headers(headers)
    if limit is not None or remaining is not None:
        limiter.on_headers(limit, remaining, reset)


def reporting_to(limiter: RateLimiter) -> Token:
    """Make `report_headers` inside the next call reach `limiter` (the engines set it around each call)."""
    return _REPORTED.set(limiter)


def is_rate_limited(error: object) -> bool:
    """HTTP 429 or a RateLimitError by name (openai, anthropic, ...), without importing those packages."""
    status = getattr(error, "status", None)
    kinds = getattr(error, "kinds", ()) or (getattr(error, "error_type", ""),)
    return status == 429 or "RateLimitError" in kinds or "TooManyRequests" in kinds


@dataclass(frozen=True)
class LimitSpec:
    rpm: float | None = None
    tpm: float | None = None


class Limits:
    """The job's limits: one RateLimiter per name (a provider or a model), chosen per record by the field
    `limit_by`; "default" otherwise."""

    def __init__(self, specs: dict[str, LimitSpec] | None = None, limit_by: str | None = None,
                 tokens_per_item: float = 500.0, metrics: ApiMetrics | None = None, clock: Clock = time.monotonic):
        specs = specs or {"default": LimitSpec()}
        self.limiters = {name: RateLimiter(name, s.rpm, s.tpm, tokens_per_item, clock) for name, s in specs.items()}
        self.limit_by = limit_by
        self.tokens_per_item = tokens_per_item
        self.metrics = metrics or ApiMetrics(clock=clock)

    def for_record(self, record: dict) -> RateLimiter:
        name = record.get(self.limit_by) if self.limit_by else None
        return self.limiters.get(str(name)) or self.limiters.get("default") or next(iter(self.limiters.values()))

    def estimate(self, record: dict) -> float:
        return self.tokens_per_item

    def learned(self) -> dict[str, dict]:
        """{limiter name: what it learned} for the ledger meta `learned_limits` (written with each commit)."""
        return {name: found for name, limiter in self.limiters.items() if (found := limiter.learned())}

    def seed(self, learned: object) -> None:
        """Start each limiter from what an earlier run of this job learned (the ledger meta `learned_limits`)."""
        if isinstance(learned, dict):
            for name, found in learned.items():
                if name in self.limiters:
                    self.limiters[name].seed(found)

    @staticmethod
    def usage_of(output: object) -> dict | None:
        return usage_of(output)
