"""The store under bad conditions: committed work survives a lost WAL (complete shards of this job are adopted,
never deleted), export to a full disk fails cleanly, `run` on read-only media is refused in one line, and a
finished run on read-only media still answers `status`, `export` and `report`. Real tmpfs mounts (root only)."""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import subprocess
import uuid

import pyarrow.parquet as pq
import pytest
from conftest import durabatch_cli, write_jsonl

import durabatch

N = 2000
WAL_FN = '''
import hashlib, os, signal
from pathlib import Path

def lose_wal(record):
    i = record["id"]
    if os.environ.get("LOSE_WAL") == "1":
        if i == 1000:
            Path(os.environ["RUN_DIR"], "ledger.sqlite-wal").unlink()
        if i == 1500:
            os.kill(os.getpid(), signal.SIGKILL)
    return {"digest": hashlib.blake2b(str(i).encode(), digest_size=16).hexdigest()}
'''


@pytest.fixture
def mount(tmp_path):
    """mount() -> a fresh 16 MiB tmpfs; mount.readonly(path) remounts it read-only."""
    mounted = []

    def make(size: str = "16m"):
        point = tmp_path / f"disk{len(mounted)}"
        point.mkdir()
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", f"tmpfs-{uuid.uuid4().hex[:6]}",
                                 str(point)], capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip()}); these tests need root")
        mounted.append(point)
        return point

    def readonly(point):
        subprocess.run(["mount", "-o", "remount,ro", str(point)], check=True)
        with pytest.raises(OSError):
            (point / "probe").write_text("x")  # really read-only, also for root

    make.readonly = readonly
    yield make
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], check=False)


def one_line_error(result) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("durabatch: error: "), result.stderr
    return lines[0]


def digest(record: dict) -> dict:
    calls.append(record["id"])
    return {"digest": f"d{record['id']}", "pad": hashlib.sha512(str(record["id"]).encode()).hexdigest()}


calls: list[int] = []


def finished_run(run_dir, n=N, fn=digest, **settings):
    records = [{"id": i} for i in range(n)]
    summary = durabatch.run(fn, records, key="id", run_dir=run_dir, commit_every=100, progress="off", **settings)
    assert summary.exit_code == 0
    return sorted(p.name for p in (run_dir / "shards").iterdir())


# -- item 11: committed work survives a lost WAL ---------------------------------------------------------------
def test_a_lost_wal_then_kill_9_keeps_every_committed_shard(tmp_path):
    (tmp_path / "walfns.py").write_text(WAL_FN)
    data = write_jsonl(tmp_path / "data.jsonl", [{"id": i} for i in range(N)])
    run_dir = tmp_path / "r"
    args = ["run", "-i", data, "--key", "id", "--fn", "walfns:lose_wal", "--run-dir", run_dir, "--engine",
            "inline", "--commit-every", "100", "--progress", "off"]
    first = durabatch_cli(*args, cwd=tmp_path, extra_path=tmp_path, env={"LOSE_WAL": "1", "RUN_DIR": str(run_dir)})
    assert first.returncode == -9, first.stderr
    before = {p.name for p in (run_dir / "shards").iterdir() if not p.name.startswith(".tmp-")}
    assert len(before) >= 10
    second = durabatch_cli(*args, cwd=tmp_path, extra_path=tmp_path, env={"RUN_DIR": str(run_dir)})
    assert second.returncode == 0, second.stderr
    after = {p.name for p in (run_dir / "shards").iterdir()}
    assert before <= after, f"committed shards deleted on resume: {sorted(before - after)}"
    out = tmp_path / "out.parquet"
    assert durabatch_cli("export", run_dir, "--to", out, cwd=tmp_path).returncode == 0
    assert pq.read_table(out).column("id").to_pylist() == list(range(N))
    assert durabatch_cli("verify", run_dir, cwd=tmp_path).returncode == 0


def other_job(record: dict) -> dict:
    return {"digest": "other"}


def test_unlisted_shards_of_this_job_are_adopted_others_deleted(tmp_path):
    """A crash between rename and ledger transaction (here: the ledger's rows for two shards removed)."""
    run_dir = tmp_path / "r"
    names = finished_run(run_dir)
    lost = names[-2:]  # positions 1800..2000
    conn = sqlite3.connect(run_dir / "ledger.sqlite")
    with conn:
        conn.executemany("DELETE FROM shards WHERE name = ?", [(n,) for n in lost])
    conn.close()
    shards = run_dir / "shards"
    other = finished_run(tmp_path / "other", n=2400, fn=other_job)[-1]  # positions 2300..2400, another job
    shutil.copy(tmp_path / "other" / "shards" / other, shards / other)
    copy = f"{lost[0].split('-')[0]}-0dd0dd00.parquet"  # overlaps an adopted one: would duplicate keys
    shutil.copy(shards / lost[0], shards / copy)
    (shards / ".tmp-000000009999-cafe.parquet").write_bytes(b"PAR1 half")
    calls.clear()
    summary = durabatch.run(digest, [{"id": i} for i in range(N)], key="id", run_dir=run_dir, commit_every=100,
                            progress="off")
    assert summary.exit_code == 0 and calls == []  # nothing redone
    left = sorted(p.name for p in shards.iterdir())
    assert len(left) == len(names) and other not in left and not [n for n in left if n.startswith(".tmp-")]
    assert set(names) - set(left) <= {lost[0]}  # of two identical files, either one is kept
    out = tmp_path / "out.parquet"
    durabatch.export(run_dir, to=out)
    assert pq.read_table(out).column("id").to_pylist() == list(range(N))


def test_verify_repair_adopts_what_the_next_run_would(tmp_path):
    run_dir = tmp_path / "r"
    names = finished_run(run_dir)
    conn = sqlite3.connect(run_dir / "ledger.sqlite")
    with conn:
        conn.execute("DELETE FROM shards WHERE name = ?", (names[3],))
    conn.close()
    found = durabatch_cli("verify", run_dir, cwd=tmp_path)
    assert found.returncode == 1 and f"orphan: {run_dir / 'shards' / names[3]}" in found.stdout, found.stdout
    repaired = durabatch_cli("verify", run_dir, "--repair", cwd=tmp_path)
    assert repaired.returncode == 0 and f"{names[3]}: listed again" in repaired.stdout, repaired.stdout
    assert sorted(p.name for p in (run_dir / "shards").iterdir()) == names
    assert durabatch_cli("verify", run_dir, cwd=tmp_path).returncode == 0


def test_jsonl_orphans_are_redone_exactly_once(tmp_path):
    """JSON lines shards carry no positions: an unlisted one cannot be adopted, and is redone as before."""
    run_dir = tmp_path / "r"
    names = finished_run(run_dir, n=500, output_format="jsonl")
    conn = sqlite3.connect(run_dir / "ledger.sqlite")
    with conn:
        conn.execute("DELETE FROM shards WHERE name = ?", (names[-1],))
    conn.close()
    calls.clear()
    finished_run(run_dir, n=500, output_format="jsonl")
    assert sorted(calls) == list(range(int(names[-1].split("-")[0]), 500))
    out = tmp_path / "out.parquet"
    durabatch.export(run_dir, to=out)
    assert pq.read_table(out).column("id").to_pylist() == list(range(500))


# -- clear errors ------------------------------------------------------------------------------------------------
def test_export_to_a_full_disk_fails_cleanly(tmp_path, mount):
    run_dir = tmp_path / "r"
    finished_run(run_dir)
    disk = mount("64k")
    for name in ("out.jsonl", "out.parquet"):
        result = durabatch_cli("export", run_dir, "--to", disk / name, cwd=tmp_path)
        line = one_line_error(result)
        assert "disk full" in line and str(disk / name) in line, line
        assert os.listdir(disk) == [], os.listdir(disk)  # no partial file, no temp file


def test_run_on_read_only_media_is_refused_in_one_line(tmp_path, mount):
    data = write_jsonl(tmp_path / "data.jsonl", [{"id": i} for i in range(10)])
    disk = mount()
    (disk / "existing").mkdir()
    mount.readonly(disk)
    for run_dir in (disk / "new", disk / "existing"):
        result = durabatch_cli("run", "-i", data, "--key", "id", "--fn", "jobs:digest", "--run-dir", run_dir,
                               "--progress", "off", cwd=tmp_path)
        line = one_line_error(result)
        assert str(disk) in line and "read-only" in line, line


def test_a_finished_run_on_read_only_media_can_still_be_read(tmp_path, mount):
    disk = mount()
    run_dir = disk / "r"
    finished_run(run_dir)
    mount.readonly(disk)
    status = durabatch_cli("status", run_dir, "--json", cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert f"{N}" in status.stdout
    out = tmp_path / "out.parquet"
    exported = durabatch_cli("export", run_dir, "--to", out, cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    assert pq.read_table(out).column("id").to_pylist() == list(range(N))
    report = durabatch_cli("report", run_dir, "--to", tmp_path / "report.html", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    beside = durabatch_cli("report", run_dir, cwd=tmp_path)  # the default, inside the run directory: one line
    line = one_line_error(beside)  # that says why and what to do
    assert "report.html" in line and "--to FILE" in line, line
    assert durabatch_cli("verify", run_dir, cwd=tmp_path).returncode == 0
