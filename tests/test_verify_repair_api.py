"""`durabatch.verify(run_dir, repair=True)`: the CLI's `verify --repair` from Python, on real damaged run
directories (as tests/test_verify.py damages them); its hints are spelled for the caller (Python or the CLI)."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
import userfns
from conftest import durabatch_cli

import durabatch
from durabatch.store.rundir import RunDir, run_lock

N = 500


def run(run_dir) -> durabatch.RunSummary:
    summary = durabatch.run(userfns.digest, [{"id": i} for i in range(N)], key="id", run_dir=run_dir,
                            commit_every=100, progress="off")
    assert summary.exit_code == 0
    return summary


def shard_files(run_dir):
    return sorted(p for p in (run_dir / "shards").iterdir() if not p.name.startswith(".tmp-"))


def flip_a_byte(path) -> bytes:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    return bytes(data)


def test_repair_from_python_puts_a_corrupt_shards_items_back_and_the_next_run_redoes_only_them(tmp_path):
    run_dir = tmp_path / "r"
    run(run_dir)
    victim = shard_files(run_dir)[2]
    damaged = flip_a_byte(victim)

    found = durabatch.verify(run_dir)
    assert not found.ok and [(p.kind, p.file) for p in found.problems] == [("corrupt", str(victim))]
    assert f"run `durabatch.verify({str(run_dir)!r}, repair=True)`" in found.render()  # Python's spelling

    repaired = durabatch.verify(run_dir, repair=True)
    assert repaired.ok and repaired.remaining == []
    assert any(victim.name in r and "pending again" in r for r in repaired.repaired), repaired.repaired
    assert "ok after repair" in repaired.render()
    assert (run_dir / "corrupt" / victim.name).read_bytes() == damaged  # kept, not deleted
    assert durabatch.verify(run_dir).ok

    assert run(run_dir).done == 100  # only the corrupt shard's items ran again
    out = tmp_path / "out.parquet"
    durabatch.export(run_dir, to=out)
    table = pq.read_table(out)
    assert sorted(table.column("id").to_pylist()) == list(range(N))
    assert dict(zip(table.column("id").to_pylist(), table.column("digest").to_pylist(), strict=True)) == {
        i: userfns.digest({"id": i})["digest"] for i in range(N)}


def test_repair_from_python_rebuilds_a_lost_ledger_from_the_shards(tmp_path):
    run_dir = tmp_path / "r"
    run(run_dir)
    for suffix in ("", "-wal", "-shm"):
        (run_dir / f"ledger.sqlite{suffix}").unlink(missing_ok=True)
    assert [p.kind for p in durabatch.verify(run_dir).problems] == ["ledger"]

    repaired = durabatch.verify(run_dir, repair=True)
    assert repaired.ok and repaired.shards == 5 and repaired.rows == N, repaired.render()
    assert run(run_dir).done == 0  # every item was found again in the shards


def test_repair_from_python_is_refused_while_a_job_holds_the_run(tmp_path):
    run_dir = tmp_path / "r"
    run(run_dir)
    victim = shard_files(run_dir)[0]
    victim.unlink()
    with run_lock(RunDir(run_dir)), pytest.raises(durabatch.RunLockedError):
        durabatch.verify(run_dir, repair=True)
    assert not durabatch.verify(run_dir).ok  # nothing was touched


def test_the_cli_flag_goes_through_the_same_call_and_keeps_its_spelling(tmp_path):
    run_dir = tmp_path / "r"
    run(run_dir)
    flip_a_byte(shard_files(run_dir)[1])
    found = durabatch_cli("verify", run_dir, cwd=tmp_path)
    assert found.returncode == 1 and f"run `durabatch verify {run_dir} --repair`" in found.stdout, found.stdout
    repaired = durabatch_cli("verify", run_dir, "--repair", cwd=tmp_path)
    assert repaired.returncode == 0 and "ok after repair" in repaired.stdout, repaired.stdout
    assert durabatch.verify(run_dir).ok
