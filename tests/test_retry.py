"""Retries: transient errors get more attempts with backoff, programming errors fail at once."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import userfns

import durabatch
from durabatch.errors import ItemError
from durabatch.policies.retry import RetryPolicy, full_jitter, make_retryable


def err(exc: BaseException) -> ItemError:
    return ItemError.from_exception(exc)


def test_default_rules():
    rule = make_retryable()
    assert rule(err(TimeoutError()))
    assert rule(err(ConnectionResetError()))  # a ConnectionError subclass
    assert rule(err(userfns.HTTPError(429)))
    assert rule(err(userfns.HTTPError(503)))
    assert not rule(err(userfns.HTTPError(400)))
    assert not rule(err(ValueError()))
    assert not rule(err(KeyError("x")))
    assert not rule(err(RuntimeError()))


def test_names_from_other_libraries_without_importing_them():
    RateLimitError = type("RateLimitError", (Exception,), {})  # the shape of openai.RateLimitError
    ReadTimeout = type("ReadTimeout", (Exception,), {})  # httpx / requests
    assert make_retryable()(err(RateLimitError()))
    assert make_retryable()(err(ReadTimeout()))


def test_user_rules_win():
    assert make_retryable(retry_on=["RuntimeError"])(err(RuntimeError()))
    assert not make_retryable(fatal_on=["ConnectionError"])(err(ConnectionResetError()))


def test_full_jitter_is_bounded_and_grows():
    backoff = full_jitter(base=1.0, cap=10.0)
    assert all(0 <= backoff(1) <= 1 for _ in range(100))
    assert all(0 <= backoff(10) <= 10 for _ in range(100))
    assert max(backoff(4) for _ in range(200)) > 1.0


def test_retry_after_wins_over_backoff():
    policy = RetryPolicy(backoff=lambda n: 99.0)
    assert policy.delay(err(userfns.HTTPError(429, retry_after=2.5)), 1) == 2.5
    assert policy.delay(err(TimeoutError()), 1) == 99.0


def _run(tmp_path, fn, **kw):
    userfns._calls.clear()
    return durabatch.run(fn, [{"id": i} for i in range(20)], key="id", run_dir=tmp_path / "run", progress="off",
                         backoff_base=0.001, **kw)


def test_transient_errors_are_retried_until_success(tmp_path):
    summary = _run(tmp_path, userfns.flaky_twice, max_attempts=3)
    assert summary.exit_code == 0 and summary.done == 20
    durabatch.export(tmp_path / "run", to=tmp_path / "o.parquet")
    assert set(pq.read_table(tmp_path / "o.parquet").column("calls").to_pylist()) == {3}


def test_attempts_run_out(tmp_path):
    summary = _run(tmp_path, userfns.flaky_twice, max_attempts=2)
    assert summary.exit_code == 1 and summary.failed == 20
    durabatch.export(tmp_path / "run", to=tmp_path / "f.parquet", failed=True)
    table = pq.read_table(tmp_path / "f.parquet")
    assert set(table.column("attempts").to_pylist()) == {2}


def test_a_429_with_retry_after_is_retried(tmp_path):
    assert _run(tmp_path, userfns.http_429_once, max_attempts=2).exit_code == 0


def test_value_error_is_not_retried(tmp_path):
    summary = _run(tmp_path, userfns.value_error, max_attempts=5)
    assert summary.failed == 20 and set(userfns._calls.values()) == {1}


class _Headers(dict):
    def get(self, key, default=None):
        return super().get(key.lower(), default)


def test_retry_after_headers_in_all_their_forms():
    class Response:
        def __init__(self, headers):
            self.headers = _Headers(headers)
            self.status_code = 429

    class Limited(Exception):
        def __init__(self, headers):
            super().__init__("429")
            self.response = Response(headers)

    assert err(Limited({"retry-after": "2.5"})).retry_after == 2.5
    assert err(Limited({"retry-after-ms": "750"})).retry_after == 0.75
    assert err(Limited({"x-ratelimit-reset-requests": "6m0s", "x-ratelimit-reset-tokens": "20ms"})).retry_after == 360
    assert err(Limited({})).retry_after is None and err(Limited({})).status == 429


def test_names_on_the_command_line_may_be_comma_separated(tmp_path, records_file):
    # --retry-on A,B was one name "A,B" that no exception has (and --ray-env A,B one variable).
    from conftest import durabatch_cli

    run_dir = tmp_path / "r"
    result = durabatch_cli("run", "-i", records_file(5), "--key", "id", "--fn", "userfns:digest", "--run-dir",
                           run_dir, "--progress", "off", "--retry-on", "RateLimited,Overloaded", "--retry-on", "Busy",
                           "--fatal-on", "BadInput, WrongShape", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    settings = json.loads((run_dir / "job.json").read_text())["settings"]
    assert settings["retry_on"] == ["RateLimited", "Overloaded", "Busy"]
    assert settings["fatal_on"] == ["BadInput", "WrongShape"]
