"""What a run directory says about its job: read-only, safe while the job runs."""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

from ..loops.writer_process import METRICS, checkpoint_dir, complete_checkpoints
from ..store import batch_chunks
from ..store.ledger import ItemState, Ledger
from ..store.rundir import RunDir, lock_holder
from . import format_duration


def loop_status(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """A training loop's run directory (checkpoints, no ledger): the latest checkpoints and their metrics."""
    directory = checkpoint_dir(Path(run_dir))
    if not (directory / METRICS).exists():
        return None
    records = read_metrics(directory / METRICS)
    kept = sorted(p.name for p in reversed(complete_checkpoints(directory)))
    return {"run_dir": str(run_dir), "kind": "loop", "checkpoints": kept, "latest": records[-1] if records else None,
            "history": records[-20:]}


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """A loop's metrics.jsonl, one record per checkpoint; a torn last line (being appended now, or cut by a
    crash) is skipped."""
    records = []
    for line in path.read_text(encoding="utf-8").splitlines() if path.exists() else []:
        with contextlib.suppress(ValueError):
            records.append(json.loads(line))
    return [r for r in records if isinstance(r, dict) and {"step", "time", "elapsed"} <= r.keys()]


def status(run_dir: str | os.PathLike) -> dict[str, Any]:
    rd = RunDir(run_dir)
    if not rd.ledger.exists():
        loop = loop_status(run_dir)
        if loop is not None:
            return loop
    ledger = Ledger.open_readonly(rd)
    try:
        done = ledger.count_done()
        failed = ledger.count_failures(ItemState.FAILED)
        quarantined = ledger.count_failures(ItemState.QUARANTINED)
        interrupted = ledger.count_failures(ItemState.INTERRUPTED)
        pending_retry = ledger.count_failures(ItemState.PENDING)
        total = ledger.get_meta("total")
        api = ledger.get_meta("api")
        runs = ledger.runs()
        recent = ledger.recent_commits(120)
        n_shards, n_bytes, last_commit = ledger.shard_totals()
        quarantined_items = ledger.failures((ItemState.QUARANTINED,)) if quarantined else []
        batches = batch_chunks.summary(ledger)  # Batch-API jobs: each batch's state and counts
    finally:
        ledger.close()
    pid = lock_holder(rd)
    rate = None
    if len(recent) >= 2 and recent[-1][0] > recent[0][0]:
        rate = sum(rows for _, rows in recent[1:]) / (recent[-1][0] - recent[0][0])
    remaining = None if total is None else max(0, total - done - failed - quarantined - interrupted)
    last = runs[-1] if runs else {}
    return {
        "run_dir": str(rd.path),
        "state": "running" if pid else "finished" if remaining == 0 else "stopped",
        "pid": pid,
        "total": total,
        "done": done,
        "failed": failed,
        "quarantined": quarantined,
        "interrupted": interrupted,
        "pending_retry": pending_retry,
        "remaining": remaining,
        "rate_per_s": rate,
        "eta_s": remaining / rate if rate and remaining is not None else None,
        "shards": n_shards,
        "bytes": n_bytes,
        "last_commit_at": last_commit,
        "runs": len(runs),
        "last_run": {k: last.get(k) for k in ("pid", "started_at", "ended_at", "exit_code", "done", "failed")},
        "api": api,
        "batches": batches,
        "quarantined_items": [{"key": q["key"], "reason": q["message"]} for q in quarantined_items],
    }


def render_loop(info: dict[str, Any]) -> str:
    latest = info["latest"] or {}
    lines = [f"run dir:     {info['run_dir']} (a checkpointed loop)",
             f"latest:      step {latest.get('step', 0):,} ({latest.get('reason', '?')}), "
             f"{format_duration(latest.get('elapsed'))} into the run",
             f"kept:        {', '.join(info['checkpoints']) or 'none'}"]
    for record in info["history"]:
        values = ", ".join(f"{k}={v:.4g}" for k, v in record.get("metrics", {}).items())
        lines.append(f"  step {record['step']:>10,}  {values}")
    return "\n".join(lines)


def render(info: dict[str, Any]) -> str:
    if info.get("kind") == "loop":
        return render_loop(info)
    total = info["total"]
    finished = info["done"] + info["failed"] + info["quarantined"] + info["interrupted"]
    pct = f" ({100 * finished / total:.1f}%)" if total else ""
    lines = [
        f"run dir:   {info['run_dir']}",
        f"state:     {info['state']}" + (f" (pid {info['pid']})" if info["pid"] else ""),
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
    if info["rate_per_s"]:
        lines.append(f"rate:      {info['rate_per_s']:,.1f} items/s (last 2 min), ETA "
                     f"{format_duration(info['eta_s'])}")
    api = info.get("api")
    if api:
        lines.append(f"api:       {api['requests']:,} requests, {api['requests_per_min']:,.0f}/min lately, "
                     f"{api['rate_limited']:,} answered 429, {api.get('retries', 0):,} retries, "
                     f"{api['tokens']:,} tokens, cost {api['cost']:.4f}")
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
