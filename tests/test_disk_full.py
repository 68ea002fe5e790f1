"""A full disk ends the run with a clear message and a consistent run directory; after space is freed the same
command completes exactly once. The run directory lives on a small tmpfs this test mounts."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import pyarrow.parquet as pq
import pytest

TESTS = Path(__file__).parent


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", f"tmpfs-{uuid.uuid4().hex[:6]}", str(mount)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip()}); the disk-full test needs root")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_full_is_clean_and_resumable(tmp_path, small_disk):
    data = tmp_path / "d.jsonl"
    n = 3000
    data.write_text("".join(json.dumps({"id": i}) + "\n" for i in range(n)))
    run_dir = small_disk / "run"
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    args = [sys.executable, "-m", "durabatch", "run", "-i", str(data), "--key", "id", "--fn", "userfns:bulky",
            "--run-dir", str(run_dir), "--commit-every", "100", "--format", "jsonl", "--progress", "plain"]
    first = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 2, first.stderr
    assert "disk full" in first.stderr and str(run_dir) in first.stderr and "bytes free" in first.stderr
    assert "low disk space" in first.stderr  # warned before it ran out
    # Consistent: every listed shard is on disk, no temp file survives, the ledger is sound.
    conn = sqlite3.connect(run_dir / "ledger.sqlite")
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    listed = {r[0] for r in conn.execute("SELECT name FROM shards")}
    done_before = conn.execute("SELECT coalesce(sum(rows), 0) FROM shards").fetchone()[0]
    conn.close()
    on_disk = set(os.listdir(run_dir / "shards"))
    assert listed <= on_disk and not any(name.startswith(".tmp-") for name in on_disk)
    assert 0 < done_before < n
    # Free space: move the run to a roomy disk and resume.
    roomy = tmp_path / "run"
    shutil.copytree(run_dir, roomy)
    args[args.index(str(run_dir))] = str(roomy)
    second = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    subprocess.run([sys.executable, "-m", "durabatch", "export", str(roomy), "--to", str(tmp_path / "o.parquet")],
                   env=env, check=True, capture_output=True)
    ids = pq.read_table(tmp_path / "o.parquet").column("id").to_pylist()
    assert ids == list(range(n))
