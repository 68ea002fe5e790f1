"""A job that fails everything stops early (issue 10 item 13): after --max-consecutive-failures final failures of
one error type with no success between (default 50), the run commits what it has, records the failures and exits
1 naming the error and the setting; 0 never stops. Retries do not count until they are final."""

from __future__ import annotations

import fns_stops
from conftest import durabatch_cli, ledger_query, make_records

import durabatch


def failures(run_dir) -> int:
    return ledger_query(run_dir, "SELECT count(*) FROM failures WHERE state = 'failed'")[0][0]


def test_a_typo_stops_the_run_after_50_failures_with_exit_1(tmp_path, records_file):
    n = 5000
    data = records_file(n)
    run_dir = tmp_path / "r"
    result = durabatch_cli("run", "-i", data, "--key", "id", "--fn", "fns_stops:wrong_key", "--run-dir", run_dir,
                           "--engine", "threads", "--workers", "2", "--commit-every", "100", "--progress", "off",
                           cwd=tmp_path)  # --commit-every bounds a batch: what is in flight at the stop
    assert result.returncode == 1, result.stderr[-3000:]
    assert "50 items failed with KeyError: 'idd'" in result.stderr
    assert "--max-consecutive-failures" in result.stderr
    assert "stopped early (too many failures)" in result.stderr
    assert 50 <= failures(run_dir) < n // 2, "the run went on through the failures"
    assert ledger_query(run_dir, "SELECT exit_code FROM runs ORDER BY id DESC LIMIT 1") == [(1,)]


def test_zero_never_stops(tmp_path):
    summary = durabatch.run(fns_stops.wrong_key, make_records(300), key="id", run_dir=tmp_path / "r",
                            max_consecutive_failures=0, progress="off")
    assert summary.exit_code == 1 and summary.stopped is None
    assert failures(tmp_path / "r") == 300


def test_failures_with_successes_between_do_not_stop(tmp_path):
    summary = durabatch.run(fns_stops.fails_every_third, make_records(600), key="id", run_dir=tmp_path / "r",
                            max_consecutive_failures=2, progress="off")  # inline: results in item order
    assert summary.exit_code == 1 and summary.stopped is None
    assert (summary.done, failures(tmp_path / "r")) == (400, 200)


def test_two_errors_in_turn_with_nothing_succeeding_stop_too(tmp_path):
    # commit_every bounds a batch (per-record batches are sized by speed, up to 1,000): the count is checked
    # between batches, so the bound below must not depend on how fast this machine is.
    summary = durabatch.run(fns_stops.alternating_errors, make_records(2000), key="id", run_dir=tmp_path / "r",
                            max_consecutive_failures=20, commit_every=50, progress="off")
    assert summary.exit_code == 1 and summary.stopped == "too many failures"
    assert failures(tmp_path / "r") < 100
    assert "stopped early (too many failures)" in str(summary)


def test_retried_errors_do_not_count_until_final(tmp_path):
    fns_stops._calls.clear()
    summary = durabatch.run(fns_stops.flaky_once, make_records(200), key="id", run_dir=tmp_path / "r",
                            max_consecutive_failures=3, backoff_base=0, progress="off")
    assert summary.exit_code == 0 and summary.stopped is None
    assert summary.done == 200
