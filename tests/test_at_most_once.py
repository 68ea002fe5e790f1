"""At-most-once mode: SIGKILL inside side-effecting calls again and again; no item is ever called twice, and the
interrupted ones are surfaced, never re-called."""

from __future__ import annotations

import collections
import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import wait_until

TESTS = Path(__file__).parent
# Every round is the same kill (just after a call bumped the counter, mid-call, same engine and options); 16 of
# them sample that moment as well as 25 did, with 9 fewer start-ups (~1.4 s each).
KILLS = 16
pytestmark = pytest.mark.slow  # 17 runs of the CLI


def calls_so_far(counter: Path) -> int:
    """Calls made so far, by every run: the lines side_effect() appended to the counter file."""
    return counter.read_bytes().count(b"\n") if counter.exists() else 0


def test_kills_mid_call_never_repeat_a_call(tmp_path):
    n = 600
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"id": i}) + "\n" for i in range(n)))
    counter = tmp_path / "calls.txt"
    env = {**os.environ, "PYTHONPATH": str(TESTS), "COUNTER_FILE": str(counter)}
    args = [sys.executable, "-m", "durabatch", "run", "-i", str(data), "--key", "id", "--fn", "userfns:side_effect",
            "--run-dir", str(tmp_path / "r"), "--at-most-once", "--commit-every", "5", "--progress", "off"]
    rng = random.Random(7)
    kills = 0
    for _ in range(KILLS):
        # Evidence, not a clock: kill once this run has made a few calls (the counter file grew), however long its
        # start-up took on a busy machine. The newest call has just bumped the counter and is still running.
        target = calls_so_far(counter) + rng.randint(1, 6)
        proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_until(lambda t=target, p=proc: calls_so_far(counter) >= t or p.poll() is not None, timeout=300,
                       interval=0.005, what=f"call number {target}")
            if proc.poll() is not None:  # the job finished before this kill: nothing left to interrupt
                break
            proc.send_signal(signal.SIGKILL)
            kills += 1
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    assert kills >= 13, f"only {kills} kills landed before the job finished"
    final = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert final.returncode == 1, final.stderr  # finished, with interrupted items reported
    calls = collections.Counter(int(x) for x in counter.read_text().split())
    assert max(calls.values()) == 1, [k for k, c in calls.items() if c > 1]
    subprocess.run([sys.executable, "-m", "durabatch", "export", str(tmp_path / "r"), "--to",
                    str(tmp_path / "o.parquet")], env=env, check=True, capture_output=True)
    subprocess.run([sys.executable, "-m", "durabatch", "export", str(tmp_path / "r"), "--failed", "--to",
                    str(tmp_path / "f.parquet")], env=env, check=True, capture_output=True)
    done = pq.read_table(tmp_path / "o.parquet").column("id").to_pylist()
    failed = pq.read_table(tmp_path / "f.parquet")
    interrupted = [int(k) for k, s in zip(failed.column("key").to_pylist(), failed.column("state").to_pylist(),
                                          strict=True) if s == "interrupted"]
    assert interrupted, "some kills must have landed mid-call"
    assert sorted(done + interrupted) == list(range(n))  # every item is either done or reported
    assert set(done) <= set(calls)  # everything done was called exactly once
    # Interrupted items are never re-called by a plain re-run; retry-failed --interrupted puts them back.
    again = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 1 and max(collections.Counter(counter.read_text().split()).values()) == 1
    status = subprocess.run([sys.executable, "-m", "durabatch", "status", str(tmp_path / "r")], env=env,
                            capture_output=True, text=True).stdout
    assert f"interrupted: {len(interrupted)}" in status
