"""Orphan adoption keeps one type per result field: a complete shard of this job that the ledger does not list
(written by a Ray actor, `ray_shards="actors"`, whose listing was lost) is adopted only when its fields join the
types the ledger has fixed (and the types it fixes or widens are stored); a conflicting one is deleted and its
items run again. Real run directories, real shards written by the actors' own ShardWriter; no Ray needed."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

import durabatch
from durabatch.columns import FieldTypes
from durabatch.store import orphans
from durabatch.store.actor_shards import ShardWriter
from durabatch.store.ledger import Ledger
from durabatch.store.rundir import RunDir

N = 200


def score(record: dict) -> dict:
    return {"score": record["id"] * 2}


def run(run_dir) -> durabatch.RunSummary:
    summary = durabatch.run(score, [{"id": i} for i in range(N)], key="id", run_dir=run_dir, commit_every=50,
                            progress="off")
    assert summary.exit_code == 0
    return summary


def a_run_missing_its_last_commit(tmp_path) -> tuple[RunDir, list[int]]:
    """A finished run (`score` fixed as int) whose last shard is gone from disk and ledger: (its run directory,
    the positions that shard held, which the ledger no longer has)."""
    rd = RunDir(tmp_path / "r")
    run(rd.path)
    ledger = Ledger.open(rd)
    try:
        assert FieldTypes(ledger.get_meta("result_types")).types == {"score": pa.int64()}
        last = max(ledger.shards(), key=lambda s: s["spans"][0][0])
        ledger.forget_shards([last["name"]])
    finally:
        ledger.close()
    (rd.shards / last["name"]).unlink()
    lost = sorted(covered(last["spans"]))
    assert len(lost) >= 2 and lost[-1] == N - 1
    return rd, lost


def actor_shard(rd: RunDir, positions: list[int], outputs: list[dict]) -> str:
    """A shard as an actor writes it (the driver's types unknown to it when its batch left): its file name."""
    ledger = Ledger.open(rd)
    try:
        writer = ShardWriter(str(rd.shards), "parquet", "id", ledger.job_id())
    finally:
        ledger.close()
    shard, refused, _ = writer(positions, positions, [outputs], None)  # one piece: a list of results
    assert shard is not None and refused == {}
    return shard.name


def settle(rd: RunDir) -> tuple[orphans.Settled, list[tuple[int, int]], dict[str, pa.DataType]]:
    """Settle as the next run does first: (what it did, the positions done, the ledger's field types)."""
    ledger = Ledger.open(rd)
    try:
        return orphans.settle(rd, ledger), ledger.done_spans(), FieldTypes(ledger.get_meta("result_types")).types
    finally:
        ledger.close()


def covered(spans: list[tuple[int, int]]) -> set[int]:
    return {p for s, e in spans for p in range(s, e)}


def test_an_orphan_whose_field_type_conflicts_is_deleted_and_its_items_run_again(tmp_path):
    rd, lost = a_run_missing_its_last_commit(tmp_path)
    name = actor_shard(rd, lost, [{"score": f"text {p}"} for p in lost])  # a string where the ledger has int

    settled, done, types = settle(rd)
    assert settled.adopted == [] and settled.removed == [name] and settled.conflicting == [name]
    assert not (rd.shards / name).exists()
    assert covered(done) == set(range(lost[0])) and types == {"score": pa.int64()}  # its positions: not done

    assert run(rd.path).done == len(lost)  # they simply run again
    out = tmp_path / "out.parquet"
    durabatch.export(rd.path, to=out)
    table = pq.read_table(out)
    assert table.schema.field("score").type == pa.int64()
    assert dict(zip(table.column("id").to_pylist(), table.column("score").to_pylist(), strict=True)) == {
        i: 2 * i for i in range(N)}


def test_a_compatible_orphan_is_adopted_and_its_new_or_wider_types_are_stored(tmp_path):
    rd, lost = a_run_missing_its_last_commit(tmp_path)
    name = actor_shard(rd, lost, [{"score": 2.5 * p, "note": f"n{p}"} for p in lost])  # int widens to float; new

    settled, done, types = settle(rd)
    assert settled.adopted == [name] and settled.removed == [] and settled.conflicting == []
    assert (rd.shards / name).exists()
    assert covered(done) == set(range(N))
    assert types == {"score": pa.float64(), "note": pa.string()}  # stored for every later result

    assert run(rd.path).done == 0  # nothing to redo
    assert durabatch.verify(rd.path).ok


def test_two_orphans_that_disagree_with_each_other_the_first_is_adopted(tmp_path):
    rd, lost = a_run_missing_its_last_commit(tmp_path)
    half = len(lost) // 2
    first = actor_shard(rd, lost[:half], [{"score": p, "note": "text"} for p in lost[:half]])
    second = actor_shard(rd, lost[half:], [{"score": p, "note": 7} for p in lost[half:]])
    assert sorted([first, second]) == [first, second]  # settled in name order: by first position

    settled, done, types = settle(rd)
    assert settled.adopted == [first] and settled.conflicting == [second]
    assert not (rd.shards / second).exists()
    assert covered(done) == set(range(lost[half])) and types == {"score": pa.int64(), "note": pa.string()}


def test_verify_repair_names_a_conflicting_orphan(tmp_path):
    rd, lost = a_run_missing_its_last_commit(tmp_path)
    name = actor_shard(rd, lost, [{"score": [p]} for p in lost])  # a list where the ledger has int
    assert [p.kind for p in durabatch.verify(rd.path).problems] == ["orphan"]

    repaired = durabatch.verify(rd.path, repair=True)
    assert repaired.ok, repaired.render()
    assert any(name in r and "field types conflict" in r for r in repaired.repaired), repaired.repaired
    assert not (rd.shards / name).exists()
