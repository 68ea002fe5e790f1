"""The one definition of a run's rates, shared by the bar, the plain lines, the notebook display, the run log and
`status`: how much a count grew over the last WINDOW_S seconds of the run (over the whole run while it is
younger), per second. Items: items done (results; failures are counted apart). API: requests answered (429s
are not answers: they are counted apart) and tokens, per minute."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..core.events import Stats

WINDOW_S = 60.0
WINDOW_LABEL = f"last {WINDOW_S:.0f} s"


def windowed_rate(samples: Sequence[tuple[float, float]], start: float, now: float,
                  window: float = WINDOW_S) -> float | None:
    """Per second over (since, now], since = max(start, now - window). `samples` are (time, cumulative count),
    oldest first; the count at a moment between samples is interpolated (a commit's rows were done over the time
    before it). None while the run is younger than a second: a rate from a few items is noise."""
    since = max(start, now - window)
    if now - since < 1.0 or not samples:
        return None
    return max(0.0, _count_at(samples, now) - _count_at(samples, since)) / (now - since)


def _count_at(samples: Sequence[tuple[float, float]], t: float) -> float:
    i = bisect_right(samples, t, key=lambda s: s[0])
    if i == 0:
        return samples[0][1]
    if i == len(samples):
        return samples[-1][1]
    (t0, c0), (t1, c1) = samples[i - 1], samples[i]
    return c0 + (c1 - c0) * (t - t0) / (t1 - t0)


class Series:
    """A cumulative count sampled as the run goes, kept for the window (and the one sample before it)."""

    def __init__(self, start: float, count: float = 0.0):
        self.start = start
        self.samples: list[tuple[float, float]] = [(start, count)]

    def add(self, t: float, count: float) -> None:
        if t > self.samples[-1][0]:
            self.samples.append((t, count))
        older = bisect_right(self.samples, t - WINDOW_S, key=lambda s: s[0]) - 1
        if older > 0:
            del self.samples[:older]

    def per_second(self, now: float) -> float | None:
        return windowed_rate(self.samples, self.start, now)


def answered(snapshot: dict[str, Any]) -> int:
    """Requests that got an answer other than a 429, from ApiMetrics' running counters."""
    came_back = snapshot.get("answered", snapshot["requests"] - snapshot["in_flight"])
    return max(0, came_back - snapshot["rate_limited"])


@dataclass(frozen=True)
class Figures:
    """What a live display shows beside the counts."""

    rate: float | None  # items done per second, WINDOW_S
    eta: float | None
    api: dict[str, Any] | None  # in_flight, requests_per_min, rate_limited, retries, tokens_per_min, cost


class RunRates:
    """Turns the Stats stream into Figures (one per observer: each keeps its own samples)."""

    def __init__(self) -> None:
        self._done = Series(0.0)  # Stats.elapsed counts from the run's start, when nothing was done
        self._answered: Series | None = None
        self._tokens: Series | None = None

    def update(self, stats: Stats) -> Figures:
        now = stats.elapsed
        self._done.add(now, stats.done)
        rate, remaining = self._done.per_second(now), stats.remaining
        eta = 0.0 if remaining == 0 else remaining / rate if rate and remaining is not None else None
        return Figures(rate, eta, self._api(stats.extra, now))

    def _api(self, snapshot: dict[str, Any], now: float) -> dict[str, Any] | None:
        if not snapshot:
            return None
        if self._answered is None or self._tokens is None:
            # From the run's start, like the items (the first snapshot comes as work starts; its totals may
            # include earlier runs): one window for every rate on the screen.
            self._answered, self._tokens = Series(0.0, answered(snapshot)), Series(0.0, snapshot["tokens"])
        self._answered.add(now, answered(snapshot))
        self._tokens.add(now, snapshot["tokens"])
        return api_figures(snapshot, self._answered.per_second(now), self._tokens.per_second(now))


def api_figures(snapshot: dict[str, Any], answered_per_s: float | None, tokens_per_s: float | None) -> dict:
    """The API line's numbers, the same for the live displays and `status`."""
    return {"in_flight": snapshot.get("in_flight", 0),
            "requests_per_min": None if answered_per_s is None else answered_per_s * 60,
            "rate_limited": snapshot.get("rate_limited", 0), "retries": snapshot.get("retries", 0),
            "tokens": snapshot.get("tokens", 0),
            "tokens_per_min": None if tokens_per_s is None else tokens_per_s * 60,
            "cost": snapshot.get("cost", 0.0), "currency": snapshot.get("currency")}


def format_api(api: dict[str, Any]) -> str:
    """`32 in flight | 780 req/min | 429s 6 | retries 0 | 4,186 tokens/min | cost 0.0006 USD`."""
    def per_min(value: float | None) -> str:
        return "?" if value is None else f"{value:,.0f}"

    parts = [f"{api['in_flight']} in flight", f"{per_min(api['requests_per_min'])} req/min",
             f"429s {api['rate_limited']:,}", f"retries {api['retries']:,}"]
    if api["tokens"]:
        parts.append(f"{per_min(api['tokens_per_min'])} tokens/min")
    if api["cost"]:
        parts.append(f"cost {api['cost']:.4f}" + (f" {api['currency']}" if api.get("currency") else ""))
    return " | ".join(parts)


def format_rate(rate: float | None) -> str:
    return "? items/s" if rate is None else f"{rate:,.1f} items/s"
