"""Fan-out cannot lose documents: segments are tracked by their place in the document, not by object identity,
and a run never ends as finished while a document is still open."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

import durabatch
from durabatch.core.fanout import FanIn
from durabatch.store.ledger import Failure

DOCS = [{"id": i, "text": f"doc {i}"} for i in range(12)]


def same_part_three_times(record: dict) -> list[dict]:
    part = {"text": record["text"]}
    return [part] * 3  # the same dict object, three times


def echo(segment: dict) -> dict:
    return {"text": segment["text"]}


def count_parts(record: dict, outputs: list) -> dict:
    return {"n": len(outputs), "texts": [o["text"] for o in outputs]}


@pytest.mark.parametrize("engine,workers", [("inline", 1), ("threads", 3), ("processes", 2)])
def test_a_split_returning_one_object_several_times_loses_no_document(tmp_path, engine, workers):
    for attempt in range(2):  # and a rerun has nothing left to do
        summary = durabatch.run(echo, DOCS, key="id", run_dir=tmp_path / "r", split=same_part_three_times,
                                combine=count_parts, engine=engine, workers=workers, progress="off")
        assert summary.exit_code == 0
        assert summary.done == (12 if attempt == 0 else 0)
    durabatch.export(tmp_path / "r", to=tmp_path / "o.parquet")
    rows = pq.read_table(tmp_path / "o.parquet").to_pylist()
    assert [r["id"] for r in rows] == list(range(12))
    assert all(r["n"] == 3 and r["texts"] == [f"doc {r['id']}"] * 3 for r in rows)


def test_the_record_itself_as_its_only_segment(tmp_path):
    summary = durabatch.run(echo, DOCS, key="id", run_dir=tmp_path / "r", split=lambda r: [r, r],
                            combine=count_parts, progress="off")
    assert summary.exit_code == 0 and summary.done == 12


def test_an_open_document_with_no_segment_in_flight_is_failed_not_dropped():
    fanin = FanIn(same_part_three_times, count_parts)
    parts = fanin.split(7, "k", {"text": "t"})
    assert len(parts) == 3 and len({id(p) for p in parts}) == 3
    fanin.done(parts[0], {"text": "t"})
    fanin.close_open("segments lost")  # nothing in flight any more, yet the document is open
    assert fanin.open_documents == 0 and not fanin.ready
    assert [(f.pos, f.key) for f in fanin.failed] == [(7, "k")] and "segments lost" in fanin.failed[0].message
    fanin.done(parts[1], {"text": "t"})  # a straggler cannot resurrect it
    assert not fanin.ready


def test_a_failed_segment_fails_its_document_once():
    fanin = FanIn(same_part_three_times, count_parts)
    parts = fanin.split(1, "a", {"text": "t"})
    fanin.fail(parts[1], Failure(1, "a", "ValueError", "bad", "", 1))
    fanin.fail(parts[2], Failure(1, "a", "ValueError", "bad", "", 1))
    assert len(fanin.failed) == 1 and fanin.failed[0].message.startswith("segment 1:")
    assert fanin.open_documents == 0


_calls: dict = {}


def flaky_echo(segment: dict) -> dict:
    _calls[segment["text"]] = _calls.get(segment["text"], 0) + 1
    if _calls[segment["text"]] == 1:
        raise TimeoutError("try again")  # transient: retried after a backoff
    return {"text": segment["text"]}


def test_a_segment_waiting_for_its_retry_keeps_its_document_open(tmp_path):
    _calls.clear()
    summary = durabatch.run(flaky_echo, DOCS[:3], key="id", run_dir=tmp_path / "r",
                            split=lambda r: [{"text": f"{r['text']}/{i}"} for i in range(2)], combine=count_parts,
                            backoff_base=0.3, progress="off")
    assert summary.exit_code == 0 and summary.done == 3
