"""ray_reads "actors" without a cluster: what an actor makes of the positions it is sent (engines/ray.read_records,
with a real RowReader on real files) and what the driver does with rows an actor could not read
(core/actor_reads.sort_out). The whole path on a real two-node cluster: tests/test_ray_direct.py."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import durabatch_cli

from durabatch.engines.base import Batch, BatchResult
from durabatch.engines.ray import BatchActor, read_records
from durabatch.errors import ErrorKind, ItemError
from durabatch.sources.files import FileSource
from durabatch.sources.row_reader import RowReader


def jsonl(tmp_path, lines: list[str]):
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_an_actor_reads_its_records_and_names_bad_rows_and_changed_keys(tmp_path):
    lines = [json.dumps({"id": i, "text": f"t{i}"}) for i in range(10)]
    lines[4] = '{"id": 4, "text": "cut'
    path = jsonl(tmp_path, lines)
    reader = RowReader.for_source(FileSource([str(path)]))
    # The driver read keys 0..9; position 7's key is not what the file holds now (as if the input changed).
    records, errors = read_records(reader, "id", [3, 4, 5, 7], [3, 4, 5, 70])
    assert records[0] == {"id": 3, "text": "t3"} and records[2] == {"id": 5, "text": "t5"}
    assert sorted(errors) == [1, 3]
    assert errors[1].error_type == ErrorKind.BAD_ROW and f"{path} line 5" in errors[1].message
    assert errors[3].error_type == ErrorKind.INPUT and "changed" in errors[3].message


def test_an_input_changed_under_the_run_fails_every_item_of_the_batch_with_input_error(tmp_path):
    path = jsonl(tmp_path, [json.dumps({"id": i}) for i in range(5)])
    reader = RowReader.for_source(FileSource([str(path)]))
    with path.open("a") as f:
        f.write(json.dumps({"id": 5}) + "\n")
    _, errors = read_records(reader, "id", [0, 1], [0, 1])
    assert [e.error_type for e in errors.values()] == [ErrorKind.INPUT] * 2
    assert "data.jsonl" in errors[0].message and "changed" in errors[0].message


def test_the_actor_runs_the_rows_it_read_and_keeps_the_others_errors(tmp_path):
    import pickle

    from durabatch.engines.user_fn import Work

    table = pa.table({"id": list(range(6)), "blob": [bytes([i]) * 1000 for i in range(6)]})
    pq.write_table(table, tmp_path / "data.parquet", row_group_size=2)
    reader = RowReader.for_source(FileSource([str(tmp_path / "data.parquet")]))
    actor = BatchActor(pickle.dumps(Work(blob_length, False, None)), None, reader, "id")
    outputs, errors, _, _ = actor.run(None, [5, 0, 3], [5, 0, 99])
    assert outputs[:2] == [{"n": 1000, "first": 5}, {"n": 1000, "first": 0}]
    assert list(errors) == [2] and errors[2].error_type == ErrorKind.INPUT


def blob_length(record: dict) -> dict:
    return {"n": len(record["blob"]), "first": record["blob"][0]}


def result_with(errors: dict[int, ItemError]) -> BatchResult:
    batch = Batch(1, [10, 11, 12, 13], ["a", "b", "c", "d"], [{}, {}, {}, {}])
    outputs = [None if i in errors else {"v": i} for i in range(4)]
    return BatchResult(batch, outputs, errors, 0.1)


@pytest.mark.parametrize("skip", [True, False])
def test_the_driver_records_an_actors_bad_row_or_stops_at_it(skip):
    from durabatch.core.actor_reads import sort_out

    bad = ItemError(ErrorKind.BAD_ROW, "data.jsonl line 12: not valid JSON", "")
    failed = ItemError("ValueError", "boom", "")
    rest, failures, stop = sort_out(result_with({1: bad, 2: failed}), skip_bad_rows=skip)
    assert rest.batch.positions == [10, 12, 13] and rest.outputs == [{"v": 0}, None, {"v": 3}]
    assert list(rest.errors) == [1] and rest.errors[1] is failed  # the function's own error goes on as usual
    if skip:
        assert stop is None and [(f.pos, f.error_type) for f in failures] == [(11, ErrorKind.BAD_ROW)]
        assert "data.jsonl line 12" in failures[0].message
    else:
        # The hint is spelled for Python here (the CLI says --skip-bad-rows).
        assert failures == [] and "data.jsonl line 12" in str(stop) and "skip_bad_rows=True" in str(stop)


def test_an_input_changed_stops_the_run_even_with_skip_bad_rows():
    from durabatch.core.actor_reads import sort_out

    changed = ItemError(ErrorKind.INPUT, "data.jsonl: changed during the run", "")
    rest, failures, stop = sort_out(result_with({0: changed, 3: changed}), skip_bad_rows=True)
    assert rest.batch.positions == [11, 12] and failures == []
    assert "changed during the run" in str(stop)


@pytest.mark.parametrize(("extra", "says"), [
    (["--engine", "threads", "--key", "id"], "--ray-reads actors needs --engine ray"),
    (["--engine", "ray"], "--ray-reads actors needs --key COLUMN"),
])
def test_actor_reads_are_refused_where_they_cannot_work(tmp_path, extra, says):
    path = jsonl(tmp_path, [json.dumps({"id": i}) for i in range(3)])
    args = ["run", "--input", path, "--fn", "json:dumps", "--run-dir", tmp_path / "run", "--ray-reads", "actors",
            *extra]
    result = durabatch_cli(*args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert says in result.stderr


def test_actor_reads_refuse_a_csv_input_naming_it(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("id,text\n1,a\n")
    result = durabatch_cli("run", "--input", path, "--fn", "json:dumps", "--run-dir", tmp_path / "run", "--key",
                           "id", "--engine", "ray", "--ray-reads", "actors", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "data.csv" in result.stderr and "Parquet" in result.stderr


def test_a_shard_an_actor_cannot_write_stops_the_run_instead_of_failing_its_items(tmp_path):
    import pickle

    from durabatch.core.actor_reads import sort_out
    from durabatch.engines.user_fn import Work
    from durabatch.store.actor_shards import ShardWriter

    # The run directory as a node that does not share it sees it: not there (a real FileNotFoundError).
    writer = ShardWriter(str(tmp_path / "not-mounted" / "shards"), "parquet", "id", "job")
    actor = BatchActor(pickle.dumps(Work(blob_length, False, None)), None)
    records = [{"id": i, "blob": b"xy"} for i in range(3)]
    _, errors, _, _, written = actor.run_and_write(records, [0, 1, 2], [0, 1, 2], writer, None)
    assert written[0] is None and [e.error_type for e in errors.values()] == [ErrorKind.STORAGE] * 3
    result = BatchResult(Batch(1, [0, 1, 2], [0, 1, 2], records), [None] * 3, errors, 0.1)
    rest, failures, stop = sort_out(result, skip_bad_rows=True)
    assert rest.batch.positions == [] and failures == []  # nothing counted against the items
    assert type(stop).__name__ == "StorageError" and "storage every node can write" in str(stop)
