"""`durabatch report`: one self-contained HTML file with line charts of a run directory (inline SVG drawn here, no
plotting dependency, nothing fetched when it is opened). Read-only, safe while the job runs.

A map job: items done over wall-clock time, items/s per interval, failures by error type, each run, the totals.
A checkpointed loop: each metric by step (ckpt.log()'s step log, else the metrics recorded with checkpoints),
steps/s over time, the checkpoints kept on disk."""

from __future__ import annotations

import bisect
import contextlib
import html
import itertools
import json
import math
import os
import time
from pathlib import Path
from typing import Any

from ..errors import LedgerError
from ..loops.writer_process import checkpoint_dir
from ..store.ledger import ItemState, Ledger
from ..store.ranks import ranks_of
from ..store.rundir import RunDir, lock_holder
from . import api_charts, format_duration
from .charts import chart, nice, time_axis
from .loop_report import collect_loop
from .status import run_state, waiting_supervisor

RATE_BUCKETS = 40  # items/s over about this many equal intervals: per-commit rates are too noisy to read
STATES = {s.value: "pending_retry" if s is ItemState.PENDING else s.value for s in ItemState}  # as `status` says
FAILED_SHOWN = 50  # failed items listed with their attempts (the dashboard pages through all of them)
CSS = ("body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1000px;padding:0 1em;color:#222}"
       "table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.2em .6em;"
       "text-align:right}th{background:#f3f3f3}td:first-child,td:last-child{text-align:left}svg{display:block}"
       ".meta,.empty{color:#666}details.failure{margin:.3em 0}summary{cursor:pointer}"
       "pre{background:#f6f6f6;padding:.5em;overflow:auto;font-size:12px}")


# -- reading the run directory ---------------------------------------------------------------------------------
def collect(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The report's data: series and tables of a map job (ledger) or a checkpointed loop (checkpoints/)."""
    if ranks_of(run_dir):  # split into ranks: every rank's data merged
        from .ranked import ranked_report

        return ranked_report(run_dir, collect)
    rd = RunDir(run_dir)
    if rd.ledger.exists():
        data = _collect_map(rd)
    elif checkpoint_dir(rd.path).is_dir():
        data = collect_loop(checkpoint_dir(rd.path))
    elif rd.path.is_dir():
        raise LedgerError(f"{rd.path}: not a durabatch run directory (no ledger.sqlite, no checkpoints/)")
    else:
        raise LedgerError(f"{rd.path}: no such directory")
    return {"run_dir": str(rd.path), "generated_at": time.time(), **data}


def _collect_map(rd: RunDir) -> dict[str, Any]:
    ledger = Ledger.open_readonly(rd)
    try:
        with ledger.snapshot():  # one state for every query below while a runner keeps committing
            shards = sorted(ledger.shards(), key=lambda s: s["committed_at"])
            runs = ledger.runs()
            counts = {STATES[s.value]: ledger.count_failures(s) for s in ItemState}
            by_type = _failures_by_type(ledger)
            total, api = ledger.get_meta("total"), ledger.get_meta("api")
            api_history = ledger.get_meta("api_history") if api else None
            failed_items = _failed_items(ledger, FAILED_SHOWN)
    finally:
        ledger.close()
    pid = lock_holder(rd)
    done = sum(s["rows"] for s in shards)
    remaining = None if total is None else \
        max(0, total - done - counts["failed"] - counts["quarantined"] - counts["interrupted"])
    starts = [r["started_at"] for r in runs] + [s["committed_at"] for s in shards[:1]]
    t0 = min(starts) if starts else None
    times, rows = [s["committed_at"] for s in shards], [s["rows"] for s in shards]
    return {
        "kind": "map", "state": run_state(pid, remaining, runs[-1] if runs else {}, waiting_supervisor(rd)), "pid": pid,
        "start": t0, "api": api, "failures_by_type": by_type, "runs": _runs(runs, times, rows, pid),
        "api_series": api_charts.series(api_history, t0), "api_history": api_history,
        "failed_items": failed_items, "job": read_job(rd), "resources": resources(rd, t0),
        "totals": {"total": total, "done": done, **counts, "remaining": remaining, "shards": len(shards),
                   "bytes": sum(s["bytes"] for s in shards)},
        "series": {"cumulative": {"t": [t - t0 for t in times], "at": times, "done": list(itertools.accumulate(rows))},
                   "rate": _rate(times, rows, t0),
                   "restarts": [r["started_at"] - t0 for r in runs[1:]] if t0 is not None else []},
    }


def _runs(runs: list[dict[str, Any]], times: list[float], rows: list[int], pid: int | None) -> list[dict[str, Any]]:
    """Each run with what was done before it (counted from the shards committed earlier: the ledger's
    `already_done` column holds 0) and how it ended: its exit code, running, or died (no end recorded)."""
    cumulative = [0, *itertools.accumulate(rows)]
    out = []
    for run in runs:
        before = cumulative[bisect.bisect_left(times, run["started_at"])]
        running = bool(pid) and run is runs[-1] and run["ended_at"] is None
        end = "running" if running else "died" if run["ended_at"] is None else f"exit {run['exit_code']}"
        out.append({**run, "done_before": before, "end_state": end})
    return out


def _failed_items(ledger: Ledger, limit: int) -> list[dict[str, Any]]:
    history = ledger.attempt_history()
    return [{**f, "history": history.get(f["pos"], [])} for f in ledger.failures()[:limit]]


def read_job(rd: RunDir) -> dict[str, Any] | None:
    """job.json: what was run (the resolved settings and the fingerprint); None when absent or being replaced."""
    try:
        return json.loads(rd.job.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def resources(rd: RunDir, t0: float | None) -> dict[str, list[float]]:
    """RAM (runner + workers), GPU memory and CPU use over time, from the run log's `resources:` lines (one per
    10 s of a running job, `observe/logs.py`); empty for runs made before those lines existed."""
    out: dict[str, list[float]] = {"t": [], "ram_mb": [], "gpu_mb": [], "cpu_pct": []}
    prev: tuple[float, float] | None = None
    try:
        lines = (rd.logs / "run.log").read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return out
    for line in lines:
        stamp, _, rest = line.partition(" resources: ")
        if not rest:
            if " start: " in line:
                prev = None  # a new process: its CPU seconds count from 0 again
            continue
        try:
            fields = dict(kv.split("=", 1) for kv in rest.split())
            at = float(fields["at"]) if "at" in fields else time.mktime(time.strptime(stamp, "%Y-%m-%dT%H:%M:%S"))
            cpu_s = float(fields["cpu_s"])
            ram, gpu = float(fields["ram_mb"]), fields.get("gpu_mb", "-")
        except (ValueError, KeyError):
            continue  # a torn or foreign line
        out["t"].append(at - (t0 if t0 is not None else at))
        out["ram_mb"].append(ram)
        out["gpu_mb"].append(float(gpu) if gpu != "-" else math.nan)
        out["cpu_pct"].append(100 * (cpu_s - prev[1]) / (at - prev[0]) if prev and at > prev[0] else math.nan)
        prev = (at, cpu_s)
    return out


def _failures_by_type(ledger: Ledger) -> list[dict[str, Any]]:
    rows = ledger.failures_by_type()
    table: dict[str, dict[str, Any]] = {}
    for error_type, state, n, message in rows:
        entry = table.setdefault(error_type, {"error_type": error_type, "count": 0, "example": message,
                                              **dict.fromkeys(STATES.values(), 0)})
        entry[STATES.get(state, state)] = n
        entry["count"] += n
    return sorted(table.values(), key=lambda e: (-e["count"], e["error_type"]))


def _rate(times: list[float], rows: list[int], t0: float | None) -> dict[str, list[float]]:
    """Items committed per second in equal intervals ending at the last commit (the newest interval is whole)."""
    if not times or t0 is None:
        return {"t": [], "width_s": [], "items_per_s": []}
    end, gaps = times[-1], sorted(b - a for a, b in itertools.pairwise(times))
    # Twice the usual gap between commits at least: narrower intervals would alternate between 0 and a spike.
    width = nice(max((end - t0) / RATE_BUCKETS, 2 * gaps[len(gaps) // 2] if gaps else 0, 1e-3))
    n = max(1, math.ceil((end - t0) / width - 1e-9))
    edges = [t0] + [end - k * width for k in range(n - 1, -1, -1)]
    if n > 1 and edges[1] - edges[0] < width / 2:
        del edges[1]  # a sliver at the start would show a spike: merge it into the next interval
    done = [0] * (len(edges) - 1)
    for t, r in zip(times, rows, strict=True):
        done[min(max(bisect.bisect_left(edges, t) - 1, 0), len(done) - 1)] += r  # interval (lo, hi]
    widths = [(hi - lo) or width for lo, hi in itertools.pairwise(edges)]
    return {"t": [hi - t0 for hi in edges[1:]], "width_s": widths,
            "items_per_s": [d / w for d, w in zip(done, widths, strict=True)]}


# -- output ----------------------------------------------------------------------------------------------------
def write(run_dir: str | os.PathLike, to: str | os.PathLike | None = None) -> tuple[Path, dict[str, Any]]:
    """Write the HTML report (default RUN_DIR/report.html); the path and the data it shows."""
    data = collect(run_dir)
    path = Path(to) if to is not None else Path(run_dir) / "report.html"
    data["report"] = str(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(render_html(data), encoding="utf-8")
        os.replace(tmp, path)  # a browser reloading the report never reads half a file
    except OSError as exc:
        with contextlib.suppress(OSError):  # read-only media refuse even this
            tmp.unlink(missing_ok=True)
        if to is not None:
            raise
        raise LedgerError(f"cannot write {path} ({exc.strerror or exc}): the run directory is not writable here "
                          "(read-only media, or another user's); write the report elsewhere with --to FILE, e.g. "
                          "--to ./report.html") from None
    return path, data


def as_json(data: dict[str, Any]) -> str:
    def clean(v: Any) -> Any:  # NaN and inf (a diverged loss) are not JSON
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        return [clean(x) for x in v] if isinstance(v, list | tuple) else v

    return json.dumps(clean(data), indent=2, default=str)


def render_text(data: dict[str, Any]) -> str:
    if data["kind"] == "loop":
        latest, speed = data["latest"] or {}, data["series"]["steps_per_s"]["steps_per_s"]
        newest = data.get("logged") or latest  # ckpt.log()'s last row, else the last checkpoint's record
        values = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in newest.get("metrics", {}).items()) or "none recorded"
        return "\n".join([
            f"loop:      {data['records']:,} checkpoints recorded, up to step {latest.get('step', 0):,}, "
            f"{data['sessions']} session(s)",
            f"latest:    {values}",
            f"steps/s:   {speed[-1]:,.4g} (latest interval)" if speed else "steps/s:   ? (too few checkpoints)",
            f"kept:      {', '.join(c['name'] for c in data['checkpoints']) or 'none'}"])
    t, rate, runs = data["totals"], data["series"]["rate"]["items_per_s"], data["runs"]
    exit_code = runs[-1]["exit_code"] if runs else None
    return "\n".join([
        f"map job:   {data['state']}, {len(runs)} run(s)" + (f", last exit {exit_code}" if exit_code is not None
                                                              else ""),
        f"done:      {t['done']:,}" + (f" of {t['total']:,}" if t["total"] is not None else "")
        + f" in {t['shards']:,} shards ({t['bytes'] / 1e6:,.1f} MB)",
        f"failed:    {t['failed']:,}, quarantined {t['quarantined']:,}, interrupted {t['interrupted']:,}",
        f"rate:      {rate[-1]:,.1f} items/s (latest interval)" if rate else "rate:      ? (nothing committed)"])


def render_html(data: dict[str, Any]) -> str:
    """Well-formed XML as well as HTML, so that tests and tools can parse it."""
    title = _e(f"durabatch report: {data['run_dir']}")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"/><title>{title}</title>'
            f"<style>{CSS}</style></head>\n<body><h1>{title}</h1>\n<p class=\"meta\">{_e(data['kind'])} run; "
            f"generated {_when(data['generated_at'])}; {_e(data.get('report'))}</p>\n{body_html(data)}\n"
            "</body></html>\n")


def body_html(data: dict[str, Any]) -> str:
    """The tables and charts of one run directory: the report's body, and what the dashboard refreshes."""
    return _map_body(data) if data["kind"] == "map" else _loop_body(data)


def _map_body(data: dict[str, Any]) -> str:
    t, s = data["totals"], data["series"]
    totals = [("state", _e(data["state"]))] + [(k.replace("_", " "), f"{v:,}" if isinstance(v, int) else "?")
                                               for k, v in t.items() if k != "bytes"]
    totals.append(("output", f"{t['bytes']:,} bytes ({t['bytes'] / 1e6:,.1f} MB)"))
    if data["failed_items"]:  # one click to the failed items, a second to an item's traceback
        totals = [(k, f'<a href="#failed-items">{v}</a>' if k == "failed" else v) for k, v in totals]
    div, t_label = time_axis(s["cumulative"]["t"], s["rate"]["t"], data["resources"]["t"])
    restarts = [r / div for r in s["restarts"]]
    marks = [(r, f"run {i + 2}") for i, r in enumerate(restarts)]

    def over_time(title: str, ts: list[float], ys: list[float], unit: str) -> str:
        return chart(title, [x / div for x in ts], ys, t_label, unit, zero=True, breaks=restarts, marks=marks)

    res = data["resources"]
    failures = [[_e(f["error_type"]), *(str(f[st]) for st in STATES.values()), _e(f["example"])]
                for f in data["failures_by_type"]]
    return "\n".join([
        "<h2>Totals</h2>", _table(["", "value"], [[_e(k), v] for k, v in totals]),
        api_charts.section(data["api"], data.get("api_series"), over_time),
        "<h2>Progress</h2>",
        over_time("items done (cumulative)", s["cumulative"]["t"], s["cumulative"]["done"], "items"),
        over_time("throughput per interval (items/s)", s["rate"]["t"], s["rate"]["items_per_s"], "items/s"),
        "<h2>Resources</h2>",
        *(['<p class="meta">All ranks: RAM and GPU memory of the highest rank at each time, CPU of every '
            "rank's runner added up.</p>"] if data.get("ranks") else []),
        *([over_time("RAM, runner and workers (MB)", res["t"], res["ram_mb"], "MB"),
           over_time("CPU, runner process (% of one core)", res["t"], res["cpu_pct"], "%"),
           over_time("GPU memory (MB)", res["t"], res["gpu_mb"], "MB")] if res["t"] else
          ['<p class="empty">No resource samples in logs/run.log (runs before they were recorded).</p>']),
        "<h2>Failures by error type</h2>",
        _table(["error type", *(st.replace("_", " ") for st in STATES.values()), "example message"], failures)
        if failures else '<p class="empty">No failures.</p>',
        _attempts_table(data["failed_items"], t["failed"] + t["quarantined"] + t["interrupted"] + t["pending_retry"]),
        "<h2>Runs</h2>",
        _table(["run", "started", "ended", "took", "end", "done before", "done", "failed"],
               [_run_row(r) for r in data["runs"]]),
        "<h2>What was run</h2>", _job_table(data["job"])])


def _attempts_table(items: list[dict[str, Any]], count: int) -> str:
    if not items:
        return ""
    more = f" (the first {len(items)} of {count:,})" if count > len(items) else ""
    return (f'<h3 id="failed-items">Failed items{more}: click one for every attempt and its traceback</h3>'
            + "\n".join(_failed_item(f) for f in items))


def _failed_item(f: dict[str, Any]) -> str:
    """A closed <details> (no script: the report runs none): the key and error on its line, attempts and the
    traceback inside."""
    history = "".join("<li>" + _e(f"{_when(a['at'])} {a['error_type']}: {a['message']}") + "</li>"
                      for a in f["history"])
    return (f'<details class="failure"><summary>{_e(f["key"])}: {_e(f["state"])}, {_e(f["error_type"])}: '
            f'{_e(f["message"])} ({f["attempts"]} attempts)</summary><ol>{history}</ol>'
            f'<pre class="traceback">{_e(f.get("traceback") or "(no traceback recorded)")}</pre></details>')


def _job_table(job: dict[str, Any] | None) -> str:
    if not job:
        return '<p class="empty">No job.json.</p>'
    settings = job.get("settings") or {}
    rows = [[_e(k), _e(json.dumps(v, default=str) if isinstance(v, dict | list) else v)]
            for k, v in (settings.items() if isinstance(settings, dict) else [("settings", settings)])
            if v not in (None, "", [], {})]  # the settings given or defaulted, not the ones left unset
    return _table(["setting", "value"], rows)


def _run_row(run: dict[str, Any]) -> list[str]:
    ended = run["ended_at"]
    return [str(run["id"]), _when(run["started_at"]), _when(ended) if ended else "",
            format_duration(ended - run["started_at"]) if ended else "", _e(run["end_state"]),
            *(f"{run[k]:,}" if isinstance(run[k], int) else "" for k in ("done_before", "done", "failed"))]


def _loop_body(data: dict[str, Any]) -> str:
    metrics, speed = data["series"]["metrics"], data["series"]["steps_per_s"]
    charts = [chart(f"{name} by step", m["step"], m["value"], "step", name) for name, m in metrics.items()]
    div, t_label = time_axis(speed["t"])
    kept = [[_e(c["step"]), _e(c["reason"]), _when(c["time"]), format_duration(c["elapsed"]),
             _e(", ".join(f"{k}={v:.4g}" for k, v in (c["metrics"] or {}).items()))] for c in data["checkpoints"]]
    summary = [["checkpoints recorded", f"{data['records']:,}"], ["sessions (process starts)", str(data["sessions"])],
               ["latest checkpoint step", _e((data["latest"] or {}).get("step"))]]
    if data.get("logged"):
        logged = data["logged"]
        summary.append(["latest logged step", f"{logged['step']:,} at {_when(logged['time'])}"])
    return "\n".join([
        "<h2>Summary</h2>", _table(["", "value"], summary),
        "<h2>Metrics</h2>", *(charts or ['<p class="empty">No metrics recorded yet.</p>']),
        chart("training speed (steps/s)", [x / div for x in speed["t"]], speed["steps_per_s"], t_label, "steps/s",
              zero=True, breaks=[r / div for r in speed.get("restarts", [])],
              marks=[(r / div, f"session {i + 2}") for i, r in enumerate(speed.get("restarts", []))]),
        "<h2>Checkpoints kept</h2>",
        _table(["step", "reason", "saved", "into the session", "metrics"], kept) if kept else
        '<p class="empty">None on disk.</p>'])


def _table(headers: list[str], rows: list[list[str]]) -> str:
    """Cells come escaped already."""
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    return f"<table><tr>{head}</tr>" + "".join(f"<tr>{''.join(f'<td>{c}</td>' for c in r)}</tr>" for r in rows) + \
        "</table>"


def _when(t: float | None) -> str:
    return "" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))
