"""Fan-out: documents split into segments that run in parallel, grouped back; a document is committed only
when all its segments are done, and a kill redoes only unfinished documents."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
import userfns

import durabatch

DOCS = [{"id": i, "text": ". ".join(f"doc {i} sentence {j}" for j in range(i % 5 + 1))} for i in range(60)]


def exported(tmp_path, failed=False):
    out = tmp_path / ("f.parquet" if failed else "o.parquet")
    durabatch.export(tmp_path / "r", to=out, failed=failed)
    return pq.read_table(out).to_pylist()


@pytest.mark.parametrize("engine,workers", [("inline", 1), ("threads", 4), ("processes", 2)])
def test_documents_are_split_processed_and_grouped_back(tmp_path, engine, workers):
    summary = durabatch.run(userfns.shout, DOCS, key="id", run_dir=tmp_path / "r", split=userfns.sentences,
                            combine=userfns.join_upper, engine=engine, workers=workers, progress="off")
    assert summary.exit_code == 0 and summary.done == 60 and summary.total == 60
    rows = exported(tmp_path)
    assert [r["id"] for r in rows] == list(range(60))
    for doc, row in zip(DOCS, rows, strict=True):
        parts = [s.strip().upper() for s in doc["text"].split(".")]
        assert row["n_segments"] == len(parts) and row["summary"] == " / ".join(parts)


def test_a_failing_segment_fails_its_document_only(tmp_path):
    docs = [*DOCS[:10], {"id": 10, "text": "fine. poison here. fine again"}, {"id": 11, "text": "x", "broken": True}]
    summary = durabatch.run(userfns.shout, docs, key="id", run_dir=tmp_path / "r", split=userfns.sentences,
                            combine=userfns.join_upper, progress="off")
    assert summary.exit_code == 1 and summary.done == 10 and summary.failed == 2
    failed = {r["key"]: r["message"] for r in exported(tmp_path, failed=True)}
    assert "segment 1: poisoned segment" in failed["10"] and "split: cannot split" in failed["11"]


def test_documents_with_no_segments_and_default_combine(tmp_path):
    docs = [{"id": 0, "text": ""}, {"id": 1, "text": "a. b"}]
    durabatch.run(userfns.shout, docs, key="id", run_dir=tmp_path / "r", split=userfns.sentences, progress="off")
    rows = exported(tmp_path)
    assert rows[0]["segments"] == [] and [s["upper"] for s in rows[1]["segments"]] == ["A", "B"]


def test_fan_out_from_the_cli_resumes_by_document(tmp_path):
    from conftest import durabatch_cli, write_jsonl

    data = write_jsonl(tmp_path / "docs.jsonl", DOCS)
    args = ("run", "-i", data, "--key", "id", "--fn", "userfns:shout", "--split", "userfns:sentences",
            "--combine", "userfns:join_upper", "--run-dir", tmp_path / "r", "--progress", "off")
    assert durabatch_cli(*args, "--limit", "25", cwd=tmp_path).returncode == 0
    second = durabatch_cli(*args, cwd=tmp_path)
    assert second.returncode == 0 and "25 items already done" in second.stderr
    assert [r["id"] for r in exported(tmp_path)] == list(range(60))
