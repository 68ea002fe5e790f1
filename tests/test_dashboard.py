"""`durabatch dashboard`: the server in-process on a free port over real run directories (a job with failures and
a restart, an API-like job with rate limits, a training loop logging metrics by step), its JSON endpoints, and
the page in a real headless Chromium: the numbers shown, loaded with every other host blocked, charts drawn, no
console error, a failed item's traceback two clicks away."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import userfns
from browser import SKIP_REASON, Browser

import durabatch
from durabatch.loops.checkpointer import Checkpointer, PickleState
from durabatch.observe.dashboard import make_server

CHROMIUM = shutil.which("chromium")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> list[Path]:
    base = tmp_path_factory.mktemp("dash")
    records = [{"id": i, "text": f"item-{i}"} for i in range(200)]
    failing = base / "failing"
    for limit in (60, None):  # two runs: a restart
        durabatch.run(userfns.fails_on_sevens, records, key="id", run_dir=str(failing), commit_every=20,
                      progress="off", **({"limit": limit} if limit else {}))
    api = base / "api"
    durabatch.run(userfns.digest, records[:50], key="id", run_dir=str(api), engine="threads", workers=4, rpm=60000,
                  commit_every=10, progress="off")
    return [failing, api, logged_loop(base / "loop")]


def logged_loop(run_dir: Path) -> Path:
    """300 steps on a fake clock (10 ms a step), a loss and an accuracy logged every step, checkpoints every 100."""
    now, state = [1000.0], {"n": 0}
    ckpt = Checkpointer(run_dir, PickleState(lambda: state["n"], lambda v: state.update(n=v)), every_steps=100,
                        fsync=False, clock=lambda: now[0], progress="off")
    for step in ckpt.range(300):
        now[0] += 0.01
        state["n"] += 1
        ckpt.log(loss=1 / (step + 1), accuracy=step / 300)
    return run_dir


@pytest.fixture(scope="module")
def server(runs):
    srv = make_server(runs, port=0)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def get(server, path: str):
    with urllib.request.urlopen(server.url.rstrip("/") + path, timeout=30) as r:
        body = r.read().decode()
        return json.loads(body) if r.headers["Content-Type"] == "application/json" else body


def test_binds_to_localhost_only(server):
    assert server.server_address[0] == "127.0.0.1"


def test_runs_endpoint_counts(server):
    failing, api, loop = get(server, "/api/runs")
    assert (failing["done"], failing["failed"], failing["total"], failing["state"]) == (171, 29, 200, "finished")
    assert (api["done"], api["failed"], api["total"]) == (50, 0, 50)
    assert api["api"]["requests"] == 50
    assert loop["kind"] == "loop" and (loop["step"], loop["total"], loop["logged"]["step"]) == (300, 300, 300)
    assert set(loop["logged"]["metrics"]) == {"loss", "accuracy"}


def test_run_endpoint_has_runs_series_and_job(server):
    data = get(server, "/api/run/0")
    assert data["totals"]["done"] == 171 and len(data["runs"]) == 2
    assert [r["done_before"] for r in data["runs"]] == [0, 51]
    assert [r["end_state"] for r in data["runs"]] == ["exit 1", "exit 1"]
    assert len(data["series"]["restarts"]) == 1
    assert data["job"]["settings"]  # what was run
    resources = data["resources"]
    assert len(resources["ram_mb"]) == 2 and all(v > 0 for v in resources["ram_mb"])  # one sample per run so far
    assert resources["t"][1] > data["series"]["restarts"][0]  # the second run's sample is after its start
    html = get(server, "/api/run/0/html")
    assert "items done (cumulative)" in html and "<svg" in html


def test_failures_are_paged_with_tracebacks_and_attempts(server):
    page = get(server, "/api/run/0/failures?offset=0&limit=10")
    assert page["total"] == 29 and len(page["items"]) == 10
    first = page["items"][0]
    assert first["error_type"] == "RuntimeError" and "seven 0" in first["message"]
    assert "Traceback" in first["traceback"] and "fails_on_sevens" in first["traceback"]
    assert first["history"] and all(a["error_type"] == "RuntimeError" for a in first["history"])
    last = get(server, "/api/run/0/failures?offset=20&limit=10")
    assert len(last["items"]) == 9 and last["items"][-1]["key"] == "196"


def test_sample_rows(server):
    sample = get(server, "/api/run/1/sample?n=5")
    assert sample["columns"][0] == "id" and "digest" in sample["columns"]
    assert len(sample["rows"]) == 5 and all(len(r["digest"]) == 16 for r in sample["rows"])


def test_unknown_paths_and_bad_indexes(server):
    for path, code in (("/nope", 404), ("/api/run/9", 400), ("/api/run/0/failures?offset=x", 400)):
        with pytest.raises(urllib.error.HTTPError) as info:
            get(server, path)
        assert info.value.code == code


@pytest.mark.skipif(CHROMIUM is None, reason=SKIP_REASON)
def test_the_page_in_headless_chromium(server, tmp_path):
    args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'p'}",
            "--virtual-time-budget=5000"]
    dom = subprocess.run([*args, "--dump-dom", server.url], capture_output=True, text=True, timeout=120).stdout
    assert 'class="done">171</b> of <b class="total">200</b>' in dom
    assert 'class="done">50</b> of <b class="total">50</b>' in dom
    assert "429s" in dom  # the API job's counters
    assert dom.count('aria-label="items done (cumulative)"') == 2  # the report's charts, one per run directory
    assert "RuntimeError: seven 7" in dom and "Traceback" in dom  # the failure browser
    assert "digest" in dom  # the sample of result rows
    shot = tmp_path / "dashboard.png"
    subprocess.run([*args, "--window-size=1200,2400", f"--screenshot={shot}", server.url], capture_output=True,
                   timeout=120, check=False)
    assert shot.exists() and shot.stat().st_size > 10_000
    shutil.copy(shot, Path("/tmp/durabatch-dashboard.png"))  # for a human to look at


@pytest.mark.skipif(CHROMIUM is None, reason=SKIP_REASON)
def test_offline_charts_no_console_errors_and_a_traceback_in_two_clicks(server, tmp_path):
    browser = Browser(tmp_path / "profile", allowed=(server.url,))
    try:
        browser.open(server.url)
        browser.wait_for("document.querySelectorAll('details.failure').length > 0"
                         " && document.querySelector('#run2 .body svg') !== null")
        drawn = browser.evaluate("""Object.fromEntries([...document.querySelectorAll('.body svg[aria-label]')].map(
            s => [s.closest('section').id + ': ' + s.getAttribute('aria-label'),
                  [...s.querySelectorAll('polyline')].reduce((n, l) => n + l.points.numberOfItems, 0)]))""")
        for i in (0, 1):  # a point per shard committed
            shards = len(get(server, f"/api/run/{i}")["series"]["cumulative"]["done"])
            assert drawn[f"run{i}: items done (cumulative)"] == shards > 0
        # the loop: every logged metric by step, with a point per logged row (~20 a second), and its speed
        assert drawn["run2: loss by step"] >= 30 and drawn["run2: accuracy by step"] >= 30
        assert drawn["run2: training speed (steps/s)"] >= 10
        assert re.match(r"loop: step 300 of 300; loss=0\.00\d+, accuracy=0\.99",
                        browser.evaluate("document.querySelector('#run2 .head').innerText"))

        traceback = "#run0 details.failure pre.traceback"
        assert browser.visible_text(traceback) == ""  # closed until asked for
        browser.click("#run0 a.failed-link")  # click 1: the failed count in the run's head line
        browser.wait_for("location.hash === '#failures-0'")
        browser.click("#run0 details.failure summary")  # click 2: the first failed item
        shown = browser.wait_for(f"(() => {{ const e = document.querySelector('{traceback}');"
                                 " return e.checkVisibility() ? e.innerText : ''; })()")
        assert "Traceback" in shown and "fails_on_sevens" in shown and "seven 0" in shown

        assert not browser.errors(), browser.errors()
        assert not browser.blocked, browser.blocked  # nothing but the dashboard was asked for
        assert browser.requests and all(url.startswith(server.url) for url in browser.requests)
    finally:
        browser.close()
