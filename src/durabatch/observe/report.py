"""`durabatch report`: one self-contained HTML file with line charts of a run directory (inline SVG drawn here, no
plotting dependency, nothing fetched when it is opened). Read-only, safe while the job runs.

A map job: items done over wall-clock time, items/s per interval, failures by error type, each run, the totals.
A checkpointed loop: each recorded metric by step, steps/s over time, the checkpoints kept on disk."""

from __future__ import annotations

import bisect
import html
import itertools
import json
import math
import os
import time
from pathlib import Path
from typing import Any

from ..errors import LedgerError
from ..loops.writer_process import METRICS, checkpoint_dir, read_meta
from ..store.ledger import ItemState, Ledger
from ..store.rundir import RunDir, lock_holder
from . import format_duration
from .status import read_metrics

RATE_BUCKETS = 40  # items/s over about this many equal intervals: per-commit rates are too noisy to read
MAX_POINTS = 2000  # longer series are thinned (first and last kept) so that the file stays small
STATES = {s.value: "pending_retry" if s is ItemState.PENDING else s.value for s in ItemState}  # as `status` says
W, H, LEFT, RIGHT, TOP, BOTTOM = 680, 260, 64, 20, 30, 42  # chart size and margins, px
CSS = ("body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1000px;padding:0 1em;color:#222}"
       "table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.2em .6em;"
       "text-align:right}th{background:#f3f3f3}td:first-child,td:last-child{text-align:left}svg{display:block}"
       ".meta,.empty{color:#666}")


# -- reading the run directory ---------------------------------------------------------------------------------
def collect(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The report's data: series and tables of a map job (ledger) or a checkpointed loop (checkpoints/)."""
    rd = RunDir(run_dir)
    if rd.ledger.exists():
        data = _collect_map(rd)
    elif checkpoint_dir(rd.path).is_dir():
        data = _collect_loop(checkpoint_dir(rd.path))
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
        "kind": "map", "state": "running" if pid else "finished" if remaining == 0 else "stopped", "pid": pid,
        "start": t0, "api": api, "failures_by_type": by_type, "runs": runs,
        "totals": {"total": total, "done": done, **counts, "remaining": remaining, "shards": len(shards),
                   "bytes": sum(s["bytes"] for s in shards)},
        "series": {"cumulative": {"t": [t - t0 for t in times], "at": times, "done": list(itertools.accumulate(rows))},
                   "rate": _rate(times, rows, t0)},
    }


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
    width = _nice(max((end - t0) / RATE_BUCKETS, 2 * gaps[len(gaps) // 2] if gaps else 0, 1e-3))
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


def _collect_loop(ckpt_dir: Path) -> dict[str, Any]:
    records = [r for r in read_metrics(ckpt_dir / METRICS) if r.get("reason") != "preflight"]
    t0 = records[0]["time"] - records[0]["elapsed"] if records else None
    by_step = {r["step"]: r for r in records}  # a step saved again after a resume: the later record wins
    metrics: dict[str, dict[str, list]] = {}
    for step in sorted(by_step):
        for name, value in by_step[step].get("metrics", {}).items():
            series = metrics.setdefault(name, {"step": [], "value": []})
            series["step"].append(step)
            series["value"].append(value)
    speed: dict[str, list[float]] = {"t": [], "step": [], "steps_per_s": []}
    sessions = 0
    for prev, rec in zip([None, *records], records, strict=False):
        # One session per process start (time - elapsed); no rate across the gap between two sessions.
        if prev is None or abs((rec["time"] - rec["elapsed"]) - (prev["time"] - prev["elapsed"])) > 0.05:
            sessions += 1
        elif rec["elapsed"] > prev["elapsed"] and rec["step"] > prev["step"]:
            speed["t"].append(rec["time"] - t0)
            speed["step"].append(rec["step"])
            speed["steps_per_s"].append((rec["step"] - prev["step"]) / (rec["elapsed"] - prev["elapsed"]))
    return {"kind": "loop", "start": t0, "records": len(records), "sessions": sessions,
            "latest": records[-1] if records else None, "checkpoints": _kept(ckpt_dir),
            "series": {"metrics": metrics, "steps_per_s": speed}}


def _kept(ckpt_dir: Path) -> list[dict[str, Any]]:
    kept = []
    for path in ckpt_dir.glob("step-*"):
        try:
            meta = read_meta(path)
        except (OSError, ValueError):
            continue  # pruned, or not whole yet, while we look
        kept.append({"name": path.name, **{k: meta.get(k) for k in ("step", "reason", "time", "elapsed", "metrics")}})
    return sorted(kept, key=lambda c: c["step"])


# -- output ----------------------------------------------------------------------------------------------------
def write(run_dir: str | os.PathLike, to: str | os.PathLike | None = None) -> tuple[Path, dict[str, Any]]:
    """Write the HTML report (default RUN_DIR/report.html); the path and the data it shows."""
    data = collect(run_dir)
    path = Path(to) if to is not None else Path(run_dir) / "report.html"
    data["report"] = str(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(render_html(data), encoding="utf-8")
    os.replace(tmp, path)  # a browser reloading the report never reads half a file
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
        values = ", ".join(f"{k}={v:.4g}" for k, v in latest.get("metrics", {}).items()) or "none recorded"
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
    body = _map_body(data) if data["kind"] == "map" else _loop_body(data)
    title = _e(f"durabatch report: {data['run_dir']}")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"/><title>{title}</title>'
            f"<style>{CSS}</style></head>\n<body><h1>{title}</h1>\n<p class=\"meta\">{_e(data['kind'])} run; "
            f"generated {_when(data['generated_at'])}; {_e(data['report'])}</p>\n{body}\n</body></html>\n")


def _map_body(data: dict[str, Any]) -> str:
    t, s = data["totals"], data["series"]
    totals = [("state", _e(data["state"]))] + [(k.replace("_", " "), f"{v:,}" if isinstance(v, int) else "?")
                                               for k, v in t.items() if k != "bytes"]
    totals.append(("output", f"{t['bytes']:,} bytes ({t['bytes'] / 1e6:,.1f} MB)"))
    totals += [(f"api {k}", _e(f"{v:,.4g}" if isinstance(v, float) else v)) for k, v in (data["api"] or {}).items()]
    cum_t, t_label = _time_axis(s["cumulative"]["t"])
    rate_t, _ = _time_axis(s["rate"]["t"])  # ends at the last commit too: the same unit
    runs = [_run_row(r, running=bool(data["pid"]) and r is data["runs"][-1]) for r in data["runs"]]
    failures = [[_e(f["error_type"]), *(str(f[st]) for st in STATES.values()), _e(f["example"])]
                for f in data["failures_by_type"]]
    return "\n".join([
        "<h2>Totals</h2>", _table(["", "value"], [[_e(k), v] for k, v in totals]),
        "<h2>Progress</h2>",
        _chart("items done (cumulative)", cum_t, s["cumulative"]["done"], t_label, "items", zero=True),
        _chart("throughput per interval (items/s)", rate_t, s["rate"]["items_per_s"], t_label, "items/s", zero=True),
        "<h2>Failures by error type</h2>",
        _table(["error type", *(st.replace("_", " ") for st in STATES.values()), "example message"], failures)
        if failures else '<p class="empty">No failures.</p>',
        "<h2>Runs</h2>",
        _table(["run", "started", "ended", "took", "exit code", "done before", "done", "failed"], runs)])


def _run_row(run: dict[str, Any], running: bool) -> list[str]:
    ended = run["ended_at"]
    return [str(run["id"]), _when(run["started_at"]),
            _when(ended) if ended else "running" if running else "no end recorded (killed?)",
            format_duration(ended - run["started_at"]) if ended else "", _e(run["exit_code"]),
            *(f"{run[k]:,}" if isinstance(run[k], int) else "" for k in ("already_done", "done", "failed"))]


def _loop_body(data: dict[str, Any]) -> str:
    metrics, speed = data["series"]["metrics"], data["series"]["steps_per_s"]
    charts = [_chart(f"{name} by step", m["step"], m["value"], "step", name) for name, m in metrics.items()]
    speed_t, t_label = _time_axis(speed["t"])
    kept = [[_e(c["step"]), _e(c["reason"]), _when(c["time"]), format_duration(c["elapsed"]),
             _e(", ".join(f"{k}={v:.4g}" for k, v in (c["metrics"] or {}).items()))] for c in data["checkpoints"]]
    summary = [["checkpoints recorded", f"{data['records']:,}"], ["sessions (process starts)", str(data["sessions"])],
               ["latest step", _e((data["latest"] or {}).get("step"))]]
    return "\n".join([
        "<h2>Summary</h2>", _table(["", "value"], summary),
        "<h2>Metrics</h2>", *(charts or ['<p class="empty">No metrics recorded yet.</p>']),
        _chart("training speed (steps/s)", speed_t, speed["steps_per_s"], t_label, "steps/s", zero=True),
        "<h2>Checkpoints kept</h2>",
        _table(["step", "reason", "saved", "into the session", "metrics"], kept) if kept else
        '<p class="empty">None on disk.</p>'])


def _table(headers: list[str], rows: list[list[str]]) -> str:
    """Cells come escaped already."""
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    return f"<table><tr>{head}</tr>" + "".join(f"<tr>{''.join(f'<td>{c}</td>' for c in r)}</tr>" for r in rows) + \
        "</table>"


# -- charts ----------------------------------------------------------------------------------------------------
def _chart(title: str, xs: list[float], ys: list[float], x_label: str, y_label: str, zero: bool = False) -> str:
    """A line chart as inline SVG: one polyline, a marker per point when there are few, ticks on both axes."""
    pts = [(x, y) for x, y in zip(xs, ys, strict=True) if isinstance(y, int | float) and math.isfinite(y)]
    if not pts:
        return f'<p class="empty">{_e(title)}: no data yet.</p>'
    if len(pts) > MAX_POINTS:
        stride = math.ceil(len(pts) / MAX_POINTS)
        pts = pts[::stride] + ([pts[-1]] if (len(pts) - 1) % stride else [])
    xt = _ticks(min(0.0, *(x for x, _ in pts)), max(x for x, _ in pts))  # x: a step or time since the start
    yt = _ticks(min([y for _, y in pts] + ([0.0] if zero else [])), max(y for _, y in pts))
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM

    def px(x: float) -> float:
        return round(LEFT + (x - xt[0]) / (xt[-1] - xt[0]) * pw, 1)

    def py(y: float) -> float:
        return round(TOP + ph - (y - yt[0]) / (yt[-1] - yt[0]) * ph, 1)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" '
           f'aria-label="{_e(title)}" font-family="sans-serif" font-size="11" fill="#333">',
           f'<text x="{W / 2}" y="18" text-anchor="middle" font-size="13" font-weight="bold">{_e(title)}</text>']
    out += [f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{py(v)}" y2="{py(v)}" stroke="#e5e5e5"/>'
            f'<text x="{LEFT - 6}" y="{py(v) + 4}" text-anchor="end">{label}</text>' for v, label in
            zip(yt, _labels(yt), strict=True)]
    out += [f'<line x1="{px(v)}" x2="{px(v)}" y1="{TOP + ph}" y2="{TOP + ph + 4}" stroke="#888"/>'
            f'<text x="{px(v)}" y="{TOP + ph + 16}" text-anchor="middle">{label}</text>' for v, label in
            zip(xt, _labels(xt), strict=True)]
    out += [f'<path d="M{LEFT},{TOP}V{TOP + ph}H{W - RIGHT}" fill="none" stroke="#888"/>',
            f'<text x="{LEFT + pw / 2}" y="{H - 6}" text-anchor="middle">{_e(x_label)}</text>',
            f'<text transform="translate(14 {TOP + ph / 2}) rotate(-90)" text-anchor="middle">{_e(y_label)}</text>',
            '<polyline fill="none" stroke="#1f77b4" stroke-width="1.6" points="'
            + " ".join(f"{px(x)},{py(y)}" for x, y in pts) + '"/>']
    if len(pts) <= 60:  # markers show a lone point, and the exact value on hover
        out += [f'<circle cx="{px(x)}" cy="{py(y)}" r="2.5" fill="#1f77b4"><title>{x:.6g}: {y:.6g}</title>'
                "</circle>" for x, y in pts]
    return "\n".join(out) + "\n</svg>"


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About n round tick values covering [lo, hi]; the first and last are the axis ends."""
    if hi <= lo:
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    step = _nice((hi - lo) / n)
    start = math.floor(lo / step) * step
    return [start + i * step for i in range(max(1, math.ceil((hi - start) / step - 1e-9)) + 1)]


def _nice(x: float) -> float:
    """The smallest of 1, 2, 5 times a power of ten that is >= x."""
    power = 10 ** math.floor(math.log10(x)) if x > 0 else 1.0
    return next(m * power for m in (1, 2, 5, 10) if x <= m * power * (1 + 1e-9))


def _labels(ticks: list[float]) -> list[str]:
    """Tick labels in one unit for the axis: 0, 5k, 10k; 0.0, 0.5, 1.0; 0, 2e-07, 4e-07."""
    step, top = ticks[1] - ticks[0], max(abs(t) for t in ticks)
    div, suffix = next(((d, s) for d, s in ((1e9, "G"), (1e6, "M"), (1e3, "k")) if top >= max(d, 1e4)), (1.0, ""))
    decimals = max(0, -math.floor(math.log10(step / div) + 1e-9))
    return ["0" if abs(t) < step * 1e-6 else f"{t / div:.{decimals}f}{suffix}" if decimals <= 4 else f"{t:.2g}"
            for t in ticks]


def _time_axis(ts: list[float]) -> tuple[list[float], str]:
    span = max(ts, default=0.0)
    unit, div = ("h", 3600) if span >= 7200 else ("min", 60) if span >= 120 else ("s", 1)
    return [t / div for t in ts], f"time since start ({unit})"


def _when(t: float | None) -> str:
    return "" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))
