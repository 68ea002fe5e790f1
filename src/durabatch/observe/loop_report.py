"""A checkpointed loop's report data (`durabatch report`, `durabatch dashboard`): each metric by step (ckpt.log()'s
step log, else the metrics recorded with checkpoints), steps/s over time, the checkpoints kept on disk."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..loops.metrics import read_steps
from ..loops.writer_process import METRICS, read_meta
from .status import read_metrics


def collect_loop(ckpt_dir: Path) -> dict[str, Any]:
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
    steps = read_steps(ckpt_dir)
    if steps:  # ckpt.log(): every logged metric by step, and the speed at the step log's finer grain
        t0 = min(t0 if t0 is not None else math.inf, steps[0]["session"] or steps[0]["time"])
        metrics.update(_logged_metrics(steps))
        speed = _logged_speed(steps, t0)
        sessions = max(sessions, len({r["session"] for r in steps}))
    return {"kind": "loop", "start": t0, "records": len(records), "sessions": sessions,
            "latest": records[-1] if records else None, "logged": steps[-1] if steps else None,
            "checkpoints": _kept(ckpt_dir), "series": {"metrics": metrics, "steps_per_s": speed}}


def _logged_metrics(steps: list[dict[str, Any]]) -> dict[str, dict[str, list]]:
    metrics: dict[str, dict[str, list]] = {}
    for row in sorted(steps, key=lambda r: r["step"]):
        for name, value in row["metrics"].items():
            series = metrics.setdefault(name, {"step": [], "value": []})
            series["step"].append(row["step"])
            series["value"].append(value if isinstance(value, int | float) else math.nan)  # "nan" as logged
    return metrics


def _logged_speed(steps: list[dict[str, Any]], t0: float) -> dict[str, list[float]]:
    """Steps/s between rows at least 1/100 of the run apart (row to row is too noisy), within each session."""
    speed: dict[str, list[float]] = {"t": [], "step": [], "steps_per_s": []}
    gap = (steps[-1]["time"] - t0) / 100
    anchor = steps[0]
    for row in steps[1:]:
        if row["session"] != anchor["session"] or row["step"] <= anchor["step"]:
            anchor = row  # a new session (or a step counter set back): no rate across the gap
        elif row["time"] - anchor["time"] >= gap and row["time"] > anchor["time"]:
            speed["t"].append(row["time"] - t0)
            speed["step"].append(row["step"])
            speed["steps_per_s"].append((row["step"] - anchor["step"]) / (row["time"] - anchor["time"]))
            anchor = row
    speed["restarts"] = [start - t0 for start in sorted({r["session"] for r in steps})[1:]]  # gaps in the chart
    return speed


def _kept(ckpt_dir: Path) -> list[dict[str, Any]]:
    kept = []
    for path in ckpt_dir.glob("step-*"):
        try:
            meta = read_meta(path)
        except (OSError, ValueError):
            continue  # pruned, or not whole yet, while we look
        kept.append({"name": path.name, **{k: meta.get(k) for k in ("step", "reason", "time", "elapsed", "metrics")}})
    return sorted(kept, key=lambda c: c["step"])
