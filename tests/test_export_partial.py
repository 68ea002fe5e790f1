"""Export of unfinished work is explicit (issue 12 item 8): an unfinished job's export exits 2 saying how many of
how many are done unless --partial / partial=True; --include-failed makes one dataset file with a status column."""

from __future__ import annotations

import json
import signal

import pyarrow.parquet as pq
import pytest
from conftest import committed_rows, durabatch_cli, durabatch_popen, wait_until

import durabatch
from durabatch import UnfinishedError

N = 1000


def test_an_unfinished_job_is_exported_only_when_asked(tmp_path, records_file):
    data = records_file(N)
    run_dir = tmp_path / "run"
    proc = durabatch_popen("run", "--fn", "jobs:slow_digest", "--input", data, "--key", "id", "--run-dir", run_dir,
                           "--commit-every", 20, "--progress", "off", cwd=tmp_path,
                           env={"JOBS_ITEM_SECONDS": "0.01"})
    try:
        wait_until(lambda: committed_rows(run_dir) >= 40, timeout=120, what="40 items committed")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    done = committed_rows(run_dir)
    assert 40 <= done < N

    refused = durabatch_cli("export", run_dir, "--to", tmp_path / "out.parquet", cwd=tmp_path)
    assert refused.returncode == 2
    assert f"{done:,} of {N:,} items done" in refused.stderr and "--partial" in refused.stderr, refused.stderr
    assert not (tmp_path / "out.parquet").exists()

    partial = durabatch_cli("export", run_dir, "--to", tmp_path / "out.parquet", "--partial", cwd=tmp_path)
    assert partial.returncode == 0, partial.stderr
    ids = pq.read_table(tmp_path / "out.parquet").column("id").to_pylist()
    assert len(ids) == done and ids == sorted(set(ids))

    with pytest.raises(UnfinishedError, match=f"{done:,} of {N:,} items done"):
        durabatch.export(run_dir, tmp_path / "api.jsonl")
    assert durabatch.export(run_dir, tmp_path / "api.jsonl", partial=True) == done
    # The failures export is no promise of completeness: never refused.
    assert durabatch_cli("export", run_dir, "--to", tmp_path / "f.jsonl", "--failed", cwd=tmp_path).returncode == 0


def test_include_failed_makes_one_dataset_file_with_a_status_column(tmp_path, records_file):
    data = records_file(50)
    run_dir = tmp_path / "run"
    result = durabatch_cli("run", "--fn", "userfns:fails_on_sevens", "--input", data, "--key", "id", "--run-dir",
                           run_dir, "--max-attempts", 1, "--progress", "off", cwd=tmp_path)
    assert result.returncode == 1, result.stderr  # finished, with failed items: finished all the same
    plain = durabatch_cli("export", run_dir, "--to", tmp_path / "done.parquet", cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr
    assert pq.read_table(tmp_path / "done.parquet").num_rows == 50 - 8

    cli = durabatch_cli("export", run_dir, "--to", tmp_path / "all.parquet", "--include-failed", cwd=tmp_path)
    assert cli.returncode == 0, cli.stderr
    table = pq.read_table(tmp_path / "all.parquet")
    assert table.column("id").to_pylist() == list(range(50))  # one file, source order, every key once
    by_id = {row["id"]: row for row in table.to_pylist()}
    assert by_id[14]["_status"] == "failed" and by_id[14]["_error"] == "RuntimeError: seven 14"
    assert by_id[14]["digest"] is None
    assert by_id[15]["_status"] == "done" and by_id[15]["_error"] is None and by_id[15]["digest"]

    assert durabatch.export(run_dir, tmp_path / "all.jsonl", include_failed=True) == 50
    rows = [json.loads(line) for line in (tmp_path / "all.jsonl").read_text().splitlines()]
    assert [r["_status"] for r in rows].count("failed") == 8
    assert [r["id"] for r in rows] == list(range(50))
