"""What an API job counts: calls in flight, requests per minute, 429s, tokens and cost, and the budgets
(--max-tokens, --max-cost) checked before each call.

The counters and the budgets cover the whole job, not one run: a resumed run starts from the totals its ledger
holds (`seed`), so `--max-cost 5` caps what the job spends over all its runs, as a user reading "max cost"
expects. A cheap history (a point per commit, thinned to at most HISTORY_POINTS) lets the report and the
dashboard chart requests/min, 429s, tokens/min and cost over time."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

Clock = Callable[[], float]
HISTORY_POINTS = 300  # a point is ~60 bytes of JSON, rewritten with each commit: bounded, whatever the job's length
POINT = ("at", "run", "accepted", "rate_limited", "tokens", "cost")  # one history point, as a list in this order


class ApiMetrics:
    """In flight, requests per minute achieved, 429s, tokens and cost so far (all runs of the job)."""

    def __init__(self, price_input: float | None = None, price_output: float | None = None,
                 max_tokens: int | None = None, max_cost: float | None = None, currency: str = "USD",
                 clock: Clock = time.monotonic):
        self.price_input, self.price_output = price_input, price_output  # per million tokens
        self.max_tokens, self.max_cost = max_tokens, max_cost
        self.currency = currency
        self.over_budget: str | None = None
        self.clock = clock
        self.in_flight = 0
        self.requests = 0  # calls started (a 429 is a call too)
        self.answered = 0  # calls that came back, whatever the answer
        self.rate_limited = 0
        self.retries = 0  # items the runner retried after a transient error (429s are counted apart)
        self.tokens = 0
        self.cost = 0.0
        self.history: list[list] = []  # POINT lists at commits, all runs
        self._base: tuple[int, int, int, float] = (0, 0, 0, 0.0)  # the totals this run started from
        self._born = clock()
        self._recent: deque[tuple[float, int]] = deque()  # (time, tokens) of the last minute's answers
        self._lock = threading.Lock()

    def seed(self, snapshot: object, history: object = None) -> None:
        """Carry on from the totals an earlier run of this job committed (ledger meta `api`, `api_history`)."""
        if isinstance(snapshot, dict):
            def count(name: str, default: Any = 0) -> Any:
                value = snapshot.get(name, default)
                return value if isinstance(value, int | float) and value >= 0 else 0

            with self._lock:
                self.requests = int(count("requests"))
                self.answered = int(count("answered", count("requests") - count("in_flight")))
                self.rate_limited, self.retries = int(count("rate_limited")), int(count("retries"))
                self.tokens, self.cost = int(count("tokens")), float(count("cost"))
                self._base = (self.answered - self.rate_limited, self.rate_limited, self.tokens, self.cost)
        if isinstance(history, list):
            self.history = [p for p in history if isinstance(p, list) and len(p) == len(POINT)]

    def started(self) -> None:
        with self._lock:
            self.in_flight += 1
            self.requests += 1

    def try_start(self, estimate: float) -> bool:
        """Start a call unless it could pass a budget (counting calls in flight at the average cost so far)."""
        with self._lock:
            done = max(1, self.requests - self.in_flight)
            per_call = max(self.tokens / done, estimate) if self.requests > self.in_flight else estimate
            if self.max_tokens and self.tokens + (self.in_flight + 1) * per_call > self.max_tokens:
                self.over_budget = f"{self.tokens:,} tokens used of --max-tokens {self.max_tokens:,} (all runs)"
                return False
            if self.max_cost and self.cost + (self.in_flight + 1) * self.cost / done > self.max_cost:
                self.over_budget = f"{self.cost:.4f} {self.currency} spent of --max-cost {self.max_cost:g} (all runs)"
                return False
            self.in_flight += 1
            self.requests += 1
            return True

    def finished(self, usage: dict | None) -> None:
        with self._lock:
            self.in_flight -= 1
            self.answered += 1
            tokens = int(usage["total"]) if usage else 0
            self.tokens += tokens
            if usage and (self.price_input or self.price_output):
                self.cost += (usage["prompt"] * (self.price_input or 0) +
                              usage["completion"] * (self.price_output or 0)) / 1e6
            now = self.clock()
            self._recent.append((now, tokens))
            while self._recent and self._recent[0][0] < now - 60:
                self._recent.popleft()

    def snapshot(self) -> dict:
        with self._lock:
            now = self.clock()
            recent = [(t, n) for t, n in self._recent if t >= now - 60]
            span = min(60.0, max(1.0, now - recent[0][0])) if recent else 60.0
            return {"in_flight": self.in_flight, "requests": self.requests, "answered": self.answered,
                    "rate_limited": self.rate_limited, "retries": self.retries,
                    "requests_per_min": len(recent) * 60 / span, "tokens": self.tokens,
                    "tokens_per_min": sum(n for _, n in recent) * 60 / span, "cost": round(self.cost, 6),
                    "currency": self.currency}

    def mark(self, at: float, run: int) -> list[list]:
        """A history point at a commit (`at`: wall-clock time), returned with the earlier ones (a copy, for the
        ledger). A run's first point comes after one at its start holding the totals it started from, so that
        every interval of the history lies within one run."""
        with self._lock:
            if not self.history or self.history[-1][1] != run:
                start = at - (self.clock() - self._born)
                self.history.append([round(start, 3), run, *self._base[:3], round(self._base[3], 6)])
            self.history.append([round(at, 3), run, self.answered - self.rate_limited, self.rate_limited,
                                 self.tokens, round(self.cost, 6)])
            if len(self.history) > HISTORY_POINTS:
                self.history = thin(self.history)
            return list(self.history)


def thin(points: list[list]) -> list[list]:
    """Every other point, keeping each run's first and last (the start and end of its intervals)."""
    last = len(points) - 1
    return [p for i, p in enumerate(points)
            if i % 2 == 0 or i == last or points[i + 1][1] != p[1] or points[i - 1][1] != p[1]]


def usage_of(output: object) -> dict | None:
    """Token usage a function reported: an OpenAI-style `usage` mapping in its result dict."""
    usage = output.get("usage") if isinstance(output, dict) else None
    if not isinstance(usage, dict):
        return None
    prompt = usage.get("prompt_tokens") or usage.get("input_tokens") or 0
    completion = usage.get("completion_tokens") or usage.get("output_tokens") or 0
    total = usage.get("total_tokens") or prompt + completion
    return {"prompt": prompt, "completion": completion, "total": total}
