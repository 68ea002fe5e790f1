"""`durabatch dashboard`: the server in-process on a free port over real run directories (a job with failures and
a restart, an API-like job with rate limits), its JSON endpoints, and the page rendered by a real headless
Chromium (its JS run) showing the numbers."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import userfns

import durabatch
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
    return [failing, api]


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
    failing, api = get(server, "/api/runs")
    assert (failing["done"], failing["failed"], failing["total"], failing["state"]) == (171, 29, 200, "finished")
    assert (api["done"], api["failed"], api["total"]) == (50, 0, 50)
    assert api["api"]["requests"] == 50


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


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (`apt-get install -y chromium`, or "
                                              "`make test` as root installs it)")
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
