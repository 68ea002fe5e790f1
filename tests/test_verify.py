"""Corruption: `durabatch verify` names each problem (exit 1); `--repair`, then the same run, ends with every key
exactly once in `durabatch export`, equal to a reference. Real files, real damage, the CLI as a subprocess."""

from __future__ import annotations

import json
import os
import shutil

import pyarrow.parquet as pq
import pytest
import userfns
from conftest import durabatch_cli

import durabatch
from durabatch.store.ledger import Ledger, ShardRecord
from durabatch.store.rundir import RunDir, run_lock

N = 500
IDS = list(range(N))


def run(run_dir, ids=IDS, **settings):
    summary = durabatch.run(userfns.digest, [{"id": i} for i in ids], key="id", run_dir=run_dir, commit_every=100,
                            progress="off", **settings)
    assert summary.exit_code == 0
    return summary


def make_run(tmp_path, **settings):
    run_dir = tmp_path / "r"
    run(run_dir, **settings)
    return run_dir


def shard_files(run_dir):
    return sorted(p for p in (run_dir / "shards").iterdir() if not p.name.startswith(".tmp-"))


def exported(tmp_path, run_dir):
    out = tmp_path / "export.parquet"
    result = durabatch_cli("export", run_dir, "--to", out, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    return pq.read_table(out)


def repair_and_rerun(tmp_path, run_dir, ids=IDS, **settings):
    """--repair (exit 0, then verify is clean), the same run again, and the export equals the reference."""
    repaired = durabatch_cli("verify", run_dir, "--repair", cwd=tmp_path)
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert "ok after repair" in repaired.stdout
    clean = durabatch_cli("verify", run_dir, cwd=tmp_path)
    assert clean.returncode == 0, clean.stdout
    summary = run(run_dir, ids, **settings)
    table = exported(tmp_path, run_dir)
    ids_out = table.column("id").to_pylist()
    assert sorted(ids_out) == sorted(ids) and len(set(ids_out)) == len(ids_out)  # every key exactly once
    reference = {i: userfns.digest({"id": i})["digest"] for i in ids}
    assert dict(zip(ids_out, table.column("digest").to_pylist(), strict=True)) == reference
    assert durabatch_cli("verify", run_dir, cwd=tmp_path).returncode == 0
    return summary, repaired


def test_healthy_run_verifies(tmp_path):
    run_dir = make_run(tmp_path)
    result = durabatch_cli("verify", run_dir, "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stdout
    report = json.loads(result.stdout)
    assert report["ok"] is True and report["shards"] == 5 and report["rows"] == N and report["problems"] == []
    assert durabatch_cli("verify", run_dir, "--repair", cwd=tmp_path).returncode == 0  # nothing to do


@pytest.mark.parametrize("damage", ["delete", "truncate", "flip"])
def test_damaged_shard_is_named_and_only_its_items_are_redone(tmp_path, damage):
    run_dir = make_run(tmp_path)
    victim = shard_files(run_dir)[2]
    original = victim.read_bytes()
    if damage == "delete":
        victim.unlink()
    elif damage == "truncate":
        victim.write_bytes(original[:200])
    else:
        data = bytearray(original)
        data[len(data) // 2] ^= 0xFF
        victim.write_bytes(bytes(data))
    damaged = None if damage == "delete" else victim.read_bytes()
    result = durabatch_cli("verify", run_dir, cwd=tmp_path)
    assert result.returncode == 1
    assert victim.name in result.stdout and ("missing" if damage == "delete" else "corrupt") in result.stdout
    as_json = json.loads(durabatch_cli("verify", run_dir, "--json", cwd=tmp_path).stdout)
    assert [(p["kind"], os.path.basename(p["file"])) for p in as_json["problems"]] == [
        ("missing" if damage == "delete" else "corrupt", victim.name)]
    summary, _ = repair_and_rerun(tmp_path, run_dir)
    assert summary.done == 100  # only the lost shard's items ran again
    if damaged is not None:  # the damaged file is kept, not deleted
        assert (run_dir / "corrupt" / victim.name).read_bytes() == damaged


def test_orphans_and_temp_leftovers_are_named_and_removed(tmp_path):
    run_dir = make_run(tmp_path)
    orphan = run_dir / "shards" / "000000000999-deadbeef.parquet"
    shutil.copy(shard_files(run_dir)[0], orphan)  # a complete shard whose ledger commit never happened
    (run_dir / "shards" / ".tmp-000000000999-cafe.parquet").write_bytes(b"half")
    result = durabatch_cli("verify", run_dir, cwd=tmp_path)
    assert result.returncode == 1
    assert orphan.name in result.stdout and ".tmp-000000000999-cafe.parquet" in result.stdout
    assert result.stdout.count("orphan:") == 2
    summary, _ = repair_and_rerun(tmp_path, run_dir)
    assert summary.done == 0
    assert not orphan.exists() and not (run_dir / "shards" / ".tmp-000000000999-cafe.parquet").exists()


def test_a_shard_listed_twice_is_named_and_unlisted(tmp_path):
    run_dir = make_run(tmp_path)
    source = shard_files(run_dir)[1]
    copy = run_dir / "shards" / "000000000100-c0ffee00.parquet"
    shutil.copy(source, copy)
    ledger = Ledger.open(RunDir(run_dir))
    row = next(s for s in ledger.shards() if s["name"] == source.name)
    ledger.register_shard(ShardRecord(copy.name, row["rows"], row["bytes"], row["checksum"], row["spans"]))
    ledger.close()
    result = durabatch_cli("verify", run_dir, cwd=tmp_path)
    assert result.returncode == 1 and "overlap" in result.stdout and "duplicate_keys" in result.stdout
    summary, _ = repair_and_rerun(tmp_path, run_dir)
    assert summary.done == 0  # the original still covers those items


def test_truncated_ledger_is_named_and_rebuilt_from_the_shards(tmp_path):
    run_dir = make_run(tmp_path)
    ledger = run_dir / "ledger.sqlite"
    for suffix in ("-wal", "-shm"):
        (run_dir / f"ledger.sqlite{suffix}").unlink(missing_ok=True)
    ledger.write_bytes(ledger.read_bytes()[: os.path.getsize(ledger) // 3])
    result = durabatch_cli("verify", run_dir, cwd=tmp_path)
    assert result.returncode == 1 and "ledger.sqlite" in result.stdout and "unreadable" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    status = durabatch_cli("status", run_dir, cwd=tmp_path)
    assert status.returncode == 2 and "ledger" in status.stderr  # a clear message, not a traceback
    summary, repaired = repair_and_rerun(tmp_path, run_dir)
    assert summary.done == 0  # every shard was re-registered from its footer: nothing to redo
    assert "failure records are lost" in repaired.stdout
    assert any(p.name.startswith("ledger.sqlite.corrupt-") for p in run_dir.iterdir())


def test_lost_ledger_and_a_truncated_shard(tmp_path):
    """The ledger is gone and one shard is damaged: the others are re-registered, the damaged one's items redone."""
    run_dir = make_run(tmp_path)
    for path in run_dir.glob("ledger.sqlite*"):
        path.unlink()
    victim = shard_files(run_dir)[3]
    victim.write_bytes(victim.read_bytes()[:-300])
    result = durabatch_cli("verify", run_dir, cwd=tmp_path)
    assert result.returncode == 1 and "ledger.sqlite: missing" in result.stdout
    summary, repaired = repair_and_rerun(tmp_path, run_dir)
    assert summary.done == 100 and victim.name in repaired.stdout
    assert (run_dir / "corrupt" / victim.name).exists()


def test_jsonl_shards_cannot_be_rebuilt_so_their_items_are_redone(tmp_path):
    run_dir = make_run(tmp_path, output_format="jsonl")
    (run_dir / "ledger.sqlite").write_bytes(b"not a database at all" * 10)
    assert durabatch_cli("verify", run_dir, cwd=tmp_path).returncode == 1
    summary, _ = repair_and_rerun(tmp_path, run_dir, output_format="jsonl")
    assert summary.done == N
    assert len(list((run_dir / "corrupt").iterdir())) == 5  # kept, not deleted


def test_rebuild_after_an_input_change_matches_done_items_by_key(tmp_path):
    """After an allowed input change positions mean other items; a rebuilt ledger must not trust them."""
    run_dir = tmp_path / "r"
    run(run_dir, list(range(300)))
    changed = list(range(1000, 1100)) + list(range(300))  # new items first: every old position shifts by 100
    summary = run(run_dir, changed, allow_changed=True)
    assert summary.done == 100
    (run_dir / "ledger.sqlite").write_bytes(b"\0" * 4096)  # nothing to salvage: the shards alone decide
    for suffix in ("-wal", "-shm"):
        (run_dir / f"ledger.sqlite{suffix}").unlink(missing_ok=True)
    summary, repaired = repair_and_rerun(tmp_path, run_dir, changed)
    assert "matched by key" in repaired.stdout
    assert summary.done == 0


def test_repair_is_refused_while_a_job_runs(tmp_path):
    run_dir = make_run(tmp_path)
    victim = shard_files(run_dir)[0]
    victim.unlink()
    (run_dir / "shards" / ".tmp-000000000500-feed.parquet").write_bytes(b"in progress")
    with run_lock(RunDir(run_dir)):  # this test process plays the running job
        refused = durabatch_cli("verify", run_dir, "--repair", cwd=tmp_path)
        assert refused.returncode == 2 and f"pid {os.getpid()}" in refused.stderr
        looked = durabatch_cli("verify", run_dir, cwd=tmp_path)  # read-only verify is fine meanwhile
        assert looked.returncode == 1 and victim.name in looked.stdout
        assert ".tmp-" not in looked.stdout and "a job is running" in looked.stdout  # a commit in progress
    assert (run_dir / "shards" / ".tmp-000000000500-feed.parquet").exists()
    repair_and_rerun(tmp_path, run_dir)


def test_not_a_run_directory_is_a_usage_error(tmp_path):
    (tmp_path / "empty").mkdir()
    for path in (tmp_path / "empty", tmp_path / "nowhere"):
        result = durabatch_cli("verify", path, "--repair", cwd=tmp_path)
        assert result.returncode == 2 and "durabatch: error:" in result.stderr
    assert list((tmp_path / "empty").iterdir()) == []  # no ledger created in a random directory


def test_duplicate_keys_are_named_and_a_rebuild_drops_the_copy(tmp_path):
    """A shard repeating another's keys at other positions: verify names it, repair cannot decide (exit 1), a
    ledger rebuilt from the footers keeps the first shard only."""
    from durabatch.store import shards

    run_dir = make_run(tmp_path)
    table = pq.read_table(shard_files(run_dir)[1]).replace_schema_metadata(None)
    spans = [(1000, 1000 + table.num_rows)]
    record = shards.write_atomic(run_dir / "shards", shards.serialize(table, "parquet", spans), table.num_rows,
                                 spans, "parquet")
    ledger = Ledger.open(RunDir(run_dir))
    ledger.register_shard(record)
    ledger.close()
    result = durabatch_cli("verify", run_dir, cwd=tmp_path)
    assert result.returncode == 1 and f"duplicate_keys: {run_dir / 'shards' / record.name}" in result.stdout
    assert "overlap" not in result.stdout
    attempt = durabatch_cli("verify", run_dir, "--repair", "--json", cwd=tmp_path)
    assert attempt.returncode == 1 and json.loads(attempt.stdout)["remaining"][0]["kind"] == "duplicate_keys"
    (run_dir / "ledger.sqlite").write_bytes(b"garbage" * 100)
    summary, repaired = repair_and_rerun(tmp_path, run_dir)
    assert summary.done == 0 and f"{record.name}: holds keys another shard holds" in repaired.stdout
