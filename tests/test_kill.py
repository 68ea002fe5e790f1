"""kill -9 at random moments, again and again: the ledger stays sound after every kill, and the final export
has every key exactly once, equal to a reference loop. SIGTERM and Ctrl-C stop cleanly with exit 75."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import time

import pyarrow.parquet as pq
import pytest
import userfns
from conftest import durabatch_cli, durabatch_popen

N = 20_000
KILLS = 22


def check_ledger(run_dir, after_resume=False):
    conn = sqlite3.connect(f"file:{run_dir / 'ledger.sqlite'}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        listed = {row[0] for row in conn.execute("SELECT name FROM shards")}
    finally:
        conn.close()
    on_disk = set(os.listdir(run_dir / "shards"))
    assert listed <= on_disk, f"a listed shard is missing: {listed - on_disk}"
    if after_resume:  # crash leftovers are gone once a run has started again
        assert on_disk == listed


@pytest.mark.parametrize("engine", ["inline", "threads"])
def test_random_sigkills_lose_and_duplicate_nothing(tmp_path, records_file, engine):
    data = records_file(N)
    run_dir = tmp_path / "r"
    args = ["run", "-i", data, "--key", "id", "--fn", "userfns:slow_digest", "--run-dir", run_dir,
            "--commit-every", "400", "--commit-seconds", "0.3", "--progress", "off", "--engine", engine,
            "--workers", "1" if engine == "inline" else "2"]
    rng = random.Random(2026 if engine == "inline" else 7)
    for _ in range(KILLS):
        proc = durabatch_popen(*args, cwd=tmp_path)
        time.sleep(rng.uniform(0.3, 1.2))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if (run_dir / "ledger.sqlite").exists():
            check_ledger(run_dir)
    final = durabatch_cli(*args, cwd=tmp_path)
    assert final.returncode == 0, final.stderr
    check_ledger(run_dir, after_resume=True)
    out = tmp_path / "out.parquet"
    assert durabatch_cli("export", run_dir, "--to", out, cwd=tmp_path).returncode == 0
    table = pq.read_table(out)
    assert table.column("id").to_pylist() == list(range(N))
    reference = [userfns.digest({"id": i})["digest"] for i in range(N)]
    assert table.column("digest").to_pylist() == reference


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGUSR1])
def test_stop_signal_exits_75_and_the_same_command_resumes(tmp_path, records_file, sig):
    data = records_file(3000)
    (tmp_path / "slow2.py").write_text("import time\ndef f(r):\n    time.sleep(0.002)\n    return {'x': r['id']}\n")
    args = ["run", "-i", data, "--key", "id", "--fn", "slow2:f", "--run-dir", tmp_path / "r",
            "--progress", "plain", "--commit-every", "100"]
    proc = durabatch_popen(*args, cwd=tmp_path, extra_path=tmp_path, stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 75, err
    assert "run the same command again" in err.lower()
    again = durabatch_cli(*args, cwd=tmp_path, extra_path=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "resuming:" in again.stderr
    out = tmp_path / "o.parquet"
    durabatch_cli("export", tmp_path / "r", "--to", out, cwd=tmp_path)
    assert pq.read_table(out).column("id").to_pylist() == list(range(3000))


def test_second_signal_stops_at_once(tmp_path, records_file):
    data = records_file(40)
    (tmp_path / "sleepy.py").write_text("import time\ndef f(r):\n    time.sleep(20)\n    return {'x': 1}\n")
    args = ["run", "-i", data, "--key", "id", "--fn", "sleepy:f", "--run-dir", tmp_path / "r", "--progress", "off",
            "--engine", "threads", "--workers", "2", "--grace-seconds", "60"]
    proc = durabatch_popen(*args, cwd=tmp_path, extra_path=tmp_path)
    time.sleep(1.5)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    assert proc.poll() is None  # the first Ctrl-C waits for work in flight (up to 60 s)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 75
    assert time.monotonic() - t0 < 10  # well before the grace period or the 20 s calls


def test_second_signal_interrupts_inline_work(tmp_path, records_file):
    data = records_file(10)
    (tmp_path / "sleepy.py").write_text("import time\ndef f(r):\n    time.sleep(20)\n    return {'x': 1}\n")
    args = ["run", "-i", data, "--key", "id", "--fn", "sleepy:f", "--run-dir", tmp_path / "r", "--progress", "off",
            "--grace-seconds", "60"]
    proc = durabatch_popen(*args, cwd=tmp_path, extra_path=tmp_path)
    time.sleep(1.5)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 75
    assert time.monotonic() - t0 < 10
