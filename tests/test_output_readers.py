"""Shards and exports are plain files that the usual tools read without durabatch."""

from __future__ import annotations

import json

import datasets
import duckdb
import pandas as pd
import pyarrow.parquet as pq
import userfns

import durabatch


def _run(tmp_path, fmt="parquet"):
    records = [{"id": i, "text": f"t{i}"} for i in range(500)]
    durabatch.run(userfns.digest, records, key="id", run_dir=tmp_path / "run", commit_every=100,
                  output_format=fmt, progress="off")
    return sorted((tmp_path / "run" / "shards").iterdir())


def test_parquet_shards_load_in_pandas_duckdb_and_hf_datasets(tmp_path):
    shards = _run(tmp_path)
    assert len(shards) == 5
    frame = pd.concat(pd.read_parquet(p) for p in shards)
    assert sorted(frame["id"]) == list(range(500))
    con = duckdb.connect()
    count = con.execute(f"SELECT count(DISTINCT id) FROM read_parquet('{tmp_path}/run/shards/*.parquet')").fetchall()
    assert count == [(500,)]
    ds = datasets.load_dataset("parquet", data_files=[str(p) for p in shards], split="train")
    assert sorted(ds["id"]) == list(range(500)) and "digest" in ds.column_names


def test_jsonl_shards_and_exports(tmp_path):
    shards = _run(tmp_path, fmt="jsonl")
    rows = [json.loads(line) for p in shards for line in p.read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == list(range(500))
    durabatch.export(tmp_path / "run", to=tmp_path / "all.parquet")
    assert pq.read_table(tmp_path / "all.parquet").column("id").to_pylist() == list(range(500))
