"""The API part of the report and the dashboard: the job's totals (all runs) and, from the history points the
runner records at each commit (ledger meta `api_history`, see policies/api_metrics.py), requests/min, 429s per
minute, tokens/min and the cost over time."""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import Any

INTERVALS = 60  # rates over about this many intervals of the job's span: per-commit rates are too noisy to read
NAMES = {"requests": "requests (all runs)", "answered": "answered (all runs)", "requests_per_min":
         "requests/min (last minute)", "tokens_per_min": "tokens/min (last minute)",
         "rate_limited": "429s (rate limited, all runs)", "retries": "retries (all runs)",
         "tokens": "tokens (all runs)", "in_flight": "in flight (at the last commit)"}


def series(history: object, t0: float | None) -> dict[str, list[float]]:
    """Rates per interval (requests the server accepted, 429s, tokens; per minute) and the cumulative cost, with
    times in seconds since t0. An interval never spans two runs: each run's first point holds its start totals."""
    out: dict[str, list[float]] = {"t": [], "requests_per_min": [], "rate_limited_per_min": [],
                                   "tokens_per_min": [], "cost_t": [], "cost": []}
    points = [p for p in history if isinstance(p, list) and len(p) == 6] if isinstance(history, list) else []
    if not points or t0 is None:
        return out
    min_dt = max(1.0, (points[-1][0] - points[0][0]) / INTERVALS)
    anchor = points[0]
    for i, p in enumerate(points):
        out["cost_t"].append(max(0.0, p[0] - t0))  # the first run's counters start as its job is built
        out["cost"].append(p[5])
        if p[1] != anchor[1]:  # a new run: its first point is its start
            anchor = p
            continue
        last_of_run = i == len(points) - 1 or points[i + 1][1] != p[1]
        dt = p[0] - anchor[0]
        if dt > 0 and (dt >= min_dt or last_of_run):
            out["t"].append(p[0] - t0)
            for name, col in (("requests_per_min", 2), ("rate_limited_per_min", 3), ("tokens_per_min", 4)):
                out[name].append((p[col] - anchor[col]) * 60 / dt)
            anchor = p
    return out


def section(api: dict[str, Any] | None, data: dict[str, list[float]] | None,
            over_time: Callable[[str, list[float], list[float], str], str]) -> str:
    """The API table and charts (nothing for a job that is not an API job)."""
    if not api:
        return ""
    currency = api.get("currency") or "USD"
    rows = [[_e(NAMES.get(k, k.replace("_", " "))), _e(f"{v:,.4g}" if isinstance(v, float) else f"{v:,}")]
            for k, v in api.items() if k not in ("cost", "currency")]
    rows.append([_e("cost (all runs)"), _e(f"{api.get('cost', 0):,.4f} {currency}")])
    parts = ["<h3>API (all runs, as of the last commit)</h3>",
             "<table><tr><th></th><th>value</th></tr>" + "".join(
                 f"<tr><td>{k}</td><td>{v}</td></tr>" for k, v in rows) + "</table>"]
    if data and data["t"]:
        parts += [over_time("API requests accepted per minute", data["t"], data["requests_per_min"], "requests/min"),
                  over_time("429s per minute", data["t"], data["rate_limited_per_min"], "429s/min")]
        if any(data["tokens_per_min"]):
            parts.append(over_time("tokens per minute", data["t"], data["tokens_per_min"], "tokens/min"))
        if any(data["cost"]):
            parts.append(over_time(f"cost ({currency}, cumulative)", data["cost_t"], data["cost"], currency))
    return "\n".join(parts)


def _e(value: Any) -> str:
    return html.escape(str(value))
