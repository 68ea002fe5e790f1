"""Values and keys keep their identity (issue 10, items 4 and 5; RELIABILITY #19): a key column of mixed types is
refused naming two rows, an unhashable or absurdly nested row is a bad row named by its line, a result field keeps
one type (a value that cannot join it fails its own item, naming the field and both types), and whether a finished
run exports never depends on where commits fell."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import durabatch_cli, read_export, write_jsonl

import durabatch
from durabatch.errors import InputError
from durabatch.store.shards import build_table


def run_cli(tmp_path, data, *extra, fn="jobs:digest"):
    return durabatch_cli("run", "-i", data, "--key", "id", "--fn", fn, "--run-dir", tmp_path / "r",
                         "--progress", "off", *extra, cwd=tmp_path)


# -- keys ----------------------------------------------------------------------------------------------------------
def test_a_key_column_mixing_int_and_text_is_refused_naming_two_rows(tmp_path):
    data = write_jsonl(tmp_path / "data.jsonl", [{"id": 0}, {"id": 1}, {"id": "1"}, {"id": 3}])
    result = run_cli(tmp_path, data)
    assert result.returncode == 2, result.stderr
    assert "data.jsonl line 1" in result.stderr and "data.jsonl line 3" in result.stderr
    assert "int" in result.stderr and "str" in result.stderr
    assert not (tmp_path / "r" / "shards").exists() or not any((tmp_path / "r" / "shards").iterdir())


def test_key_types_mixed_across_files_are_refused(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"id": i} for i in range(5)])
    write_jsonl(tmp_path / "b.jsonl", [{"id": str(i)} for i in range(5, 10)])
    with pytest.raises(InputError, match=r"a.jsonl line 1.*b.jsonl line 1"):
        durabatch.run(lambda r: {}, [str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")], key="id",
                      run_dir=tmp_path / "r", progress="off")


def test_key_types_mixed_in_a_python_iterable_are_refused(tmp_path):
    with pytest.raises(InputError, match="item 0.*item 2"):
        durabatch.run(lambda r: {}, [{"id": 1}, {"id": 2}, {"id": "1"}], key="id", run_dir=tmp_path / "r",
                      progress="off")


def test_keys_of_one_type_export_verbatim(tmp_path):
    data = write_jsonl(tmp_path / "data.jsonl", [{"id": "1"}, {"id": "01"}, {"id": "a\"b"}])
    assert run_cli(tmp_path, data).returncode == 0
    assert read_export(tmp_path / "r", tmp_path).column("id").to_pylist() == ["1", "01", "a\"b"]


@pytest.mark.parametrize("bad_key", [[1, 2], {"a": 1}])
def test_a_list_or_dict_key_is_a_bad_row_named_by_line(tmp_path, bad_key):
    data = write_jsonl(tmp_path / "data.jsonl", [{"id": 0}, {"id": bad_key}, {"id": 2}])
    result = run_cli(tmp_path, data)
    assert result.returncode == 2 and "data.jsonl line 2" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and "unhashable" not in result.stderr
    skipped = run_cli(tmp_path, data, "--skip-bad-rows")
    assert skipped.returncode == 1, skipped.stderr
    assert read_export(tmp_path / "r", tmp_path).column("id").to_pylist() == [0, 2]
    failed = read_export(tmp_path / "r", tmp_path, failed=True).to_pylist()
    assert len(failed) == 1 and "line 2" in failed[0]["message"]


def deep_line(depth: int = 100_000) -> str:
    return '{"id": 1, "v": ' + "[" * depth + "]" * depth + "}"


@pytest.mark.parametrize("key", ["id", None])
def test_a_row_nested_100000_deep_is_a_bad_row_named_by_line(tmp_path, key):
    data = tmp_path / "data.jsonl"
    data.write_text('{"id": 0}\n' + deep_line() + '\n{"id": 2}\n')
    args = ["--key", key] if key else []
    result = durabatch_cli("run", "-i", data, *args, "--fn", "jobs:digest", "--run-dir", tmp_path / "r",
                           "--progress", "off", cwd=tmp_path)
    assert result.returncode == 2 and "data.jsonl line 2" in result.stderr, result.stderr
    assert "RecursionError" not in result.stderr and "Traceback" not in result.stderr
    skipped = durabatch_cli("run", "-i", data, *args, "--fn", "jobs:digest", "--run-dir", tmp_path / "r",
                            "--progress", "off", "--skip-bad-rows", cwd=tmp_path)
    assert skipped.returncode == 1, skipped.stderr
    assert len(read_export(tmp_path / "r", tmp_path)) == 2


def test_a_deeply_nested_python_record_is_a_bad_row(tmp_path):
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(InputError, match="item 1"):
        durabatch.run(lambda r: {}, [{"a": 0}, {"a": deep}], run_dir=tmp_path / "r", progress="off")


def test_a_csv_with_a_utf8_bom_reads_its_first_column(tmp_path):
    data = tmp_path / "data.csv"
    data.write_bytes("\ufeffid,v\n1,a\n2,b\n".encode())
    result = run_cli(tmp_path, data)
    assert result.returncode == 0, result.stderr
    assert read_export(tmp_path / "r", tmp_path).column("id").to_pylist() == ["1", "2"]


# -- result values -------------------------------------------------------------------------------------------------
def typed(record: dict) -> dict:
    """Field "v" is int 5 for even ids and str "5" for odd ones; "score" int or float; "extra" sometimes absent."""
    i = record["id"]
    out = {"v": 5 if i % 2 == 0 else "5", "score": i if i % 3 else i + 0.5}
    if i % 4 == 0:
        out["extra"] = None
    return out


@pytest.mark.parametrize("commit_every", [1, 3, 1000])
def test_a_value_that_cannot_join_its_field_fails_its_item_whatever_the_commits(tmp_path, commit_every):
    summary = durabatch.run(typed, [{"id": i} for i in range(12)], key="id", run_dir=tmp_path / "r",
                            commit_every=commit_every, progress="off")
    assert summary.exit_code == 1 and summary.failed_total == 6
    durabatch.export(tmp_path / "r", to=tmp_path / "o.parquet")  # a finished run always exports
    table = pq.read_table(tmp_path / "o.parquet")
    assert table.column("id").to_pylist() == [0, 2, 4, 6, 8, 10]
    assert table.column("v").type == pa.int64() and table.column("v").to_pylist() == [5] * 6  # never "\"5\""
    assert table.column("score").to_pylist() == [0.5, 2.0, 4.0, 6.5, 8.0, 10.0]  # ints join a float field
    durabatch.export(tmp_path / "r", to=tmp_path / "f.jsonl", failed=True)
    failed = [json.loads(line) for line in (tmp_path / "f.jsonl").read_text().splitlines()]
    assert sorted(int(f["key"]) for f in failed) == [1, 3, 5, 7, 9, 11]
    assert all(f["error_type"] == "ResultTypeError" and "'v'" in f["message"] and "str" in f["message"]
               and "int64" in f["message"] for f in failed)


def test_the_field_types_survive_a_resume(tmp_path):
    records = [{"id": i} for i in range(10)]
    durabatch.run(lambda r: {"v": r["id"]}, records, key="id", run_dir=tmp_path / "r", limit=5, progress="off")
    summary = durabatch.run(lambda r: {"v": r["id"]}, records, key="id", run_dir=tmp_path / "r",
                            allow_changed=True, progress="off")
    assert summary.exit_code == 0
    later = durabatch.run(lambda r: {"v": str(r["id"])}, records + [{"id": 10}], key="id",
                          run_dir=tmp_path / "r", allow_changed=True, progress="off")
    assert later.exit_code == 1 and later.failed_total == 1
    durabatch.export(tmp_path / "r", to=tmp_path / "o.parquet")
    assert pq.read_table(tmp_path / "o.parquet").column("v").to_pylist() == list(range(10))


def test_a_value_arrow_cannot_store_fails_its_item(tmp_path):
    def mixed_list(record: dict) -> dict:
        return {"v": [1, "a"] if record["id"] == 1 else [record["id"]]}

    summary = durabatch.run(mixed_list, [{"id": i} for i in range(3)], key="id", run_dir=tmp_path / "r",
                            progress="off")
    assert summary.exit_code == 1 and summary.failed_total == 1
    durabatch.export(tmp_path / "r", to=tmp_path / "o.parquet")
    assert pq.read_table(tmp_path / "o.parquet").column("v").to_pylist() == [[0], [2]]


def test_build_table_never_rewrites_a_value():
    table = build_table("id", [0, 1, 2], [[{"a": 1}, {"a": "text"}, {"a": None}]])
    assert table.column("id").to_pylist() == [0, 2] and table.column("a").to_pylist() == [1, None]
