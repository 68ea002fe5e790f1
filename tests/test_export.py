"""`export` merges shards into one file in source order, a window of positions at a time: out-of-order shards
(retried items commit late), shards whose columns differ, and JSON lines shards."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
import userfns

import durabatch
import durabatch.store.export as output


@pytest.fixture
def small_windows(monkeypatch):
    """Windows of 300 positions, so that a few thousand rows take many windows."""
    monkeypatch.setattr(output, "WINDOW_BYTES", 1)
    monkeypatch.setattr(output, "MIN_WINDOW", 300)


def odd_then_even(record: dict) -> dict:
    """An int for some ids and nothing for others: shards whose columns differ."""
    return {"half": record["id"] // 2} if record["id"] % 1000 < 500 else {"note": f"n{record['id']}"}


_seen: set[int] = set()


def flaky_sevens(record: dict) -> dict:
    """Every seventh id fails its first call with a connection error: retried, it commits in a later shard."""
    if record["id"] % 7 == 0 and record["id"] not in _seen:
        _seen.add(record["id"])
        raise ConnectionError(f"dropped {record['id']}")
    return {"twice": record["id"] * 2}


def test_retried_items_committed_late_come_back_in_source_order(tmp_path, small_windows):
    _seen.clear()
    records = [{"id": i} for i in range(3000)]
    summary = durabatch.run(flaky_sevens, records, key="id", run_dir=tmp_path / "r", commit_every=200,
                            backoff_base=0.05, backoff_max=0.1, progress="off")
    assert summary.exit_code == 0
    spans = [pq.read_schema(p).metadata[b"durabatch.spans"] for p in sorted((tmp_path / "r" / "shards").iterdir())]
    assert sum(len(json.loads(s)) > 1 for s in spans) >= 1  # a shard of scattered retried items
    rows = durabatch.export(tmp_path / "r", to=tmp_path / "out.parquet")
    assert rows == 3000
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.column("id").to_pylist() == list(range(3000))
    assert table.column("twice").to_pylist() == [2 * i for i in range(3000)]
    assert pq.ParquetFile(tmp_path / "out.parquet").metadata.num_row_groups >= 10  # written window by window


def test_shards_with_different_columns_merge_into_one_schema(tmp_path, small_windows):
    durabatch.run(odd_then_even, [{"id": i} for i in range(2000)], key="id", run_dir=tmp_path / "r",
                  commit_every=250, progress="off")
    durabatch.export(tmp_path / "r", to=tmp_path / "out.parquet")
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.column_names == ["id", "half", "note"]
    rows = table.to_pylist()
    assert rows[0] == {"id": 0, "half": 0, "note": None}
    assert rows[1200] == {"id": 1200, "half": 600, "note": None}
    assert rows[700] == {"id": 700, "half": None, "note": "n700"}


def test_jsonl_shards_export_to_jsonl_in_order(tmp_path, small_windows):
    durabatch.run(userfns.digest, [{"id": i, "text": f"t{i}"} for i in range(1500)][::-1], key="id",
                  run_dir=tmp_path / "r", commit_every=100, output_format="jsonl", progress="off")
    assert durabatch.export(tmp_path / "r", to=tmp_path / "out.jsonl") == 1500
    lines = (tmp_path / "out.jsonl").read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == list(range(1499, -1, -1))  # source order, not key order


def test_an_empty_job_exports_an_empty_file(tmp_path):
    durabatch.run(userfns.value_error, [{"id": 1}], key="id", run_dir=tmp_path / "r", progress="off",
                  max_attempts=1)
    assert durabatch.export(tmp_path / "r", to=tmp_path / "out.parquet") == 0
    assert pq.read_table(tmp_path / "out.parquet").num_rows == 0
    assert durabatch.export(tmp_path / "r", to=tmp_path / "failed.jsonl", failed=True) == 1
