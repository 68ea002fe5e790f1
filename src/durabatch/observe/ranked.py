"""`status` and `report` of a run split into ranks (RUN_DIR/ranks/<K>-of-<N>): every rank's own status (or
report data) merged into one, naming the ranks that are not finished. Read-only, safe while the ranks run."""

from __future__ import annotations

import math
import os
from typing import Any

from ..errors import ConfigError
from ..store import ranks
from . import api_charts, format_duration
from .report import _rate

SUMMED = ("done", "failed", "quarantined", "interrupted", "pending_retry", "shards", "bytes", "runs")
SHOWN_RANKS = 16  # per-rank lines in the text; past that only the unfinished ones
API_SUMMED = ("in_flight", "requests", "answered", "rate_limited", "retries", "requests_per_min", "tokens",
              "tokens_per_min", "cost")
RESOURCE_BUCKETS = 200  # time slots the ranks' resource samples are merged in


def ranked_status(run_dir: str | os.PathLike, one_status: Any) -> dict[str, Any]:
    """Sum of every rank's status(); `ranks` lists each rank compactly, `unfinished_ranks` those left to do."""
    per_rank, infos = [], []
    for k, rd in ranks.rank_dirs(run_dir):
        info = one_status(rd.path) if rd.ledger.exists() else None
        left = ranks.left_to_do(rd)
        per_rank.append({"rank": k, "state": info["state"] if info else "not started", "pid": info and info["pid"],
                         "done": info["done"] if info else 0, "total": info and info["total"],
                         "failed": info["failed"] if info else 0, "finished": left == 0})
        if info:
            infos.append(info)
    merged: dict[str, Any] = {name: sum(i.get(name) or 0 for i in infos) for name in SUMMED}
    totals = [r["total"] for r in per_rank]
    total = None if None in totals else sum(totals)
    unfinished = [r["rank"] for r in per_rank if not r["finished"]]
    remaining = None if total is None else max(0, total - merged["done"] - merged["failed"] - merged["quarantined"]
                                               - merged["interrupted"])
    # The one rate of each running rank (status.py's window), summed: ranks that are not running add nothing.
    rates = [i["rate_per_s"] for i in infos if i.get("rate_per_s") and i["state"] == "running"]
    rate = sum(rates) if rates else None
    states = {r["state"] for r in per_rank}
    state = _merged_state(states, unfinished)
    merged.update({
        "run_dir": str(run_dir), "kind": "ranks", "ranks": per_rank, "unfinished_ranks": unfinished,
        "state": state, "pid": None, "rate_window": next((i["rate_window"] for i in infos if i.get("rate_window")),
                                                         None),
        "total": total, "remaining": remaining, "rate_per_s": rate,
        "eta_s": remaining / rate if rate and remaining is not None else None,
        "last_commit_at": max((i["last_commit_at"] for i in infos if i.get("last_commit_at")), default=None),
        "quarantined_items": [q for i in infos for q in i.get("quarantined_items") or []][:20],
        "api": _summed_api([i.get("api") for i in infos]),
    })
    return merged


def render_ranked(info: dict[str, Any]) -> str:
    per_rank, unfinished = info["ranks"], info["unfinished_ranks"]
    finished = info["done"] + info["failed"] + info["quarantined"] + info["interrupted"]
    total = info["total"]
    running = sum(r["state"] == "running" for r in per_rank)
    lines = [
        f"run dir:   {info['run_dir']} ({len(per_rank)} ranks)",
        f"state:     {info['state']}" + (f" ({running} rank(s) running)" if running else ""),
        f"progress:  {finished:,}/{total:,}" + (f" ({100 * finished / total:.1f}%)" if total else "")
        if total is not None else f"progress:  {finished:,} (total unknown until every rank has started)",
        f"done:      {info['done']:,} in {info['shards']:,} shards ({info['bytes'] / 1e6:,.1f} MB)",
        f"failed:    {info['failed']:,}" + (f", quarantined {info['quarantined']:,}" if info["quarantined"] else ""),
        "unfinished: " + (f"ranks {', '.join(map(str, unfinished))}" if unfinished else "none"),
    ]
    if info["rate_per_s"]:
        window = f", {info['rate_window']}" if info.get("rate_window") else ""
        lines.append(f"rate:      {info['rate_per_s']:,.1f} items/s (the running ranks{window}), ETA "
                     f"{format_duration(info['eta_s'])}")
    if info.get("api"):
        from .status import _api_line

        lines.append(_api_line(info["api"], "all ranks", running=bool(running)))
    shown = per_rank if len(per_rank) <= SHOWN_RANKS else [r for r in per_rank if not r["finished"]]
    for r in shown:
        of = f"/{r['total']:,}" if r["total"] is not None else ""
        pid = f" (pid {r['pid']})" if r["pid"] else ""
        failed = f", {r['failed']:,} failed" if r["failed"] else ""
        lines.append(f"  rank {r['rank']}: {r['state']}{pid}, {r['done']:,}{of} done{failed}")
    return "\n".join(lines)


def ranked_report(run_dir: str | os.PathLike, collect_one: Any) -> dict[str, Any]:
    """The report's data merged over ranks: summed totals, every rank's runs (named rank/run), the first rank's
    job and charts of the merged commits; `ranks` says which are unfinished."""
    datas = [(k, collect_one(rd.path)) for k, rd in ranks.rank_dirs(run_dir) if rd.ledger.exists()]
    if not datas:
        raise ConfigError(f"{run_dir}: split into {ranks.ranks_of(run_dir)} ranks, none started yet")
    first = datas[0][1]
    totals: dict[str, Any] = {}
    for _, data in datas:
        for name, value in data["totals"].items():
            totals[name] = None if value is None or totals.get(name, 0) is None else totals.get(name, 0) + value
    unfinished = ranks.unfinished_ranks(run_dir)
    states = [d["state"] for _, d in datas]
    runs = sorted(({**r, "id": f"{k}/{r['id']}"} for k, d in datas for r in d["runs"]), key=lambda r: r["started_at"])
    at = sorted((t, n) for _, d in datas for t, n in _commits(d))
    t0 = min((d["start"] for _, d in datas if d["start"] is not None), default=None)
    done, cumulative = 0, []
    for _, n in at:
        done += n
        cumulative.append(done)
    series = {**first["series"], "restarts": [], "rate": _rate([t for t, _ in at], [n for _, n in at], t0),
              "cumulative": {"t": [t - t0 for t, _ in at] if t0 else [], "at": [t for t, _ in at], "done": cumulative}}
    state = _merged_state(states, unfinished)
    history = _merged_history([d.get("api_history") for _, d in datas])
    return {**first, "run_dir": str(run_dir), "state": state,
            "totals": totals, "runs": runs, "series": series, "pid": None, "start": t0,
            "api": _summed_api([d["api"] for _, d in datas]), "api_history": history,
            "api_series": api_charts.series(history, t0),
            "resources": _merged_resources([(d["start"], d["resources"]) for _, d in datas], t0),
            "failures_by_type": [f for _, d in datas for f in d["failures_by_type"]],
            "failed_items": [f for _, d in datas for f in d["failed_items"]][:len(first["failed_items"]) or 50],
            "ranks": {"count": ranks.ranks_of(run_dir), "unfinished": unfinished}}


def _commits(data: dict[str, Any]) -> list[tuple[float, int]]:
    """(commit time, rows) of one rank, from its cumulative series."""
    cumulative = data["series"]["cumulative"]
    done = [0, *cumulative["done"]]
    return [(t, done[i + 1] - done[i]) for i, t in enumerate(cumulative["at"])]


def _merged_state(states: Any, unfinished: list[int]) -> str:
    """The job's state from its ranks': running if one runs, else restarting if a supervisor restarts one, else
    finished when none is unfinished, else died if one died, else stopped."""
    for state in ("running", "restarting"):
        if state in states:
            return state
    return "finished" if not unfinished else "died" if "died" in states else "stopped"


def _summed_api(apis: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    """Every rank's API counters added up (the job's calls, tokens and cost, not rank 0's)."""
    found = [a for a in apis if a]
    if not found:
        return None
    summed: dict[str, Any] = {k: sum(a.get(k) or 0 for a in found) for k in API_SUMMED}
    for rate in ("requests_per_min", "tokens_per_min"):  # unknown (None) unless some rank knows it
        if all(a.get(rate) is None for a in found):
            summed[rate] = None
    return {**summed, "currency": found[0].get("currency")}


def _merged_history(histories: list[Any]) -> list[list] | None:
    """The ranks' API histories ([t, run, ok, 429s, tokens, cost], cumulative per rank) as one cumulative history
    of the whole job: every rank's increments, in time order, as one run."""
    points = [h for h in histories if isinstance(h, list) and h]
    if not points:
        return None
    steps, total = [], [0.0] * 4
    for history in points:
        rows = [p for p in history if isinstance(p, list) and len(p) == 6]
        total = [a + b for a, b in zip(total, rows[0][2:], strict=True)] if rows else total
        for prev, p in zip(rows, rows[1:], strict=False):
            same_run = p[1] == prev[1]  # a run's first point holds its start totals: no increment
            steps.append((p[0], [b - a if same_run else 0 for a, b in zip(prev[2:], p[2:], strict=True)]))
    merged = []
    start = min(h[0][0] for h in points if isinstance(h[0], list))
    merged.append([start, 1, *total])
    for at, step in sorted(steps, key=lambda s: s[0]):
        total = [a + b for a, b in zip(total, step, strict=True)]
        merged.append([at, 1, *total])
    return merged


def _merged_resources(samples: list[tuple[float | None, dict[str, list[float]]]],
                      t0: float | None) -> dict[str, list[float]]:
    """The ranks' resource samples in time slots: RAM and GPU memory of the highest rank (the one nearest its
    node's limit), CPU of all ranks' runners added up. Each rank's times are moved to the merged start."""
    out: dict[str, list[float]] = {"t": [], "ram_mb": [], "gpu_mb": [], "cpu_pct": []}
    shifted = [(start - t0 if start is not None and t0 is not None else 0.0, res) for start, res in samples]
    times = [t + shift for shift, res in shifted for t in res["t"]]
    if not times:
        return out
    lo, width = min(times), max(1e-9, (max(times) - min(times)) / RESOURCE_BUCKETS)
    slots: dict[int, dict[int, list[tuple[float, float, float]]]] = {}
    for rank, (shift, res) in enumerate(shifted):
        for t, ram, gpu, cpu in zip(res["t"], res["ram_mb"], res["gpu_mb"], res["cpu_pct"], strict=True):
            slots.setdefault(int((t + shift - lo) / width), {}).setdefault(rank, []).append((ram, gpu, cpu))
    for slot in sorted(slots):
        per_rank = [[_mean(v) for v in zip(*values, strict=True)] for values in slots[slot].values()]
        out["t"].append(lo + (slot + 0.5) * width)
        out["ram_mb"].append(_known(max, [r[0] for r in per_rank]))
        out["gpu_mb"].append(_known(max, [r[1] for r in per_rank]))
        out["cpu_pct"].append(_known(sum, [r[2] for r in per_rank]))
    return out


def _known(how: Any, values: list[float]) -> float:
    """max or sum of the values that are known (a rank with no GPU, a process's first CPU sample: nan)."""
    known = [v for v in values if not math.isnan(v)]
    return how(known) if known else math.nan


def _mean(values: tuple[float, ...]) -> float:
    return _known(sum, list(values)) / max(1, sum(not math.isnan(v) for v in values))
