"""`--batch-api openai`: a job through the provider's Batch API, against the local fake (durabatch.testing.
BatchServer) driven by the official openai client. Every item ends up exactly once; a kill -9 at any stage is
resumed without any item ever being in two batches (no double billing)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
from pathlib import Path

import pytest
from conftest import durabatch_cli, durabatch_popen, ledger_query, read_export, wait_until, write_jsonl

import durabatch
from durabatch.errors import ExitCode
from durabatch.observe.status import render, status
from durabatch.testing import BatchServer, BatchServerConfig, answer_for

pytest.importorskip("openai")

BUILD = "durabatch.testing.batch_server:question_request"
PARSE = "durabatch.testing.batch_server:answer_letter"
N = 30


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "data.jsonl", [{"id": i, "question": f"question {i}?"} for i in range(N)])


@pytest.fixture
def openai_env(monkeypatch: pytest.MonkeyPatch):
    def point(server: BatchServer) -> dict[str, str]:
        env = {"OPENAI_BASE_URL": server.url, "OPENAI_API_KEY": "sk-test"}
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        return env
    return point


def run_in_process(data: Path, run_dir: Path, **settings) -> durabatch.RunSummary:
    return durabatch.run(BUILD, str(data), key="id", run_dir=str(run_dir), batch_api="openai", parse=PARSE,
                         batch_requests=10, batch_poll=0.05, progress="off", **settings)


def check_exactly_once(run_dir: Path, tmp_path: Path, server: BatchServer, n: int = N) -> None:
    table = read_export(run_dir, tmp_path)
    assert sorted(table.column("id").to_pylist()) == list(range(n))
    for row in table.to_pylist():
        assert row["answer"] == answer_for(f"question {row['id']}?")


def test_end_to_end_exactly_once(data, tmp_path, openai_env):
    run_dir = tmp_path / "run"
    with BatchServer() as server:
        openai_env(server)
        summary = run_in_process(data, run_dir)
        assert summary.exit_code == ExitCode.DONE and summary.done == N
        assert len(server.log.batches) == 3  # 30 requests, at most 10 per batch
        assert set(server.log.submissions().values()) == {1}
        assert all(b["metadata"]["durabatch_chunk"] for b in server.log.batches)
        again = run_in_process(data, run_dir)  # a finished job submits nothing
        assert again.exit_code == ExitCode.DONE and again.done == 0 and len(server.log.batches) == 3
    check_exactly_once(run_dir, tmp_path, server)
    info = status(run_dir)
    assert [b["state"] for b in info["batches"]] == ["done"] * 3
    assert [b["counts"]["completed"] for b in info["batches"]] == [10, 10, 10]
    assert "batches:   3 (0 live)" in render(info)
    assert not list((run_dir / "batch_requests").iterdir())  # request files go once their batch is committed


def test_line_errors_are_failures_resubmitted_after_retry_failed(data, tmp_path, openai_env):
    run_dir = tmp_path / "run"
    with BatchServer(BatchServerConfig(line_errors={"3", "17"})) as server:
        openai_env(server)
        first = run_in_process(data, run_dir)
        assert first.exit_code == ExitCode.FAILED and first.done == N - 2 and first.failed_total == 2
        failures = ledger_query(run_dir, "SELECT key, error_type FROM failures ORDER BY pos")
        assert failures == [("3", "server_error"), ("17", "server_error")]
        assert durabatch.retry_failed(run_dir) == 2
        second = run_in_process(data, run_dir)
        assert second.exit_code == ExitCode.DONE and second.done == 2
        submitted = server.log.submissions()
    assert len(server.log.batches) == 4 and server.log.batches[-1]["custom_ids"] == ["3", "17"]
    assert {k for k, v in submitted.items() if v == 2} == {"3", "17"} and max(submitted.values()) == 2
    check_exactly_once(run_dir, tmp_path, server)


def test_failed_and_expired_batches(data, tmp_path, openai_env):
    run_dir = tmp_path / "run"
    with BatchServer(BatchServerConfig(fail={0}, expire={1})) as server:
        openai_env(server)
        first = run_in_process(data, run_dir)
        assert first.exit_code == ExitCode.FAILED and first.done == 15 and first.failed_total == 15
        kinds = dict(ledger_query(run_dir, "SELECT error_type, count(*) FROM failures GROUP BY 1"))
        assert kinds == {"BatchFailed": 10, "batch_expired": 5}
        message = ledger_query(run_dir, "SELECT message FROM failures WHERE error_type = 'BatchFailed'")[0][0]
        assert "the fake server fails this batch" in message
        assert [b["batch_status"] for b in status(run_dir)["batches"]] == ["failed", "expired", "completed"]
        durabatch.retry_failed(run_dir)
        second = run_in_process(data, run_dir)
        assert second.exit_code == ExitCode.DONE and second.done == 15
    check_exactly_once(run_dir, tmp_path, server)


def test_max_cost_is_estimated_before_submitting(data, tmp_path, openai_env):
    run_dir = tmp_path / "run"
    with BatchServer() as server:
        openai_env(server)
        # ~10 input + 5 output tokens a request at 1,000/M, halved: ~0.01 a request, ~0.1 a batch of 10
        summary = run_in_process(data, run_dir, max_cost=0.15, price_input=1000.0, price_output=1000.0)
        assert summary.exit_code == ExitCode.STOPPED and summary.stopped == "budget"
        assert len(server.log.batches) == 1 and summary.done == 10
        more = run_in_process(data, run_dir, max_cost=1.0, price_input=1000.0, price_output=1000.0)
        assert more.exit_code == ExitCode.DONE
        assert set(server.log.submissions().values()) == {1}
    check_exactly_once(run_dir, tmp_path, server)


def test_commit_without_its_chunk_marked_done_is_not_committed_twice(data, tmp_path, openai_env):
    """A kill between a chunk's commit and marking it done leaves this ledger: the next run finds its batch
    finished, downloads it again and commits nothing twice."""
    run_dir = tmp_path / "run"
    with BatchServer() as server:
        openai_env(server)
        assert run_in_process(data, run_dir).exit_code == ExitCode.DONE
        conn = sqlite3.connect(run_dir / "ledger.sqlite")
        conn.execute("UPDATE batch_chunks SET state = 'submitted' WHERE seq = 1")
        conn.commit()
        conn.close()
        again = run_in_process(data, run_dir)
        assert again.exit_code == ExitCode.DONE and again.done == 0 and len(server.log.batches) == 3
    assert ledger_query(run_dir, "SELECT count(*) FROM batch_chunks WHERE state = 'done'") == [(3,)]
    check_exactly_once(run_dir, tmp_path, server)


def test_provider_unreachable_stops_resumably(data, tmp_path, monkeypatch, openai_env):
    run_dir = tmp_path / "run"
    with BatchServer() as closed:
        url = closed.url
    monkeypatch.setenv("OPENAI_BASE_URL", url)  # nothing listens there any more
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    summary = run_in_process(data, run_dir)
    assert summary.exit_code == ExitCode.STOPPED and summary.stopped == "provider error"
    assert _chunk_states(run_dir) == [("planned", 0, 0)]
    with BatchServer() as server:
        openai_env(server)
        assert run_in_process(data, run_dir).exit_code == ExitCode.DONE
        assert len(server.log.batches) == 3 and set(server.log.submissions().values()) == {1}
    check_exactly_once(run_dir, tmp_path, server)


# -- kill -9 at every stage ------------------------------------------------------------------------------------
def _cli_args(data: Path, run_dir: Path) -> list:
    return ["run", "--input", data, "--key", "id", "--fn", BUILD, "--parse", PARSE, "--batch-api", "openai",
            "--run-dir", run_dir, "--batch-requests", 10, "--batch-poll", 0.05, "--progress", "plain"]


def _chunk_states(run_dir: Path) -> list[tuple]:
    return ledger_query(run_dir, "SELECT state, file_id IS NOT NULL, batch_id IS NOT NULL FROM batch_chunks "
                                 "ORDER BY seq")


@pytest.mark.parametrize("stage", ["upload", "create", "created", "poll", "download"])
def test_kill_at_every_stage_then_resume(stage, data, tmp_path):
    run_dir = tmp_path / "run"
    with BatchServer(BatchServerConfig(pause_at=stage)) as server:
        env = {"OPENAI_BASE_URL": server.url, "OPENAI_API_KEY": "sk-test"}
        log = open(tmp_path / "first.log", "w")  # noqa: SIM115 - closed below
        proc = durabatch_popen(*_cli_args(data, run_dir), cwd=tmp_path, env=env, stdout=log,
                               stderr=subprocess.STDOUT)
        try:
            wait_until(server.paused.is_set, timeout=120, what=f"the runner to reach '{stage}'")
            os.kill(proc.pid, signal.SIGKILL)
            assert proc.wait(timeout=30) == -signal.SIGKILL
        finally:
            if proc.poll() is None:
                proc.kill()
            log.close()
            server.release()
        states = _chunk_states(run_dir)
        expected = {"upload": ("planned", 0, 0), "create": ("uploaded", 1, 0), "created": ("uploaded", 1, 0),
                    "poll": ("submitted", 1, 1), "download": ("submitted", 1, 1)}[stage]
        assert states[0] == expected, states
        created_before = len(server.log.batches)
        if stage == "created":
            assert created_before == 1  # the batch exists; the ledger does not know its id
        resumed = durabatch_cli(*_cli_args(data, run_dir), cwd=tmp_path, env=env)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        if stage == "created":
            assert "adopted" in resumed.stderr
        submitted = server.log.submissions()
    assert len(server.log.batches) == 3, server.log.events  # one batch per chunk: nothing created twice
    assert sorted(submitted) == sorted(str(i) for i in range(N)) and set(submitted.values()) == {1}
    check_exactly_once(run_dir, tmp_path, server)
    assert [s[0] for s in _chunk_states(run_dir)] == ["done"] * 3


def test_status_shows_live_batches(data, tmp_path):
    run_dir = tmp_path / "run"
    with BatchServer(BatchServerConfig(pause_at="download")) as server:
        env = {"OPENAI_BASE_URL": server.url, "OPENAI_API_KEY": "sk-test"}
        proc = durabatch_popen(*_cli_args(data, run_dir), cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
        try:
            wait_until(server.paused.is_set, timeout=120, what="the first download")
            shown = durabatch_cli("status", run_dir, "--json", cwd=tmp_path)
            info = json.loads(shown.stdout)
            assert info["state"] == "running" and len(info["batches"]) == 3
            assert {b["state"] for b in info["batches"]} == {"submitted"}
            assert info["batches"][0]["batch_status"] == "completed"
        finally:
            proc.kill()
            proc.wait()
            server.release()
