"""`durabatch report`: a real map job and a real checkpointed loop, reported through the real CLI; the HTML's
charts are well-formed SVG with one point per shard / checkpoint, and --json matches the ledger and metrics.jsonl."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import sqlite3
import xml.etree.ElementTree as ET
from itertools import accumulate
from pathlib import Path

import pytest
import userfns
from browser import CHROMIUM, SKIP_REASON, Browser
from conftest import durabatch_cli

import durabatch
from durabatch.loops.checkpointer import Checkpointer, PickleState
from durabatch.store.rundir import RunDir, run_lock

SVG = "{http://www.w3.org/2000/svg}"


def ledger_rows(run_dir: Path, sql: str) -> list[tuple]:
    conn = sqlite3.connect(f"file:{run_dir / 'ledger.sqlite'}?mode=ro", uri=True)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def charts(html_path: Path) -> dict[str, ET.Element]:
    """Each <svg> parsed on its own (and the whole page too: it is well-formed XML), by its aria-label."""
    text = html_path.read_text(encoding="utf-8")
    ET.fromstring(text.removeprefix("<!DOCTYPE html>\n"))
    for banned in ("<script", "<link", "src=", "url(", "@import"):  # self-contained: nothing fetched when opened
        assert banned not in text
    svgs = [ET.fromstring(block) for block in re.findall(r"<svg\b.*?</svg>", text, re.S)]
    return {svg.get("aria-label"): svg for svg in svgs}


def segments(svg: ET.Element) -> list[list[tuple[float, float]]]:
    """One polyline per stretch of a run: no line is drawn across a restart."""
    return [[tuple(map(float, p.split(","))) for p in line.get("points").split()]
            for line in svg.iter(f"{SVG}polyline")]


def points(svg: ET.Element) -> list[tuple[float, float]]:
    return [p for segment in segments(svg) for p in segment]


@pytest.fixture(scope="module")
def map_run(tmp_path_factory) -> Path:
    """Two runs (a --limit test run, then the rest) of a function failing on multiples of 7, 20 items a shard."""
    run_dir = tmp_path_factory.mktemp("map") / "run"
    records = [{"id": i, "text": f"item-{i}"} for i in range(200)]
    for limit in (60, None):
        durabatch.run(userfns.fails_on_sevens, records, key="id", run_dir=str(run_dir), commit_every=20,
                      progress="off", **({"limit": limit} if limit else {}))
    return run_dir


@pytest.fixture(scope="module")
def loop_run(tmp_path_factory) -> Path:
    """A loop on a fake clock (1 s a step) that crashes after step 54 and is resumed in a second process start."""
    run_dir = tmp_path_factory.mktemp("loop") / "train"
    now, state = [1000.0], {"value": 0}

    def checkpointer() -> Checkpointer:
        return Checkpointer(run_dir, PickleState(lambda: state["value"], lambda v: state.update(value=v)),
                            every_steps=10, keep_last=3, exit_on_stop=False, fsync=False, clock=lambda: now[0])

    for crash_at in (54, None):
        ckpt = checkpointer()
        for step in ckpt.range(100):
            now[0] += 1
            ckpt.record(loss=1 / (step + 1), reward=step / 2)
            if step == crash_at:
                break  # the crash: checkpoints 10..50 are on disk
        now[0] += 500  # the restart takes a while
    return run_dir


def test_map_report_html_and_json_match_the_ledger(map_run, tmp_path):
    before = hashlib.sha256((map_run / "ledger.sqlite").read_bytes()).hexdigest()
    result = durabatch_cli("report", map_run, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"wrote {map_run / 'report.html'}" in result.stdout and "done:      171 of 200" in result.stdout

    data = json.loads(durabatch_cli("report", map_run, "--json", cwd=tmp_path).stdout)
    shards = ledger_rows(map_run, "SELECT committed_at, rows FROM shards ORDER BY committed_at")
    cumulative = data["series"]["cumulative"]
    assert cumulative["at"] == [at for at, _ in shards]
    assert cumulative["done"] == list(accumulate(rows for _, rows in shards))
    rate = data["series"]["rate"]
    assert sum(r * w for r, w in zip(rate["items_per_s"], rate["width_s"], strict=True)) == pytest.approx(171)
    assert rate["t"] == sorted(rate["t"]) and rate["t"][-1] == pytest.approx(cumulative["t"][-1])

    totals = data["totals"]
    assert (totals["done"], totals["failed"], totals["total"], totals["shards"]) == (171, 29, 200, len(shards))
    assert totals["bytes"] == ledger_rows(map_run, "SELECT sum(bytes) FROM shards")[0][0]
    (by_type,) = data["failures_by_type"]
    assert (by_type["error_type"], by_type["failed"], by_type["count"]) == ("RuntimeError", 29, 29)
    runs = ledger_rows(map_run, "SELECT id, exit_code, done, failed FROM runs ORDER BY id")
    assert [(r["id"], r["exit_code"], r["done"], r["failed"]) for r in data["runs"]] == runs and len(runs) == 2

    svgs = charts(map_run / "report.html")
    assert len(points(svgs["items done (cumulative)"])) == len(shards)
    assert len(segments(svgs["items done (cumulative)"])) == 2  # the restart is a gap, marked "run 2"
    assert "run 2" in "".join(svgs["items done (cumulative)"].itertext())
    assert [r["done_before"] for r in data["runs"]] == [0, 51] and data["runs"][1]["end_state"] == "exit 1"
    assert len(points(svgs["throughput per interval (items/s)"])) == len(rate["t"])
    page = (map_run / "report.html").read_text()
    assert "RuntimeError" in page and "seven " in page  # the failures table, with an example message
    # read-only: the ledger's bytes did not change
    assert hashlib.sha256((map_run / "ledger.sqlite").read_bytes()).hexdigest() == before


@pytest.mark.skipif(CHROMIUM is None, reason=SKIP_REASON)
def test_the_report_in_headless_chromium_offline_and_a_traceback_in_two_clicks(map_run, tmp_path):
    out = tmp_path / "report.html"
    assert durabatch_cli("report", map_run, "--to", out, cwd=tmp_path).returncode == 0
    browser = Browser(tmp_path / "profile", allowed=(out.as_uri(),))
    try:
        browser.open(out.as_uri())
        drawn = browser.evaluate("""Object.fromEntries([...document.querySelectorAll('svg[aria-label]')].map(
            s => [s.getAttribute('aria-label'),
                  [...s.querySelectorAll('polyline')].reduce((n, l) => n + l.points.numberOfItems, 0)]))""")
        shards = len(ledger_rows(map_run, "SELECT name FROM shards"))
        assert drawn["items done (cumulative)"] == shards and drawn["throughput per interval (items/s)"] > 0
        traceback = "details.failure pre.traceback"
        assert browser.visible_text(traceback) == ""  # closed until asked for
        browser.click("a[href='#failed-items']")  # click 1: the failed count in the totals
        browser.wait_for("location.hash === '#failed-items'")
        browser.click("details.failure summary")  # click 2: the first failed item
        shown = browser.wait_for(f"(() => {{ const e = document.querySelector('{traceback}');"
                                 " return e.checkVisibility() ? e.innerText : ''; })()")
        assert "Traceback" in shown and "fails_on_sevens" in shown and "seven 0" in shown
        assert not browser.errors(), browser.errors()
        assert not browser.blocked, browser.blocked  # self-contained: nothing fetched from anywhere
    finally:
        browser.close()


def test_report_while_the_job_holds_its_run_directory(map_run, tmp_path):
    with run_lock(RunDir(map_run)):  # as a running job does
        result = durabatch_cli("report", map_run, "--json", "--to", tmp_path / "sub" / "r.html", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["state"] == "running"
    assert charts(tmp_path / "sub" / "r.html")["items done (cumulative)"] is not None


def test_loop_report_charts_every_metric_and_the_speed(loop_run, tmp_path):
    records = [json.loads(line) for line in (loop_run / "checkpoints" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(10, 101, 10))
    out = tmp_path / "loop.html"
    result = durabatch_cli("report", loop_run, "--to", out, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"wrote {out}" in result.stdout and "2 session(s)" in result.stdout
    assert not (loop_run / "report.html").exists()

    data = json.loads(durabatch_cli("report", loop_run, "--json", "--to", out, cwd=tmp_path).stdout)
    metrics = data["series"]["metrics"]
    for name in ("loss", "reward"):
        assert metrics[name]["step"] == [r["step"] for r in records]
        assert metrics[name]["value"] == [r["metrics"][name] for r in records]
    speed = data["series"]["steps_per_s"]
    assert speed["step"] == [20, 30, 40, 50, 70, 80, 90, 100]  # none across the restart
    assert speed["steps_per_s"] == pytest.approx([1.0] * 8)  # the fake clock: 1 s a step
    assert [c["step"] for c in data["checkpoints"]] == [80, 90, 100]

    svgs = charts(out)
    for name in ("loss", "reward"):
        pts = points(svgs[f"{name} by step"])
        assert len(pts) == len(records)
        assert [x for x, _ in pts] == sorted(x for x, _ in pts)
    loss_y = [y for _, y in points(svgs["loss by step"])]
    assert loss_y == sorted(loss_y)  # SVG y grows downwards: a falling loss is a rising y
    assert len(points(svgs["training speed (steps/s)"])) == 8


def test_a_directory_that_is_not_a_run_is_a_usage_error(tmp_path):
    for path, reason in ((tmp_path / "missing", "no such directory"), (tmp_path, "not a durabatch run directory")):
        result = durabatch_cli("report", path, cwd=tmp_path)
        assert result.returncode == 2
        assert str(path) in result.stderr and reason in result.stderr
    assert not (tmp_path / "report.html").exists()


def test_a_torn_last_metrics_line_is_skipped_by_status_and_report(loop_run, tmp_path):
    """A crash while appending to metrics.jsonl leaves half a line: status and report still read the rest."""
    copy = tmp_path / "train"
    shutil.copytree(loop_run, copy)
    with open(copy / "checkpoints" / "metrics.jsonl", "a") as f:
        f.write('{"step": 110, "time": 17')
    status = durabatch_cli("status", copy, "--json", cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["latest"]["step"] == 100
    report = durabatch_cli("report", copy, "--json", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    assert "110" not in json.dumps(json.loads(report.stdout).get("metrics", {}))
