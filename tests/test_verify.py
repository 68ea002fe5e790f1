"""Corruption: verify names each problem; --repair, then the same run, ends with every key exactly once."""

from __future__ import annotations

import json
import os

import pyarrow.parquet as pq
import pytest
import userfns
from conftest import durabatch_cli

import durabatch

N = 500


def make_run(tmp_path):
    run_dir = tmp_path / "r"
    summary = durabatch.run(userfns.digest, [{"id": i} for i in range(N)], key="id", run_dir=run_dir,
                            commit_every=100, progress="off")
    assert summary.exit_code == 0
    return run_dir


def shard_files(run_dir):
    return sorted((run_dir / "shards").iterdir())


def finish_and_check(tmp_path, run_dir):
    repaired = durabatch_cli("verify", run_dir, "--repair", cwd=tmp_path)
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert durabatch_cli("verify", run_dir, cwd=tmp_path).returncode == 0
    summary = durabatch.run(userfns.digest, [{"id": i} for i in range(N)], key="id", run_dir=run_dir,
                            commit_every=100, progress="off")
    assert summary.exit_code == 0
    durabatch.export(run_dir, to=tmp_path / "o.parquet")
    table = pq.read_table(tmp_path / "o.parquet")
    assert table.column("id").to_pylist() == list(range(N))
    assert table.column("digest").to_pylist() == [userfns.digest({"id": i})["digest"] for i in range(N)]
    return summary


def test_healthy_run_verifies(tmp_path):
    run_dir = make_run(tmp_path)
    result = durabatch_cli("verify", run_dir, "--json", cwd=tmp_path)
    assert result.returncode == 0 and json.loads(result.stdout)["ok"] is True


@pytest.mark.parametrize("damage", ["delete", "truncate", "flip"])
def test_damaged_shard_is_named_and_only_its_items_are_redone(tmp_path, damage):
    run_dir = make_run(tmp_path)
    victim = shard_files(run_dir)[2]
    if damage == "delete":
        victim.unlink()
    elif damage == "truncate":
        victim.write_bytes(victim.read_bytes()[:200])
    else:
        data = bytearray(victim.read_bytes())
        data[len(data) // 2] ^= 0xFF
        victim.write_bytes(bytes(data))
    result = durabatch_cli("verify", run_dir, cwd=tmp_path)
    assert result.returncode == 1
    assert victim.name in result.stdout and ("missing" if damage == "delete" else "corrupt") in result.stdout
    summary = finish_and_check(tmp_path, run_dir)
    assert summary.done == 100  # only the lost shard's items ran again


def test_orphans_and_temp_leftovers_are_named_and_removed(tmp_path):
    run_dir = make_run(tmp_path)
    (run_dir / "shards" / "000000000999-deadbeef.parquet").write_bytes(b"leftover")
    (run_dir / "shards" / ".tmp-000000000999-cafe.parquet").write_bytes(b"half")
    result = durabatch_cli("verify", run_dir, cwd=tmp_path)
    assert result.returncode == 1 and "deadbeef" in result.stdout and ".tmp-" in result.stdout
    finish_and_check(tmp_path, run_dir)
    assert all(not p.name.startswith(".tmp-") for p in shard_files(run_dir))


def test_truncated_ledger_is_named_and_rebuilt_from_the_shards(tmp_path):
    run_dir = make_run(tmp_path)
    ledger = run_dir / "ledger.sqlite"
    for suffix in ("-wal", "-shm"):
        (run_dir / f"ledger.sqlite{suffix}").unlink(missing_ok=True)
    ledger.write_bytes(ledger.read_bytes()[: os.path.getsize(ledger) // 3])
    result = durabatch_cli("verify", run_dir, cwd=tmp_path)
    assert result.returncode == 1 and "ledger.sqlite" in result.stdout and "unreadable" in result.stdout
    status = durabatch_cli("status", run_dir, cwd=tmp_path)
    assert status.returncode == 2 and "ledger" in status.stderr  # a clear message, not a traceback
    summary = finish_and_check(tmp_path, run_dir)
    assert summary.done == 0  # every shard was re-registered from its footer: nothing to redo
    assert any(p.name.startswith("ledger.sqlite.corrupt-") for p in run_dir.iterdir())


def test_repair_refuses_while_a_job_runs(tmp_path):
    from durabatch.ledger import RunDir, run_lock
    from durabatch.verify import repair

    run_dir = make_run(tmp_path)
    shard_files(run_dir)[0].unlink()
    with run_lock(RunDir(run_dir)), pytest.raises(durabatch.RunLockedError):
        repair(run_dir)
