"""What a run directory says about its job: read-only, safe while the job runs."""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

import psutil

from ..loops.metrics import last_step_row, session_total
from ..loops.writer_process import METRICS, STEPS, checkpoint_dir, complete_checkpoints
from ..store import batch_chunks
from ..store.ledger import ItemState, Ledger
from ..store.ranks import ranks_of
from ..store.rundir import RunDir, lock_holder
from . import format_duration
from .rate import WINDOW_LABEL, WINDOW_S, api_figures, windowed_rate


def loop_status(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """A training loop's run directory (checkpoints, no ledger): the latest checkpoints and their metrics, and
    the step and metrics last logged by ckpt.log() (`logged`; None without a step log)."""
    directory = checkpoint_dir(Path(run_dir))
    if not (directory / METRICS).exists() and not (directory / STEPS).exists():
        return None
    records = read_metrics(directory / METRICS)
    kept = sorted(p.name for p in reversed(complete_checkpoints(directory)))
    latest, logged = records[-1] if records else None, last_step_row(directory)
    step = max((r["step"] for r in (latest, logged) if r), default=0)
    total = session_total(directory)  # said when the session started: known before its first checkpoint
    total = (latest or {}).get("total") if total is None else total
    return {"run_dir": str(run_dir), "kind": "loop", "step": step, "total": total,
            "checkpoints": kept, "latest": latest, "logged": logged, "history": records[-20:]}


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """A loop's metrics.jsonl, one record per checkpoint; a torn last line (being appended now, or cut by a
    crash) is skipped."""
    records = []
    for line in path.read_text(encoding="utf-8").splitlines() if path.exists() else []:
        with contextlib.suppress(ValueError):
            records.append(json.loads(line))
    return [r for r in records if isinstance(r, dict) and {"step", "time", "elapsed"} <= r.keys()]


# The failure states status counts, by the name it gives each count.
COUNTED = {"failed": ItemState.FAILED, "quarantined": ItemState.QUARANTINED, "interrupted": ItemState.INTERRUPTED,
           "pending_retry": ItemState.PENDING}


def status(run_dir: str | os.PathLike) -> dict[str, Any]:
    """A job's state from its run directory: a ranked job's ranks merged, a training loop's checkpoints, or a
    map job's ledger."""
    if ranks_of(run_dir):  # split into ranks: every rank's status merged
        from .ranked import ranked_status

        return ranked_status(run_dir, status)
    rd = RunDir(run_dir)
    if not rd.ledger.exists():
        loop = loop_status(run_dir)
        if loop is not None:
            return loop
    return _job_status(rd)


def _job_status(rd: RunDir) -> dict[str, Any]:
    ledger = Ledger.open_readonly(rd)
    try:
        done = ledger.count_done()
        counts = {name: ledger.count_failures(state) for name, state in COUNTED.items()}
        total = ledger.get_meta("total")
        api, api_history = ledger.get_meta("api"), ledger.get_meta("api_history")
        runs = ledger.runs()
        pid = lock_holder(rd)
        n_shards, n_bytes, last_commit = ledger.shard_totals()
        last = runs[-1] if runs else {}
        now = _window_end(pid, last, last_commit, rd)
        fetch_from = max(last.get("started_at") or now, now - 10 * WINDOW_S)  # enough to interpolate at its start
        commits = [c for c in ledger.recent_commits(time.time() - fetch_from) if c[0] <= now]
        quarantined_items = ledger.failures((ItemState.QUARANTINED,)) if counts["quarantined"] else []
        batches = batch_chunks.summary(ledger)  # Batch-API jobs: each batch's state and counts
    finally:
        ledger.close()
    rate = _items_rate(commits, last, fetch_from, now)
    finished = done + counts["failed"] + counts["quarantined"] + counts["interrupted"]
    remaining = None if total is None else max(0, total - finished)
    supervisor = None if pid else waiting_supervisor(rd)
    state = run_state(pid, remaining, last, supervisor)
    return {
        "run_dir": str(rd.path),
        "state": state,
        "last_seen_at": now if state in ("died", "restarting") else None,
        "pid": pid,
        "supervisor": supervisor,  # restarting: the supervisor's pid, the next attempt, when, how the last ended
        "total": total,
        "done": done,
        **counts,  # failed, quarantined, interrupted, pending_retry
        "remaining": remaining,
        "rate_per_s": rate,  # items done per second, observe/rate.py's window (the bar's and --json's too)
        "rate_window": f"{WINDOW_LABEL} of the run" if pid else f"{WINDOW_LABEL} before it ended",
        "eta_s": remaining / rate if pid and rate and remaining is not None else None,
        "shards": n_shards,
        "bytes": n_bytes,
        "last_commit_at": last_commit,
        "runs": len(runs),
        "last_run": {k: last.get(k) for k in ("pid", "started_at", "ended_at", "exit_code", "done", "failed")},
        "api": _api_now(api, api_history, last, now, running=bool(pid)),
        "batches": batches,
        "quarantined_items": [{"key": q["key"], "reason": q["message"]} for q in quarantined_items],
    }


def run_state(pid: int | None, remaining: int | None, last_run: dict[str, Any],
              supervisor: dict[str, Any] | None = None) -> str:
    """running (the run lock is held), restarting (not running, and a live supervisor waits to start it again),
    died (not running, and its last run recorded no end: killed, OOM, power cut), finished (nothing left) or
    stopped (a stop that recorded its end, with items left)."""
    if pid:
        return "running"
    if supervisor:
        return "restarting"
    if last_run.get("started_at") and last_run.get("ended_at") is None:
        return "died"
    return "finished" if remaining == 0 else "stopped"


def waiting_supervisor(rd: RunDir) -> dict[str, Any] | None:
    """What the supervisor's marker says (supervise.py writes it while it waits to restart the run), with the
    seconds to the next attempt; None without a marker, or when the process it names is gone or is not that
    supervisor (a kill -9 leaves the marker behind, and its pid may since belong to another process)."""
    try:
        marker = json.loads(rd.restart_marker.read_text())
        process = psutil.Process(int(marker["pid"]))
        same = (abs(process.create_time() - float(marker["created"])) < 1.0
                and any("durabatch" in part for part in process.cmdline())
                and process.status() != psutil.STATUS_ZOMBIE)
    except (OSError, ValueError, KeyError, TypeError, psutil.Error):
        return None
    if not same:
        return None
    return {**marker, "restart_in_s": max(0.0, float(marker["next_attempt_at"]) - time.time())}


def _window_end(pid: int | None, last_run: dict[str, Any], last_commit: float | None, rd: RunDir) -> float:
    """Now while the run runs; else when its last run ended, or (died) when it was last seen: its last commit or
    the last line of its log (written every few seconds while it lives)."""
    if pid or not last_run:
        return time.time()
    if last_run.get("ended_at"):
        return float(last_run["ended_at"])
    log = rd.logs / "run.log"
    seen = [last_run.get("started_at") or 0.0, last_commit or 0.0, log.stat().st_mtime if log.exists() else 0.0]
    return min(time.time(), max(seen))


def _items_rate(commits: list[tuple[float, int]], last_run: dict[str, Any], fetch_from: float,
                now: float) -> float | None:
    """Items done per second over the window, from the last run's commits (rows, cumulated)."""
    if not last_run.get("started_at"):
        return None
    samples, count = [(fetch_from, 0.0)], 0.0
    for at, rows in commits:
        if at >= fetch_from:
            count += rows
            samples.append((at, count))
    return windowed_rate(samples, last_run["started_at"], now)


def _api_now(api: dict[str, Any] | None, history: Any, last_run: dict[str, Any], now: float,
             running: bool) -> dict | None:
    """The API totals, with requests/min (answered, not 429s) and tokens/min over the same window as the items,
    from the history points the runner writes at each commit (policies/api_metrics.py: at, run, accepted,
    rate_limited, tokens, cost)."""
    if not api:
        return None
    points = [p for p in history if p[1] == last_run.get("id")] if isinstance(history, list) else []
    start = last_run.get("started_at") or now
    answered = windowed_rate([(p[0], p[2]) for p in points], start, now) if points else None
    tokens = windowed_rate([(p[0], p[4]) for p in points], start, now) if points else None
    figures = api_figures(api, answered, tokens)
    if not running:  # calls in flight at the last commit are long gone
        figures["in_flight"] = 0
    return {**api, **figures, "window": WINDOW_LABEL}


def render_loop(info: dict[str, Any]) -> str:
    latest, logged = info["latest"] or {}, info.get("logged")
    total = f" of {info['total']:,}" if info.get("total") else ""
    lines = [f"run dir:     {info['run_dir']} (a checkpointed loop)",
             f"latest:      step {latest.get('step', 0):,}{total} ({latest.get('reason', '?')}), "
             f"{format_duration(latest.get('elapsed'))} into the run" if latest else
             f"latest:      no checkpoint yet (step {info['step']:,}{total})",
             f"kept:        {', '.join(info['checkpoints']) or 'none'}"]
    if logged:
        values = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in logged["metrics"].items())
        lines.append(f"logged:      step {logged['step']:,}, {format_duration(time.time() - logged['time'])} ago: "
                     f"{values}")
    for record in info["history"]:
        values = ", ".join(f"{k}={v:.4g}" for k, v in record.get("metrics", {}).items())
        if values:  # checkpoints with metrics (ckpt.record) only
            lines.append(f"  step {record['step']:>10,}  {values}")
    return "\n".join(lines)


def render(info: dict[str, Any]) -> str:
    if info.get("kind") == "loop":
        return render_loop(info)
    if info.get("kind") == "ranks":
        from .ranked import render_ranked

        return render_ranked(info)
    total = info["total"]
    finished = info["done"] + info["failed"] + info["quarantined"] + info["interrupted"]
    pct = f" ({100 * finished / total:.1f}%)" if total else ""
    lines = [
        f"run dir:   {info['run_dir']}",
        f"state:     {_state_text(info)}",
        f"progress:  {finished:,}/{total:,}{pct}" if total is not None else f"progress:  {finished:,}",
        f"done:      {info['done']:,} in {info['shards']:,} shards ({info['bytes'] / 1e6:,.1f} MB)",
        f"failed:    {info['failed']:,}" + (f", {info['pending_retry']:,} queued for retry"
                                            if info["pending_retry"] else ""),
    ]
    if info["interrupted"]:
        lines.append(f"interrupted: {info['interrupted']:,} (at-most-once: not re-called; retry-failed --interrupted)")
    if info["quarantined"]:
        lines.append(f"quarantined: {info['quarantined']:,}")
        lines.extend(f"  {q['key']}: {q['reason']}" for q in info["quarantined_items"][:20])
    if info["rate_per_s"] is not None:
        eta = f", ETA {format_duration(info['eta_s'])}" if info["eta_s"] is not None else ""
        lines.append(f"rate:      {info['rate_per_s']:,.1f} items/s ({info['rate_window']}){eta}")
    api = info.get("api")
    if api:
        lines.append(_api_line(api, info["rate_window"], running=bool(info["pid"])))
    lines.extend(_batch_lines(info.get("batches") or []))
    if info["last_commit_at"]:
        ago = time.time() - info["last_commit_at"]
        lines.append(f"last commit: {format_duration(ago)} ago")
    last = info["last_run"]
    if last.get("started_at"):
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(last["started_at"]))
        ended = f", exit {last['exit_code']}" if last.get("exit_code") is not None else ""
        lines.append(f"runs:      {info['runs']} (last started {started}{ended})")
    return "\n".join(lines)


def _api_line(api: dict[str, Any], window: str, running: bool) -> str:
    """The rates as the bar shows them, then the job's totals (all runs)."""
    def per_min(value: float | None) -> str:
        return "?" if value is None else f"{value:,.0f}"

    cost = f"cost {api['cost']:.4f}" + (f" {api['currency']}" if api.get("currency") else "")
    in_flight = f"{api['in_flight']} in flight, " if running else ""
    return (f"api:       {in_flight}"
            f"{per_min(api['requests_per_min'])} req/min, {per_min(api['tokens_per_min'])} tokens/min ({window}); "
            f"{api['requests']:,} requests, {api['rate_limited']:,} answered 429, {api.get('retries', 0):,} "
            f"retries, {api['tokens']:,} tokens, {cost}")


def _state_text(info: dict[str, Any]) -> str:
    if info["pid"]:
        return f"{info['state']} (pid {info['pid']})"
    if info["state"] == "restarting":
        s = info["supervisor"]
        when = f"in ~{s['restart_in_s']:.0f}s" if s["restart_in_s"] >= 1 else "now"
        return (f"restarting: died ({s['last_exit']}); the supervisor (pid {s['pid']}) restarts it {when} "
                f"(attempt {s['attempt']})")
    if info["state"] == "died":
        seen = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["last_seen_at"]))
        return (f"died (not running, and its last run recorded no end: killed or crashed; last seen {seen}, "
                f"{format_duration(time.time() - info['last_seen_at'])} ago). Run it again to resume.")
    return info["state"]


def _batch_lines(batches: list[dict[str, Any]]) -> list[str]:
    live = [b for b in batches if b["state"] != "done"]
    if not batches:
        return []
    lines = [f"batches:   {len(batches):,} ({len(live):,} live), estimated cost "
             f"{sum(b['est_cost'] for b in batches):.4f}"]
    for b in (live or batches)[:20]:
        c = b["counts"] or {}
        lines.append(f"  #{b['seq']} {b['batch_id'] or '(not created)'}: {b['state']}, {b['batch_status'] or '-'}, "
                     f"{c.get('completed', 0):,}/{c.get('total', b['items']):,} done, {c.get('failed', 0):,} failed")
    return lines


def as_json(info: dict[str, Any]) -> str:
    return json.dumps(info, indent=2, default=str)
