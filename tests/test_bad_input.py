"""Bad input gets its documented clear error (naming the file, row or setting) and loses nothing done."""

from __future__ import annotations

import json
import time

from conftest import durabatch_cli, durabatch_popen, export_ids, write_jsonl


def run(tmp_path, data, *extra, fn="userfns:digest"):
    return durabatch_cli("run", "-i", data, "--key", "id", "--fn", fn, "--run-dir", tmp_path / "r",
                         "--progress", "off", *extra, cwd=tmp_path)


def test_malformed_line_names_file_and_line_and_keeps_what_was_committed(tmp_path):
    lines = [json.dumps({"id": i}) for i in range(300)]
    lines[250] = '{"id": 250, "text": oops}'
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(lines) + "\n")
    result = run(tmp_path, data, "--commit-every", "10")
    assert result.returncode == 2
    assert "data.jsonl line 251" in result.stderr and "malformed JSON" in result.stderr
    assert export_ids(tmp_path / "r", tmp_path) == list(range(250))  # everything before the bad line kept
    fixed = run(tmp_path, data, "--commit-every", "10", "--skip-bad-rows")
    assert fixed.returncode == 1  # finished, the bad row recorded as a failure
    assert export_ids(tmp_path / "r", tmp_path) == [i for i in range(300) if i != 250]
    failed = durabatch_cli("export", tmp_path / "r", "--failed", "--to", tmp_path / "f.jsonl", cwd=tmp_path)
    assert failed.returncode == 0
    row = json.loads((tmp_path / "f.jsonl").read_text().splitlines()[0])
    assert row["error_type"] == "BadRow" and "line 251" in row["message"]


def test_missing_key_column_names_the_column_and_row(tmp_path):
    data = write_jsonl(tmp_path / "data.jsonl", [{"id": 0}, {"id": 1}, {"name": "x"}, {"id": 3}])
    result = run(tmp_path, data)
    assert result.returncode == 2
    assert "'id'" in result.stderr and "data.jsonl line 3" in result.stderr


def test_duplicate_keys_name_both_rows_unless_dedupe(tmp_path):
    data = write_jsonl(tmp_path / "data.jsonl", [{"id": i % 50 if i != 70 else 7} for i in range(50)] +
                       [{"id": 7, "late": True}])
    result = run(tmp_path, data)
    assert result.returncode == 2
    assert "id=7" in result.stderr and "line 8" in result.stderr and "line 51" in result.stderr
    assert not (tmp_path / "r" / "shards").exists() or not any((tmp_path / "r" / "shards").iterdir())
    deduped = run(tmp_path, data, "--dedupe")
    assert deduped.returncode == 0, deduped.stderr
    assert export_ids(tmp_path / "r", tmp_path) == list(range(50))


def test_duplicate_keys_in_csv_and_shuffled_order(tmp_path):
    data = tmp_path / "data.csv"
    ids = [5, 3, 9, 1, 3]
    data.write_text("id,text\n" + "".join(f"{i},t{i}\n" for i in ids))
    result = run(tmp_path, data)
    assert result.returncode == 2 and "id='3'" in result.stderr and "line 3" in result.stderr


def test_csv_row_with_wrong_field_count(tmp_path):
    data = tmp_path / "data.csv"
    data.write_text("id,text\n1,a\n2,b,extra\n3,c\n")
    result = run(tmp_path, data)
    assert result.returncode == 2 and "data.csv line 3" in result.stderr and "expected 2 fields, got 3" in result.stderr


def test_empty_input_is_a_clear_error(tmp_path):
    data = tmp_path / "empty.jsonl"
    data.write_text("")
    result = run(tmp_path, data)
    assert result.returncode == 2 and "empty.jsonl" in result.stderr and "no items" in result.stderr


def test_changed_function_on_resume_is_refused_with_a_diff(tmp_path):
    data = write_jsonl(tmp_path / "data.jsonl", [{"id": i} for i in range(100)])
    mod = tmp_path / "mod"
    mod.mkdir()
    (mod / "score.py").write_text("def f(r):\n    return {'x': r['id']}\n")
    args = ("run", "-i", data, "--key", "id", "--fn", "score:f", "--run-dir", tmp_path / "r", "--progress", "off")
    assert durabatch_cli(*args, "--limit", "40", cwd=tmp_path, extra_path=mod).returncode == 0
    (mod / "score.py").write_text("def f(r):\n    return {'x': r['id'] * 2}\n")
    refused = durabatch_cli(*args, cwd=tmp_path, extra_path=mod)
    assert refused.returncode == 2 and "fn_code" in refused.stderr and "--allow-changed" in refused.stderr
    assert export_ids(tmp_path / "r", tmp_path) == list(range(40))  # nothing lost
    allowed = durabatch_cli(*args, "--allow-changed", cwd=tmp_path, extra_path=mod)
    assert allowed.returncode == 0 and "allow-changed" in allowed.stderr
    assert export_ids(tmp_path / "r", tmp_path) == list(range(100))


def test_second_concurrent_run_is_refused_naming_the_holder(tmp_path):
    data = write_jsonl(tmp_path / "data.jsonl", [{"id": i} for i in range(300)])
    (tmp_path / "slowfn.py").write_text("import time\ndef f(r):\n    time.sleep(0.01)\n    return {'x': r['id']}\n")
    args = ("run", "-i", data, "--key", "id", "--fn", "slowfn:f", "--run-dir", tmp_path / "r", "--progress", "off")
    first = durabatch_popen(*args, cwd=tmp_path, extra_path=tmp_path)
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "r" / "lock").exists() or not (tmp_path / "r" / "lock").read_text().strip():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        second = durabatch_cli(*args, cwd=tmp_path, extra_path=tmp_path)
        assert second.returncode == 2
        assert f"pid {first.pid}" in second.stderr and "in use" in second.stderr
    finally:
        assert first.wait(timeout=60) == 0
    assert export_ids(tmp_path / "r", tmp_path) == list(range(300))


def test_unknown_job_file_key_and_bad_flag_value(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("fn: userfns:digest\ninput: data.jsonl\nrun_dir: r\ncomit_every: 5\n")
    result = durabatch_cli("run", job, cwd=tmp_path)
    assert result.returncode == 2 and "comit_every" in result.stderr and "commit_every" in result.stderr
    bad = durabatch_cli("run", "--fn", "userfns:digest", "-i", "x.jsonl", "--run-dir", "r", "--workers", "0",
                        cwd=tmp_path)
    assert bad.returncode == 2 and "workers" in bad.stderr
