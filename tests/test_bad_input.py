"""Bad input gets its documented clear error (exit 2, naming the file and line, the key or the setting) and loses
nothing already committed; the opt-in flags (--skip-bad-rows, --dedupe, --allow-changed) carry on instead."""

from __future__ import annotations

import hashlib
import json
import subprocess

import pytest
from conftest import (
    committed_rows,
    durabatch_cli,
    durabatch_popen,
    export_ids,
    ledger_query,
    make_records,
    read_export,
    wait_until,
    write_jsonl,
)


def blake(value) -> str:
    return hashlib.blake2b(str(value).encode(), digest_size=16).hexdigest()


def run(tmp_path, data, *extra, fn="jobs:digest", run_dir="r", env=None):
    return durabatch_cli("run", "-i", data, "--key", "id", "--fn", fn, "--run-dir", tmp_path / run_dir,
                         "--progress", "off", *extra, cwd=tmp_path, env=env)


def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


# -- malformed rows ------------------------------------------------------------------------------------------------
def malformed_file(tmp_path, n=300, bad=250):
    lines = [json.dumps(r) for r in make_records(n)]
    lines[bad] = f'{{"id": {bad}, "text": oops}}'  # not JSON
    return write_lines(tmp_path / "data.jsonl", lines)


@pytest.mark.slow  # several runs of the CLI
def test_malformed_line_names_file_and_line_and_loses_nothing_committed(tmp_path):
    data = malformed_file(tmp_path)
    first = run(tmp_path, data, "--limit", "100", "--commit-every", "1")  # an earlier run commits 0..99
    assert first.returncode == 0, first.stderr
    result = run(tmp_path, data, "--commit-every", "7")
    assert result.returncode == 2, result.stderr
    assert "data.jsonl" in result.stderr and "line 251" in result.stderr
    assert "--skip-bad-rows" in result.stderr  # says how to go on
    ids = export_ids(tmp_path / "r", tmp_path, partial=True)
    assert ids[:100] == list(range(100))  # the earlier run's commits are intact
    assert ids == list(range(250))  # and the rows before the bad line were run and committed, once each
    assert ledger_query(tmp_path / "r", "PRAGMA integrity_check") == [("ok",)]


@pytest.mark.slow  # several runs of the CLI
@pytest.mark.parametrize("resume", [True, False], ids=["after-the-error", "fresh"])
def test_skip_bad_rows_records_the_bad_row_as_a_failure_with_its_line(tmp_path, resume):
    data = malformed_file(tmp_path)
    if resume:
        assert run(tmp_path, data, "--commit-every", "10").returncode == 2
    result = run(tmp_path, data, "--commit-every", "10", "--skip-bad-rows")
    assert result.returncode == 1, result.stderr  # finished, with a failed item
    table = read_export(tmp_path / "r", tmp_path)
    assert table.column("id").to_pylist() == [i for i in range(300) if i != 250]
    assert table.column("digest").to_pylist() == [blake(i) for i in range(300) if i != 250]
    failed = read_export(tmp_path / "r", tmp_path, failed=True, suffix=".jsonl").to_pylist()
    assert len(failed) == 1
    assert "data.jsonl" in failed[0]["message"] and "line 251" in failed[0]["message"]
    again = run(tmp_path, data, "--skip-bad-rows")  # the failure is remembered, nothing is redone
    assert again.returncode == 1 and "nothing to do" in again.stderr


def test_a_non_object_json_line_is_a_bad_row(tmp_path):
    lines = [json.dumps(r) for r in make_records(20)]
    lines[12] = "[12, 13]"
    data = write_lines(tmp_path / "data.jsonl", lines)
    result = run(tmp_path, data)
    assert result.returncode == 2 and "data.jsonl" in result.stderr and "line 13" in result.stderr


def not_utf8_file(tmp_path, n=20, bad=10):
    lines = [json.dumps(r).encode() for r in make_records(n)]
    lines[bad] = b'{"id": %d, "text": "caf\xe9 in latin-1"}' % bad  # a Latin-1 byte: not UTF-8
    path = tmp_path / "data.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_a_line_that_is_not_utf8_is_an_error_naming_its_line(tmp_path):
    """A row that cannot be decoded is a malformed row like any other: the error names its line."""
    result = run(tmp_path, not_utf8_file(tmp_path))
    assert result.returncode == 2
    assert "data.jsonl" in result.stderr and "line 11" in result.stderr, result.stderr


@pytest.mark.slow  # several runs of the CLI
def test_a_line_that_is_not_utf8_is_skipped_with_skip_bad_rows(tmp_path):
    result = run(tmp_path, not_utf8_file(tmp_path), "--skip-bad-rows")
    assert result.returncode == 1, result.stderr
    assert export_ids(tmp_path / "r", tmp_path) == [i for i in range(20) if i != 10]
    failed = read_export(tmp_path / "r", tmp_path, failed=True, suffix=".jsonl").to_pylist()
    assert len(failed) == 1 and "line 11" in failed[0]["message"]


# -- keys ----------------------------------------------------------------------------------------------------------
def test_missing_key_column_names_the_column_and_the_row(tmp_path):
    data = write_jsonl(tmp_path / "data.jsonl", [{"id": 0}, {"id": 1}, {"name": "x"}, {"id": 3}])
    result = run(tmp_path, data)
    assert result.returncode == 2
    assert "'id'" in result.stderr and "data.jsonl" in result.stderr and "line 3" in result.stderr
    assert committed_rows(tmp_path / "r") == 0


def test_wrong_key_column_names_it(tmp_path):
    data = write_jsonl(tmp_path / "data.jsonl", make_records(10))
    result = durabatch_cli("run", "-i", data, "--key", "ID", "--fn", "jobs:digest", "--run-dir", tmp_path / "r",
                           "--progress", "off", cwd=tmp_path)
    assert result.returncode == 2 and "'ID'" in result.stderr and "data.jsonl" in result.stderr


def test_wrong_key_column_with_skip_bad_rows_is_still_a_configuration_error(tmp_path):
    """--skip-bad-rows must not turn a misspelt --key into 'every row failed'."""
    data = write_jsonl(tmp_path / "data.jsonl", make_records(10))
    result = durabatch_cli("run", "-i", data, "--key", "ID", "--fn", "jobs:digest", "--run-dir", tmp_path / "r",
                           "--progress", "off", "--skip-bad-rows", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "'ID'" in result.stderr and "data.jsonl" in result.stderr and "columns: id, text" in result.stderr
    assert committed_rows(tmp_path / "r") == 0


def test_a_null_key_is_named_as_null(tmp_path):
    data = write_jsonl(tmp_path / "data.jsonl", [{"id": 0}, {"id": None}, {"id": 2}])
    result = run(tmp_path, data)
    assert result.returncode == 2 and "key column 'id' is null" in result.stderr and "line 2" in result.stderr


def test_row_missing_its_key_with_skip_bad_rows_is_a_recorded_failure(tmp_path):
    """--skip-bad-rows turns a bad row into a recorded failure; a row without its key is one (the error message
    itself suggests --skip-bad-rows)."""
    data = write_jsonl(tmp_path / "data.jsonl", [{"id": 0}, {"id": 1}, {"name": "x"}, {"id": 3}])
    result = run(tmp_path, data, "--skip-bad-rows")
    assert result.returncode == 1, result.stderr
    assert export_ids(tmp_path / "r", tmp_path) == [0, 1, 3]
    failed = read_export(tmp_path / "r", tmp_path, failed=True, suffix=".jsonl").to_pylist()
    assert len(failed) == 1 and "line 3" in failed[0]["message"]


def test_duplicate_keys_name_both_rows_and_dedupe_keeps_the_first(tmp_path):
    records = make_records(50) + [{"id": 7, "text": "the late duplicate"}]
    data = write_jsonl(tmp_path / "data.jsonl", records)
    result = run(tmp_path, data, fn="jobs:echo")
    assert result.returncode == 2
    assert "id=7" in result.stderr and "line 8" in result.stderr and "line 51" in result.stderr
    assert "--dedupe" in result.stderr
    assert committed_rows(tmp_path / "r") == 0
    deduped = run(tmp_path, data, "--dedupe", fn="jobs:echo")
    assert deduped.returncode == 0, deduped.stderr
    table = read_export(tmp_path / "r", tmp_path)
    assert table.column("id").to_pylist() == list(range(50))
    assert table.column("text").to_pylist() == [f"item-{i}" for i in range(50)]  # id 7: the first occurrence


@pytest.mark.slow  # several runs of the CLI
def test_a_late_duplicate_in_a_large_input_commits_nothing(tmp_path):
    """On a fresh run the key check runs while the first items are computed: they must not be committed before
    it has passed, so a duplicate near the end still leaves the run directory empty."""
    n = 200_000
    lines = [f'{{"id": {i}, "text": "item-{i}"}}' for i in range(n)] + ['{"id": 1234, "text": "again"}']
    data = write_lines(tmp_path / "data.jsonl", lines)
    result = run(tmp_path, data, "--commit-every", "100", "--commit-seconds", "0.01", fn="jobs:echo")
    assert result.returncode == 2, result.stderr
    assert "id=1234" in result.stderr and "line 1235" in result.stderr and f"line {n + 1}" in result.stderr
    assert committed_rows(tmp_path / "r") == 0
    deduped = run(tmp_path, data, "--dedupe", fn="jobs:echo")
    assert deduped.returncode == 0, deduped.stderr
    assert export_ids(tmp_path / "r", tmp_path) == list(range(n))


def test_duplicate_keys_out_of_order_in_csv(tmp_path):
    data = tmp_path / "data.csv"
    data.write_text("id,text\n" + "".join(f"{i},t{i}\n" for i in [5, 3, 9, 1, 3]))
    result = run(tmp_path, data)
    assert result.returncode == 2
    assert "3" in result.stderr and "data.csv" in result.stderr
    assert "line 3" in result.stderr and "line 6" in result.stderr  # header is line 1


# -- files ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "text"), [("empty.jsonl", ""), ("blank.jsonl", "\n\n"), ("header.csv", "id,text\n"),
                                            ("empty.csv", "")])
def test_empty_input_is_a_clear_error(tmp_path, name, text):
    data = tmp_path / name
    data.write_text(text)
    result = run(tmp_path, data)
    assert result.returncode == 2
    assert name in result.stderr and "no items" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("row", "got"), [("2,b,extra", 3), ("2", 1)], ids=["too-many", "too-few"])
def test_csv_row_with_the_wrong_number_of_fields(tmp_path, row, got):
    data = tmp_path / "data.csv"
    data.write_text(f"id,text\n1,a\n{row}\n3,c\n")
    result = run(tmp_path, data)
    assert result.returncode == 2
    assert "data.csv" in result.stderr and "line 3" in result.stderr
    assert "expected 2 fields" in result.stderr and f"got {got}" in result.stderr
    skipped = run(tmp_path, data, "--skip-bad-rows")
    assert skipped.returncode == 1
    assert export_ids(tmp_path / "r", tmp_path) == ["1", "3"]  # CSV values are text


# -- the job changed -----------------------------------------------------------------------------------------------
@pytest.mark.slow  # several runs of the CLI
def test_changed_function_on_resume_is_refused_with_a_diff(tmp_path):
    data = write_jsonl(tmp_path / "data.jsonl", make_records(100))
    mod = tmp_path / "mod"
    mod.mkdir()
    (mod / "score.py").write_text("def f(r):\n    return {'x': r['id']}\n")
    args = ("run", "-i", data, "--key", "id", "--fn", "score:f", "--run-dir", tmp_path / "r", "--progress", "off")
    env = {"PYTHONDONTWRITEBYTECODE": "1"}
    assert durabatch_cli(*args, "--limit", "40", cwd=tmp_path, extra_path=mod, env=env).returncode == 0
    (mod / "score.py").write_text("def f(r):\n    return {'x': r['id'] * 1000}\n")
    refused = durabatch_cli(*args, cwd=tmp_path, extra_path=mod, env=env)
    assert refused.returncode == 2
    assert "fn_code" in refused.stderr and "--allow-changed" in refused.stderr
    assert read_export(tmp_path / "r", tmp_path).column("x").to_pylist() == list(range(40))  # untouched
    allowed = durabatch_cli(*args, "--allow-changed", cwd=tmp_path, extra_path=mod, env=env)
    assert allowed.returncode == 0, allowed.stderr
    table = read_export(tmp_path / "r", tmp_path)
    assert table.column("id").to_pylist() == list(range(100))  # resumed: the 40 done are not redone
    assert table.column("x").to_pylist() == list(range(40)) + [i * 1000 for i in range(40, 100)]


# -- two processes on one run directory ----------------------------------------------------------------------------
@pytest.mark.slow  # several runs of the CLI
def test_second_concurrent_run_is_refused_naming_the_holder(tmp_path):
    n = 300
    data = write_jsonl(tmp_path / "data.jsonl", make_records(n))
    run_dir = tmp_path / "r"
    args = ("run", "-i", data, "--key", "id", "--fn", "jobs:gated", "--run-dir", run_dir, "--progress", "off",
            "--commit-every", "10")
    gate = tmp_path / "gate"  # the first run holds at item 100 until the second one has tried
    first = durabatch_popen(*args, cwd=tmp_path, env={"JOBS_GATE": str(gate), "JOBS_GATE_FROM": "100"},
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: committed_rows(run_dir) > 0, timeout=300, what="the first run's first commit")
        second = durabatch_cli(*args, cwd=tmp_path, timeout=300)
        assert first.poll() is None, "the first run ended before the second one tried"
        assert second.returncode == 2, second.stderr
        assert f"pid {first.pid}" in second.stderr
        gate.touch()
        _, err = first.communicate(timeout=300)
    finally:
        gate.touch()
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, err
    assert ledger_query(run_dir, "PRAGMA integrity_check") == [("ok",)]
    assert ledger_query(run_dir, "SELECT count(*) FROM runs") == [(1,)]  # the refused run left no trace
    table = read_export(run_dir, tmp_path)
    assert table.column("id").to_pylist() == list(range(n))
    assert table.column("digest").to_pylist() == [blake(i) for i in range(n)]


# -- settings ------------------------------------------------------------------------------------------------------
def test_unknown_job_file_key_is_an_error_with_a_did_you_mean(tmp_path):
    write_jsonl(tmp_path / "data.jsonl", make_records(5))
    job = tmp_path / "job.yaml"
    job.write_text("fn: jobs:digest\ninput: data.jsonl\nkey: id\nrun_dir: r\ncomit_every: 5\n")
    result = durabatch_cli("run", job, cwd=tmp_path)
    assert result.returncode == 2
    assert "job.yaml" in result.stderr and "comit_every" in result.stderr
    assert "did you mean" in result.stderr.lower() and "commit_every" in result.stderr
    assert not (tmp_path / "r" / "ledger.sqlite").exists()
    job.write_text("fn: jobs:digest\ninput: data.jsonl\nkey: id\nrun_dir: r\ncommit_every: 5\n")
    assert durabatch_cli("run", job, cwd=tmp_path).returncode == 0  # fixed: runs


def test_bad_flag_value_names_the_setting(tmp_path):
    data = write_jsonl(tmp_path / "data.jsonl", make_records(5))
    bad = durabatch_cli("run", "--fn", "jobs:digest", "-i", data, "--run-dir", "r", "--workers", "0", cwd=tmp_path)
    assert bad.returncode == 2 and "workers" in bad.stderr
