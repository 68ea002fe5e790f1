"""Issue 13, item 2: after a kill -9 with many calls in flight, the resume runs those suspects as one group with
nothing else in flight (concurrently), not one at a time; a real poison item among them is still pinned and
quarantined after K deaths alone (one death more than before: the group's)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

FNS = '''
import asyncio, os

def _note(line):
    with open(os.environ["EVENTS"], "a") as f:
        f.write(line + "\\n")

async def held(record):
    _note(f"start {record['id']}")
    if os.environ.get("HOLD") and record["id"] >= 20:
        await asyncio.sleep(3600)  # in flight until the kill
    await asyncio.sleep(0.3)  # long enough that calls overlap whenever they are allowed to
    _note(f"end {record['id']}")
    return {"v": record["id"]}

async def aborts_on_13(record):
    await asyncio.sleep(0.01)
    if record["id"] == 13:
        os.abort()
    return {"v": record["id"]}
'''


def _setup(tmp_path: Path, n: int) -> dict:
    (tmp_path / "groupfns.py").write_text(FNS)
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"id": i}) + "\n" for i in range(n)))
    return {**os.environ, "PYTHONPATH": str(tmp_path)}


def _args(tmp_path: Path, fn: str, *more: str) -> list[str]:
    return [sys.executable, "-m", "durabatch", "run", "-i", str(tmp_path / "d.jsonl"), "--key", "id", "--fn",
            f"groupfns:{fn}", "--run-dir", str(tmp_path / "r"), "--engine", "asyncio", "--concurrency", "32",
            "--progress", "off", *more]


def _events(path: Path) -> list[tuple[str, int]]:
    if not path.exists():
        return []
    return [(kind, int(i)) for kind, i in (line.split() for line in path.read_text().splitlines() if line)]


def _exported(tmp_path: Path, failed: bool = False):
    out = tmp_path / ("f.parquet" if failed else "o.parquet")
    args = ["export", str(tmp_path / "r"), "--to", str(out)] + (["--failed"] if failed else [])
    subprocess.run([sys.executable, "-m", "durabatch", *args], check=True, capture_output=True, timeout=120)
    return pq.read_table(out)


def test_suspects_of_a_kill_replay_together_not_one_at_a_time(tmp_path):
    env = _setup(tmp_path, 100)
    first = tmp_path / "events1"
    proc = subprocess.Popen(_args(tmp_path, "held"), env={**env, "HOLD": "1", "EVENTS": str(first)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while sum(k == "start" and i >= 20 for k, i in _events(first)) < 32:  # the gate is full of held calls
            assert proc.poll() is None and time.monotonic() < deadline, "the first run never filled its slots"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    second = tmp_path / "events2"
    result = subprocess.run(_args(tmp_path, "held"), env={**env, "EVENTS": str(second)}, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "in a group with nothing else in flight" in result.stderr
    in_flight, most = 0, 0
    for kind, _ in _events(second):
        in_flight += 1 if kind == "start" else -1
        most = max(most, in_flight)
    assert most > 1, "the suspects ran one at a time"
    assert sorted(_exported(tmp_path).column("id").to_pylist()) == list(range(100))


def test_a_poison_item_in_a_group_is_still_pinned_and_quarantined(tmp_path):
    env = _setup(tmp_path, 120)
    codes = []
    for _ in range(8):
        result = subprocess.run(_args(tmp_path, "aborts_on_13", "--quarantine-after", "2"), env=env,
                                capture_output=True, text=True, timeout=300)
        codes.append(result.returncode)
        if result.returncode != -signal.SIGABRT:
            break
    # The first death (many in flight), the group's death, then K=2 deaths alone, then the finishing run.
    assert codes == [-signal.SIGABRT] * 4 + [1], (codes, result.stderr[-2000:])
    assert sorted(_exported(tmp_path).column("id").to_pylist()) == [i for i in range(120) if i != 13]
    failed = _exported(tmp_path, failed=True)
    assert failed.column("key").to_pylist() == ["13"]
    assert failed.column("state").to_pylist() == ["quarantined"]
