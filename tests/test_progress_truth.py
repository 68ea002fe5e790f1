"""Issue 12 item 3, progress that tells the truth: one rate (items done per second over the last 60 s of the run,
the whole run while it is younger) for the bar, `status` and `status --json`; an API job's bar shows in flight,
req/min (answered requests, not 429s), 429s, tokens/min and cost; `status` after a kill -9 says died; the
quarantine counts agree between the summary, `status` and `retry-failed`; messages under the bar start clean."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import userfns
from conftest import TESTS, committed_rows, make_records, wait_until, write_jsonl

import durabatch
from durabatch.core.events import Stats
from durabatch.observe.progress import BarProgress, PlainProgress
from durabatch.observe.rate import RunRates, format_api, windowed_rate
from durabatch.observe.status import render


def cli(*args, cwd, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "durabatch", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


# -- one definition --------------------------------------------------------------------------------------------------
def test_the_rate_is_the_last_60_seconds_or_the_whole_run_while_younger():
    steady = [(float(t), 10.0 * t) for t in range(121)]  # 10 items/s for two minutes...
    slower = steady + [(120.0 + t, 1200.0 + 2 * t) for t in range(1, 61)]  # ...then 2 items/s for one
    assert windowed_rate(slower, 0.0, 180.0) == pytest.approx(2.0)  # only the last 60 s count
    assert windowed_rate(slower, 0.0, 150.0) == pytest.approx((1260 - 900) / 60)
    assert windowed_rate(steady, 0.0, 30.0) == pytest.approx(10.0)  # younger than the window: the whole run
    assert windowed_rate([(0.0, 0.0), (4.0, 40.0)], 0.0, 2.0) == pytest.approx(10.0)  # between samples: linear
    assert windowed_rate(steady, 0.0, 0.5) is None  # half a second says nothing yet


class SlowSetup:
    """Loading a model takes a while, then items are quick: a rate that leaves the setup out (as `status` did,
    counting between commits) and one that keeps it in (as the bar did) disagree by about half."""

    def setup(self) -> None:
        time.sleep(1.0)  # the workload (a model loading), not a synchronisation

    def __call__(self, record: dict) -> dict:
        time.sleep(0.003)
        return {"v": record["id"]}


def test_the_bar_and_status_give_the_same_rate(tmp_path):
    out = io.StringIO()
    durabatch.run(SlowSetup, make_records(300), key="id", run_dir=tmp_path / "run", commit_every=30,
                  progress="off", observers=[PlainProgress(every=3600, stream=out)])
    bar_rate = float(re.findall(r"([\d,.]+) items/s", out.getvalue())[-1].replace(",", ""))
    info = durabatch.status(tmp_path / "run")
    assert info["rate_window"] == "last 60 s before it ended"
    assert info["rate_per_s"] == pytest.approx(bar_rate, rel=0.15)  # one definition, measured twice
    assert f"{info['rate_per_s']:,.1f} items/s (last 60 s before it ended)" in render(info)
    as_json = json.loads(cli("status", tmp_path / "run", "--json", cwd=tmp_path).stdout)
    assert as_json["rate_per_s"] == pytest.approx(info["rate_per_s"])


# -- API figures -----------------------------------------------------------------------------------------------------
def test_requests_per_minute_count_answers_not_429s():
    rates = RunRates()
    for t in range(31):  # 20 calls/s, half of them answered 429: 10 answers/s
        snapshot = {"in_flight": 3, "requests": 20 * t + 3, "answered": 20 * t, "rate_limited": 10 * t,
                    "retries": 0, "tokens": 1000 * t, "cost": 0.01 * t, "currency": "EUR"}
        figures = Stats(total=None, already_done=0, done=10 * t, elapsed=float(t), extra=snapshot)
        api = rates.update(figures).api
    assert api["requests_per_min"] == pytest.approx(600)
    assert api["tokens_per_min"] == pytest.approx(60_000)
    assert format_api(api) == "3 in flight | 600 req/min | 429s 300 | retries 0 | 60,000 tokens/min | cost 0.3000 EUR"


def test_an_api_job_bar_and_status_show_in_flight_req_min_429s_tokens_and_cost(tmp_path, monkeypatch):
    pytest.importorskip("openai")
    from durabatch.testing import AskAsync, LLMServer, ServerConfig

    class AskAfterA429Burst(AskAsync):
        server: LLMServer

        def setup(self) -> None:
            super().setup()
            self.server.started = time.monotonic()  # the server's 429 burst starts as the first calls go out

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-durabatch-progress")
    monkeypatch.setenv("COLUMNS", "200")  # the bar's API line whole, not cut to 80 columns
    out = io.StringIO()
    with LLMServer(ServerConfig(reject_until=1.5)) as server:
        monkeypatch.setenv("LLM_BASE_URL", server.url)
        AskAfterA429Burst.server = server
        questions = [{"id": i, "question": f"Question {i}?"} for i in range(60)]
        summary = durabatch.run(AskAfterA429Burst, questions, key="id", run_dir=tmp_path / "run", progress="off",
                                rpm=3000, price_input=0.15, price_output=0.6, observers=[BarProgress(stream=out)])
        rejected, answered = len(server.log.rejections), server.log.ok
    assert summary.exit_code == 0 and rejected > 0 and answered == 60
    bar = out.getvalue()
    shown = re.search(r"\d+ in flight \| [\d,]+ req/min \| 429s (\d+) \| retries \d+ \| [\d,]+ tokens/min \| "
                      r"cost \d\.\d{4} USD", bar)
    assert shown, bar
    assert int(shown.group(1)) <= rejected  # the bar's last figures are the runner's last notice (every 0.2 s)
    info = durabatch.status(tmp_path / "run")
    assert info["api"]["rate_limited"] == rejected  # every 429 the server sent, none lost or invented
    assert info["api"]["requests_per_min"] > 0
    line = next(x for x in render(info).splitlines() if x.startswith("api:"))
    assert f"{info['api']['requests_per_min']:,.0f} req/min" in line and f"{rejected:,} answered 429" in line
    assert "tokens/min (last 60 s before it ended)" in line


def test_a_message_under_the_bar_starts_with_the_prefix_not_a_space():
    out = io.StringIO()
    BarProgress(stream=out).on_message("resuming: 3 items already done")
    assert out.getvalue().splitlines() == ["[durabatch] resuming: 3 items already done"]


# -- died, stopped, finished -----------------------------------------------------------------------------------------
def test_status_says_died_after_kill_9_and_stopped_after_a_warm_stop(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", make_records(200))
    gate = tmp_path / "gate"  # items from 50 on wait for it: the run is surely mid-way when the test acts
    (tmp_path / "gatedfn.py").write_text(
        "import os, time\ndef f(r):\n    while r['id'] >= 50 and not os.path.exists(os.environ['GATE']):\n"
        "        time.sleep(0.01)\n    return {'x': r['id']}\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{TESTS}", "GATE": str(gate)}
    args = [sys.executable, "-m", "durabatch", "run", "-i", data, "--key", "id", "--fn", "gatedfn:f",
            "--run-dir", tmp_path / "r", "--commit-every", "10", "--progress", "off", "--grace-seconds", "1"]

    def started_and_committed(proc, runs):
        # The run log's start line comes after the stop handlers are installed (the lock is taken before them:
        # a SIGTERM in between would end the process the default way, with -15).
        def started() -> bool:
            log = tmp_path / "r" / "logs" / "run.log"
            return log.exists() and log.read_text().count(" start: ") == runs
        wait_until(lambda: committed_rows(tmp_path / "r") > 0 and durabatch.status(tmp_path / "r")["pid"] == proc.pid
                   and started(), timeout=300, what="a first commit by the new run")

    proc = subprocess.Popen(args, cwd=tmp_path, env=env, stderr=subprocess.DEVNULL)
    started_and_committed(proc, 1)
    proc.kill()  # SIGKILL: no end recorded
    proc.wait(timeout=60)
    info = durabatch.status(tmp_path / "r")
    assert info["state"] == "died" and info["pid"] is None and info["eta_s"] is None
    assert info["last_seen_at"] is not None and info["last_seen_at"] <= time.time()
    text = cli("status", tmp_path / "r", cwd=tmp_path).stdout
    assert "state:     died (not running" in text and "last seen" in text and "stopped" not in text

    proc = subprocess.Popen(args, cwd=tmp_path, env=env, stderr=subprocess.DEVNULL)
    started_and_committed(proc, 2)
    proc.send_signal(signal.SIGTERM)  # a warm stop records its end
    assert proc.wait(timeout=120) == 75
    assert durabatch.status(tmp_path / "r")["state"] == "stopped"

    gate.touch()
    assert cli(*args[3:], cwd=tmp_path, env=env).returncode == 0
    assert durabatch.status(tmp_path / "r")["state"] == "finished"


# -- quarantine counts -----------------------------------------------------------------------------------------------
def test_quarantine_counts_agree_and_retry_failed_says_how_to_include_them(tmp_path, caplog):
    summary = durabatch.run(userfns.dies_on_13, make_records(40), key="id", run_dir=tmp_path / "run",
                            engine="processes", workers=2, progress="off")
    assert summary.exit_code == 1 and summary.quarantined == 1
    assert "0 failed, 1 quarantined" in str(summary)
    info = durabatch.status(tmp_path / "run")
    assert (info["failed"], info["quarantined"]) == (0, 1)
    assert "quarantined: 1" in render(info)

    result = cli("retry-failed", tmp_path / "run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines()[0] == "0 item(s) put back"
    assert "1 quarantined item(s)" in result.stderr
    assert f"`durabatch retry-failed {tmp_path / 'run'} --quarantined` puts them back too" in result.stderr

    with caplog.at_level(logging.WARNING, logger="durabatch"):
        assert durabatch.retry_failed(tmp_path / "run") == 0
    assert "1 quarantined item(s)" in caplog.text and "quarantined=True" in caplog.text

    result = cli("retry-failed", tmp_path / "run", "--quarantined", cwd=tmp_path)
    assert result.stderr.splitlines() == ["1 item(s) put back; run the job again to retry them"]
