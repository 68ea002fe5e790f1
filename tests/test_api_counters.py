"""Issue 12 (API part): the API counters and budgets cover every run of a job, not the last; a history of them is
kept at commits and charted by the report and the dashboard; cost is shown with its currency."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import urllib.request

import pytest

import durabatch
from durabatch.errors import ExitCode
from durabatch.observe import dashboard, report
from durabatch.policies.api_metrics import HISTORY_POINTS, ApiMetrics, thin
from durabatch.testing import AskAsync, LLMServer, ServerConfig

pytest.importorskip("openai")
PRICES = {"price_input": 1000.0, "price_output": 1000.0, "currency": "EUR"}  # ~0.01 EUR a call here


@pytest.fixture(autouse=True)
def api_env(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-counters")


def questions(n):
    return [{"id": i, "question": f"Question {i}: which letter?"} for i in range(n)]


def run(tmp_path, server, n, **kw):
    os.environ["LLM_BASE_URL"] = server.url
    return durabatch.run(AskAsync, questions(n), key="id", run_dir=tmp_path / "run", progress="off",
                         concurrency=2, **PRICES, **kw)


def history(tmp_path) -> list:
    conn = sqlite3.connect(tmp_path / "run" / "ledger.sqlite")
    try:
        return json.loads(conn.execute("SELECT v FROM meta WHERE k = 'api_history'").fetchone()[0])
    finally:
        conn.close()


# -- pure ----------------------------------------------------------------------------------------------------------
def test_a_seeded_run_counts_on_from_the_earlier_totals_and_keeps_the_job_budget():
    earlier = {"requests": 12, "answered": 12, "rate_limited": 2, "retries": 1, "tokens": 900, "cost": 0.95,
               "in_flight": 0}
    metrics = ApiMetrics(price_input=1.0, max_cost=1.0, currency="EUR")
    metrics.seed(earlier, [[100.0, 1, 0, 0, 0, 0.0], [110.0, 1, 10, 2, 900, 0.95]])
    assert (metrics.requests, metrics.rate_limited, metrics.tokens, metrics.cost) == (12, 2, 900, 0.95)
    # 0.95 of the 1.0 budget went in the earlier run: the next call could pass it, so it does not start
    assert not metrics.try_start(10)
    assert "EUR" in metrics.over_budget and "all runs" in metrics.over_budget
    points = metrics.mark(200.0, 2)
    assert points[:2] == [[100.0, 1, 0, 0, 0, 0.0], [110.0, 1, 10, 2, 900, 0.95]]
    assert points[2][1:] == [2, 10, 2, 900, 0.95]  # run 2 starts from the totals run 1 committed
    assert points[3] == [200.0, 2, 10, 2, 900, 0.95]
    assert metrics.snapshot()["currency"] == "EUR"


def test_the_history_stays_bounded_and_keeps_each_runs_ends():
    metrics = ApiMetrics()
    for i in range(5 * HISTORY_POINTS):
        metrics.started()
        metrics.finished({"prompt": 1, "completion": 1, "total": 2})
        points = metrics.mark(1000.0 + i, 1 + i // HISTORY_POINTS)
    assert len(points) <= HISTORY_POINTS
    for run in range(1, 6):
        mine = [p for p in points if p[1] == run]
        assert mine[-1][0] == 1000.0 + run * HISTORY_POINTS - 1  # each run's last commit survives thinning
    assert points[-1][2] == 5 * HISTORY_POINTS  # accepted requests: all of them, all runs
    assert len(thin([[0, 1], [1, 1], [2, 2], [3, 2], [4, 2]])) == 4  # [2] starts run 2, [1] ends run 1


# -- real runs against the local server ---------------------------------------------------------------------------
def test_counters_and_the_cost_budget_cover_all_runs(tmp_path):
    with LLMServer(ServerConfig(latency_median=0.01)) as server:
        first = run(tmp_path, server, 40, max_cost=0.1)
        assert first.exit_code == ExitCode.STOPPED and 0 < first.done < 40
        after_first = server.log.ok
        # The same budget again: it was spent by the first run, so this run makes (almost) no call.
        again = run(tmp_path, server, 40, max_cost=0.1)
        assert again.exit_code == ExitCode.STOPPED
        assert server.log.ok - after_first <= 2
        last = run(tmp_path, server, 40, max_cost=100.0)
        assert last.exit_code == ExitCode.DONE
        served = server.log.ok
    api = durabatch.status(tmp_path / "run")["api"]
    assert api["answered"] - api["rate_limited"] == served  # every request the server answered, all runs
    assert api["currency"] == "EUR" and 0.3 < api["cost"] < 100.0
    points = history(tmp_path)
    assert {p[1] for p in points} >= {1, 3} and points[-1][2] == served
    assert [p[0] for p in points] == sorted(p[0] for p in points)

    data = report.collect(tmp_path / "run")  # the report's and the dashboard's data (/api/run/<i>)
    series = data["api_series"]
    assert series["t"] and all(rate >= 0 for rate in series["requests_per_min"])
    assert series["cost"][-1] == pytest.approx(api["cost"], rel=1e-3)
    body = report.body_html(data)
    assert "API requests accepted per minute" in body and "429s per minute" in body and "tokens per minute" in body
    assert "cost (EUR, cumulative)" in body and "EUR" in body and "all runs" in body

    server = dashboard.make_server([tmp_path / "run"])  # the live page's JSON carries the same series
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with urllib.request.urlopen(server.url + "api/run/0", timeout=30) as response:
            live = json.loads(response.read())
    finally:
        server.shutdown()
        server.server_close()
    assert live["api_series"]["requests_per_min"] == series["requests_per_min"]
    assert live["api"]["currency"] == "EUR"


def test_status_shows_the_cost_with_its_currency(tmp_path):
    with LLMServer(ServerConfig(latency_median=0.01)) as server:
        run(tmp_path, server, 6)
    text = subprocess.run([sys.executable, "-m", "durabatch", "status", str(tmp_path / "run")],
                          capture_output=True, text=True).stdout
    assert "EUR" in text
