"""Columns batch functions (batch_format="columns"): {field: values} in and out, Arrow from the source to the
shard. Same results and the same promises as a rows batch function: exactly-once export, bisected failures,
retries, resume after kill -9, every engine and source."""

from __future__ import annotations

import hashlib
import signal

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import userfns
from conftest import (
    committed_rows,
    durabatch_cli,
    durabatch_popen,
    make_records,
    read_export,
    wait_until,
    write_jsonl,
)

import durabatch
from durabatch.columns import ArrowRecords, FieldTypes
from durabatch.errors import ConfigError
from durabatch.store.shards import build_table


def expected(ids) -> dict:
    return {i: hashlib.blake2b(str(i).encode(), digest_size=8).hexdigest() for i in ids}


def exported(run_dir, tmp_path) -> pa.Table:
    out = tmp_path / "out.parquet"
    durabatch.export(run_dir, to=out)
    return pq.read_table(out)


@pytest.mark.parametrize("engine", ["inline", "threads", "processes"])
@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_a_columns_job_equals_the_rows_job_on_every_engine_and_file_format(tmp_path, engine, fmt):
    records = make_records(5_000)
    if fmt == "jsonl":
        source = write_jsonl(tmp_path / "d.jsonl", records)
    else:
        source = tmp_path / "d.parquet"
        pq.write_table(pa.Table.from_pylist(records), source)
    summary = durabatch.run(userfns.digest_columns, str(source), key="id", run_dir=tmp_path / "c", batch_size=300,
                            batch_format="columns", engine=engine, workers=2, commit_every=1_000, progress="off")
    assert summary.exit_code == 0 and summary.done == 5_000
    table = exported(tmp_path / "c", tmp_path)
    assert table.column_names == ["id", "digest", "text_len"]
    assert table.column("id").to_pylist() == list(range(5_000))
    assert dict(zip(table.column("id").to_pylist(), table.column("digest").to_pylist(), strict=True)) == \
        expected(range(5_000))
    assert table.column("text_len").to_pylist() == [len(r["text"]) for r in records]


def test_a_failing_columns_batch_is_bisected_to_the_bad_items(tmp_path):
    source = write_jsonl(tmp_path / "d.jsonl", make_records(200))
    summary = durabatch.run(userfns.columns_fail_on_sevens, str(source), key="id", run_dir=tmp_path / "r",
                            batch_size=32, batch_format="columns", max_attempts=1, progress="off")
    sevens = [i for i in range(200) if i % 7 == 0]
    assert summary.exit_code == 1 and summary.failed_total == len(sevens)
    assert exported(tmp_path / "r", tmp_path).column("id").to_pylist() == [i for i in range(200) if i % 7]
    failed = read_export(tmp_path / "r", tmp_path, failed=True)
    assert sorted(map(int, failed.column("key").to_pylist())) == sevens
    assert set(failed.column("error_type").to_pylist()) == {"RuntimeError"}


def test_retried_items_and_whole_tables_commit_together_in_source_order(tmp_path):
    """A seven's first call drops its connection: it comes back as a single row among whole Arrow tables."""
    userfns._calls.clear()
    source = write_jsonl(tmp_path / "d.jsonl", make_records(300))
    summary = durabatch.run(userfns.columns_flaky_on_sevens, str(source), key="id", run_dir=tmp_path / "r",
                            batch_size=50, batch_format="columns", backoff_base=0, progress="off")
    assert summary.exit_code == 0 and summary.done == 300
    table = exported(tmp_path / "r", tmp_path)
    assert table.column("id").to_pylist() == list(range(300))
    assert dict(zip(table.column("id").to_pylist(), table.column("digest").to_pylist(), strict=True)) == \
        expected(range(300))


def test_a_wrong_shape_fails_the_batch_with_a_clear_error_and_an_arrow_table_is_accepted(tmp_path):
    source = write_jsonl(tmp_path / "d.jsonl", make_records(40))
    summary = durabatch.run(userfns.columns_short, str(source), key="id", run_dir=tmp_path / "short",
                            batch_size=16, batch_format="columns", progress="off")
    assert summary.exit_code == 1 and summary.failed_total == 40
    failed = read_export(tmp_path / "short", tmp_path, failed=True)
    assert set(failed.column("error_type").to_pylist()) == {"BatchLengthError"}
    assert "returned 15 rows for 16 records" in failed.column("message").to_pylist()[0]
    summary = durabatch.run(userfns.columns_as_arrow, str(source), key="id", run_dir=tmp_path / "arrow",
                            batch_size=16, batch_format="columns", progress="off")
    assert summary.exit_code == 0
    assert exported(tmp_path / "arrow", tmp_path).column("double").to_pylist() == [2 * i for i in range(40)]


def test_python_iterables_and_hf_datasets_run_in_columns_mode(tmp_path):
    datasets = pytest.importorskip("datasets")
    records = make_records(1_000)
    for name, source in (("iterable", records), ("dataset", datasets.Dataset.from_list(records))):
        summary = durabatch.run(userfns.digest_columns, source, key="id", run_dir=tmp_path / name, batch_size=128,
                                batch_format="columns", progress="off")
        assert summary.exit_code == 0
        assert exported(tmp_path / name, tmp_path).column("id").to_pylist() == list(range(1_000))


def test_columns_mode_needs_a_batch_size_and_refuses_fan_out(tmp_path):
    source = write_jsonl(tmp_path / "d.jsonl", make_records(5))
    with pytest.raises(ConfigError, match="needs batch_size"):
        durabatch.run(userfns.digest_columns, str(source), key="id", run_dir=tmp_path / "r", batch_format="columns")
    with pytest.raises(ConfigError, match="cannot be combined with split"):
        durabatch.run(userfns.digest_columns, str(source), key="id", run_dir=tmp_path / "r", batch_size=4,
                      batch_format="columns", split=userfns.sentences)
    result = durabatch_cli("run", "-i", source, "--key", "id", "--fn", "userfns:digest_columns", "--run-dir",
                           tmp_path / "cli", "--batch-format", "columns", "--progress", "off", cwd=tmp_path)
    assert result.returncode == 2 and "needs batch_size" in result.stderr
    result = durabatch_cli("run", "-i", source, "--key", "id", "--fn", "userfns:digest_columns", "--run-dir",
                           tmp_path / "cli", "--batch-format", "colums", "--progress", "off", cwd=tmp_path)
    assert result.returncode == 2 and "colums" in result.stderr


def test_sigkill_mid_run_then_resume_exports_every_key_once(tmp_path):
    source = write_jsonl(tmp_path / "d.jsonl", make_records(6_000))
    args = ("run", "-i", source, "--key", "id", "--fn", "userfns:slow_digest_columns", "--run-dir", tmp_path / "r",
            "--batch-size", "100", "--batch-format", "columns", "--commit-every", "500", "--progress", "off")
    # 60 batches of at least 50 ms: after the first 1,000 items, 2.5 s at the least to kill it in
    proc = durabatch_popen(*args, cwd=tmp_path, env={"BATCH_SECONDS": "0.05"})
    wait_until(lambda: committed_rows(tmp_path / "r") >= 1_000, timeout=300, what="a few commits")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    done_before = committed_rows(tmp_path / "r")
    assert 0 < done_before < 6_000
    result = durabatch_cli(*args, cwd=tmp_path, env={"BATCH_SECONDS": "0"})
    assert result.returncode == 0, result.stderr
    assert f"{done_before:,} items already done" in result.stderr
    table = read_export(tmp_path / "r", tmp_path)
    assert table.column("id").to_pylist() == list(range(6_000))
    assert dict(zip(table.column("id").to_pylist(), table.column("digest").to_pylist(), strict=True)) == \
        expected(range(6_000))


def test_build_table_joins_tables_and_rows_of_any_shape():
    keys = list(range(7))
    pieces = [ArrowRecords(pa.table({"a": [1, 2]})), [{}, {"a": 3.5, "b": "x"}], [5],
              ArrowRecords(pa.table({"a": [6, 7], "id": [0, 0]}))]
    table = build_table("id", keys, pieces)
    assert table.column_names[0] == "id" and table.column("id").to_pylist() == keys
    rows = table.to_pylist()
    assert [r.get("a") for r in rows] == [1, 2, None, 3.5, None, 6, 7]
    assert rows[4]["result"] == 5 and rows[3]["b"] == "x"
    fields = FieldTypes()
    mixed = build_table("id", [0, 1], [ArrowRecords(pa.table({"a": [1]})), [{"a": "text"}]], fields)
    assert mixed.column("a").to_pylist() == [1]  # never rewritten as JSON text: the second item fails
    assert list(fields.rejected) == [1] and "'a'" in fields.rejected[1]
