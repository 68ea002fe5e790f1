"""`status` and `report` of a run split into ranks (RUN_DIR/ranks/<K>-of-<N>): every rank's own status (or
report data) merged into one, naming the ranks that are not finished. Read-only, safe while the ranks run."""

from __future__ import annotations

import os
from typing import Any

from ..errors import ConfigError
from ..store import ranks
from . import format_duration
from .report import _rate

SUMMED = ("done", "failed", "quarantined", "interrupted", "pending_retry", "shards", "bytes", "runs")
SHOWN_RANKS = 16  # per-rank lines in the text; past that only the unfinished ones


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
    state = ("running" if "running" in states else "finished" if not unfinished
             else "died" if "died" in states else "stopped")
    merged.update({
        "run_dir": str(run_dir), "kind": "ranks", "ranks": per_rank, "unfinished_ranks": unfinished,
        "state": state, "pid": None, "rate_window": next((i["rate_window"] for i in infos if i.get("rate_window")),
                                                         None),
        "total": total, "remaining": remaining, "rate_per_s": rate,
        "eta_s": remaining / rate if rate and remaining is not None else None,
        "last_commit_at": max((i["last_commit_at"] for i in infos if i.get("last_commit_at")), default=None),
        "quarantined_items": [q for i in infos for q in i.get("quarantined_items") or []][:20],
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
    state = ("running" if "running" in states else "finished" if not unfinished
             else "died" if "died" in states else "stopped")
    return {**first, "run_dir": str(run_dir), "state": state,
            "totals": totals, "runs": runs, "series": series, "pid": None, "start": t0,
            "failures_by_type": [f for _, d in datas for f in d["failures_by_type"]],
            "failed_items": [f for _, d in datas for f in d["failed_items"]][:len(first["failed_items"]) or 50],
            "ranks": {"count": ranks.ranks_of(run_dir), "unfinished": unfinished}}


def _commits(data: dict[str, Any]) -> list[tuple[float, int]]:
    """(commit time, rows) of one rank, from its cumulative series."""
    cumulative = data["series"]["cumulative"]
    done = [0, *cumulative["done"]]
    return [(t, done[i + 1] - done[i]) for i, t in enumerate(cumulative["at"])]
