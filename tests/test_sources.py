"""Every kind of source gives the same keyed results, in source order, exactly once."""

from __future__ import annotations

import csv
import json

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import userfns

import durabatch

N = 120


def rows(n=N):
    return [{"id": i, "text": f"item-{i}"} for i in range(n)]


def write_jsonl(path, items):
    path.write_text("".join(json.dumps(r) + "\n" for r in items))
    return path


def write_csv(path, items):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["id", "text"])
        writer.writeheader()
        writer.writerows(items)
    return path


def exported_ids(run_dir, tmp_path):
    durabatch.export(run_dir, to=tmp_path / "out.parquet")
    return pq.read_table(tmp_path / "out.parquet").column("id").to_pylist()


def go(source, tmp_path, **kw):
    return durabatch.run(userfns.digest, source, key="id", run_dir=tmp_path / "run", progress="off",
                         commit_every=25, **kw)


def test_jsonl(tmp_path):
    assert go(str(write_jsonl(tmp_path / "a.jsonl", rows())), tmp_path).done == N
    assert exported_ids(tmp_path / "run", tmp_path) == list(range(N))


def test_csv_values_are_strings(tmp_path):
    go(str(write_csv(tmp_path / "a.csv", rows())), tmp_path)
    assert exported_ids(tmp_path / "run", tmp_path) == [str(i) for i in range(N)]


def test_parquet(tmp_path):
    pq.write_table(pa.Table.from_pylist(rows()), tmp_path / "a.parquet", row_group_size=17)
    go(str(tmp_path / "a.parquet"), tmp_path)
    assert exported_ids(tmp_path / "run", tmp_path) == list(range(N))


def test_glob_of_files_in_sorted_order(tmp_path):
    (tmp_path / "in").mkdir()
    write_jsonl(tmp_path / "in" / "part-2.jsonl", rows()[60:])
    write_jsonl(tmp_path / "in" / "part-1.jsonl", rows()[:60])
    go(str(tmp_path / "in" / "*.jsonl"), tmp_path)
    assert exported_ids(tmp_path / "run", tmp_path) == list(range(N))


def test_list_of_mixed_files(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", rows()[:40])
    pq.write_table(pa.Table.from_pylist(rows()[40:]), tmp_path / "b.parquet")
    go([str(tmp_path / "a.jsonl"), str(tmp_path / "b.parquet")], tmp_path)
    assert exported_ids(tmp_path / "run", tmp_path) == list(range(N))


def test_hf_dataset(tmp_path):
    ds = datasets.Dataset.from_list(rows())
    go(ds, tmp_path)
    assert exported_ids(tmp_path / "run", tmp_path) == list(range(N))


def test_python_generator(tmp_path):
    go((r for r in rows()), tmp_path)
    assert exported_ids(tmp_path / "run", tmp_path) == list(range(N))


def test_content_hash_key_when_no_key_column(tmp_path):
    summary = durabatch.run(userfns.scalar, [{"id": i} for i in range(10)], run_dir=tmp_path / "run",
                            progress="off")
    assert summary.done == 10
    durabatch.export(tmp_path / "run", to=tmp_path / "out.parquet")
    table = pq.read_table(tmp_path / "out.parquet")
    keys = table.column("_key").to_pylist()
    assert len(set(keys)) == 10 and all(len(k) == 16 for k in keys)
    assert table.column("result").to_pylist() == [i * 3 for i in range(10)]


def test_limit_then_full_run_continues(tmp_path):
    src = str(write_jsonl(tmp_path / "a.jsonl", rows()))
    first = go(src, tmp_path, limit=30)
    assert (first.total, first.done, first.exit_code) == (30, 30, 0)
    second = go(src, tmp_path)
    assert (second.already_done, second.done) == (30, N - 30)
    assert exported_ids(tmp_path / "run", tmp_path) == list(range(N))


def test_start_end_slice(tmp_path):
    go(str(write_jsonl(tmp_path / "a.jsonl", rows())), tmp_path, start=10, end=20)
    assert exported_ids(tmp_path / "run", tmp_path) == list(range(10, 20))


def test_resume_of_a_finished_job_reads_nothing(tmp_path):
    src = write_jsonl(tmp_path / "a.jsonl", rows())
    go(str(src), tmp_path)
    summary = go(str(src), tmp_path)
    assert summary.done == 0 and summary.already_done == N and summary.exit_code == 0


def test_changed_input_is_refused(tmp_path):
    src = write_jsonl(tmp_path / "a.jsonl", rows())
    go(str(src), tmp_path, limit=10)
    write_jsonl(src, rows(N + 1))
    with pytest.raises(durabatch.ChangedJobError, match="source"):
        go(str(src), tmp_path)


def test_allowed_input_change_matches_done_items_by_key(tmp_path):
    src = write_jsonl(tmp_path / "a.jsonl", rows())
    go(str(src), tmp_path, limit=50)
    write_jsonl(src, list(reversed(rows(N + 20))))  # reordered and grown: positions mean other items now
    summary = go(str(src), tmp_path, allow_changed=True)
    assert summary.done == N + 20 - 50
    assert sorted(exported_ids(tmp_path / "run", tmp_path)) == list(range(N + 20))
    again = go(str(src), tmp_path)
    assert again.done == 0
