"""kill -9 at random moments, again and again, re-running the same command each time: after every kill the ledger
is sound (integrity check, every listed shard present and intact, no position listed twice), crash leftovers do
not survive the next resume, and the final export has every key exactly once, equal to a reference loop.
SIGTERM and Ctrl-C stop cleanly with exit 75 and the same command resumes; a second signal stops at once."""

from __future__ import annotations

import contextlib
import hashlib
import random
import shutil
import signal
import sqlite3
import subprocess
import time
from array import array
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest
from conftest import (
    committed_rows,
    durabatch_cli,
    durabatch_popen,
    ledger_query,
    log_has,
    read_export,
    wait_signal_taken,
    wait_until,
)

N = 20_000
# The kill schedule is seeded (engine, kind of kill, commits to wait for, delay): its first 16 rounds already have
# every engine change and kind of kill that rounds 17-22 of the former 22 had (~1.7 s a round, in each variant).
KILLS = 16
SLOW = {"JOBS_ITEM_SECONDS": "0.003"}  # ~3 ms an item: the 20,000-item job takes a minute, kills land mid-run
FAST = {"JOBS_ITEM_SECONDS": "0"}  # the speed is not part of the job: the final run finishes it quickly


def reference(n: int) -> list[str]:
    """The reference loop: what the job must produce, computed here without durabatch."""
    return [hashlib.blake2b(str(i).encode(), digest_size=16).hexdigest() for i in range(n)]


# -- ledger invariants, read straight from SQLite and the shard directory ------------------------------------------
def decode_spans(blob: bytes) -> list[tuple[int, int]]:
    flat = array("q")
    flat.frombytes(blob)
    return list(zip(flat[::2], flat[1::2], strict=True))


def shard_rows(path: Path) -> int:
    if path.suffix == ".parquet":
        return pq.read_metadata(path).num_rows
    return sum(1 for line in path.read_text().splitlines() if line.strip())


def check_ledger(run_dir: Path, n: int) -> tuple[set[str], set[str], int]:
    """Assert the ledger's invariants; return (listed shards, unlisted files in shards/, items done)."""
    shards_dir = run_dir / "shards"
    on_disk = {p.name for p in shards_dir.iterdir()} if shards_dir.exists() else set()
    if not (run_dir / "ledger.sqlite").exists():  # killed before the ledger was in place: nothing committed
        return set(), on_disk, 0
    conn = sqlite3.connect(f"file:{run_dir / 'ledger.sqlite'}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = conn.execute("SELECT name, rows, bytes, checksum, positions FROM shards").fetchall()
        failures = conn.execute("SELECT count(*) FROM failures").fetchone()[0]
    finally:
        conn.close()
    assert failures == 0, "a kill was recorded as an item failure"
    listed = {name for name, *_ in rows}
    assert listed <= on_disk, f"listed shards missing from {shards_dir}: {sorted(listed - on_disk)}"
    spans = []
    for name, count, size, checksum, blob in rows:
        path = shards_dir / name
        data = path.read_bytes()
        assert len(data) == size, f"{name}: {len(data)} bytes on disk, ledger says {size}"
        assert hashlib.blake2b(data, digest_size=16).hexdigest() == checksum, f"{name}: checksum differs"
        assert shard_rows(path) == count, f"{name}: row count differs from the ledger"
        these = decode_spans(blob)
        assert sum(e - s for s, e in these) == count, f"{name}: positions and rows disagree"
        spans.extend(these)
    spans.sort()
    for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
        assert end <= start, f"a position is listed in two shards: spans {spans}"
    assert all(0 <= s < e <= n for s, e in spans)
    return listed, on_disk - listed, sum(e - s for s, e in spans)


def plant_orphans(run_dir: Path, listed: set[str]) -> set[str]:
    """What a crash between shard rename and ledger commit leaves: a complete shard file the ledger does not list
    (here a copy of a listed one, so keeping it would duplicate keys), plus a half-written temporary file."""
    source = run_dir / "shards" / sorted(listed)[0]
    copy = f"{source.name.split('-')[0]}-0dd0dd00{source.suffix}"
    tmp = f".tmp-{source.name.split('-')[0]}-0dd0dd01{source.suffix}"
    shutil.copyfile(source, run_dir / "shards" / copy)
    (run_dir / "shards" / tmp).write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    return {copy, tmp}


def sigkill_runner(proc: subprocess.Popen) -> list[psutil.Process]:
    """SIGKILL the runner only (as `kill -9 PID` does); return its child processes (workers) at that moment."""
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    return children


def has_exited(p: psutil.Process) -> bool:
    """Whether a process has exited: gone, or a zombie. An orphan's exit is reaped by its new parent (init) when
    init gets round to it, seconds later on some machines: a zombie has ended all the same (psutil.wait_procs
    waits for the reaping, which says nothing about the process)."""
    try:
        return not p.is_running() or p.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def still_running(children: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait up to `timeout` seconds for the processes to exit; those still running then, killed (ours)."""
    deadline = time.monotonic() + timeout
    alive = [p for p in children if not has_exited(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.02)
        alive = [p for p in alive if not has_exited(p)]
    for p in alive:  # our own stragglers: clean up before failing
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    return alive


def assert_children_exit(children: list[psutil.Process], timeout: float = 60.0) -> None:
    """Worker processes must not outlive a killed runner for long (they read EOF from its pipe and leave)."""
    alive = still_running(children, timeout)
    assert not alive, f"worker processes outlived the killed runner: {[p.pid for p in alive]}"


# -- the kill test -------------------------------------------------------------------------------------------------
VARIANTS = {
    # per-record function; each run picks its engine: the engine may change on resume, the results may not
    "per-record-mixed-engines": dict(fn="jobs:slow_digest", extra=[], engines=["inline", "threads", "threads",
                                                                               "processes"], seed=2026),
    # batch function, JSONL shards, two threads or two processes
    "batch-jsonl": dict(fn="jobs:slow_digest_batch", extra=["--batch-size", "16", "--format", "jsonl"],
                        engines=["threads", "threads", "processes"], seed=7),
}


@pytest.mark.slow
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_random_sigkills_lose_and_duplicate_nothing(tmp_path, records_file, variant):
    spec = VARIANTS[variant]
    data = records_file(N)
    run_dir = tmp_path / "r"
    base = ["run", "-i", data, "--key", "id", "--fn", spec["fn"], "--run-dir", run_dir, "--commit-every", "250",
            "--commit-seconds", "0.2", "--progress", "plain", *spec["extra"]]
    rng = random.Random(spec["seed"])
    leftovers: set[str] = set()  # unlisted files seen after a kill: the next resume must remove them
    planted = 0
    history = []
    for i in range(KILLS):
        engine = rng.choice(spec["engines"])
        workers = "1" if engine == "inline" else "2"
        listed_before, _, done_before = check_ledger(run_dir, N) if run_dir.exists() else (set(), set(), 0)
        # Two kinds of kill. Most wait for evidence: this run has committed `more` items beyond what was done
        # (however long its start-up took), then it dies a random moment after that, mid-batch or mid-commit.
        # Every third lands at a random moment from the start, start-up included; nothing below depends on
        # where those land (on a busy machine they often hit the start-up).
        after_commit = i % 3 != 1
        more = rng.randint(1, 300)
        delay = rng.uniform(0.0, 0.3) if after_commit else rng.uniform(0.05, 1.0)
        log_path = tmp_path / f"run-{i}.log"
        with open(log_path, "w") as log:
            proc = durabatch_popen(*base, "--engine", engine, "--workers", workers, cwd=tmp_path, env=SLOW,
                                   stdout=log, stderr=subprocess.STDOUT)
            try:
                if after_commit:
                    target = done_before + more
                    wait_until(lambda p=proc, t=target: p.poll() is not None or committed_rows(run_dir) >= t,
                               timeout=300, what=f"run {i} to commit {more} more items")
                    assert proc.poll() is None, f"run {i} ended by itself: {log_path.read_text()}"
                time.sleep(delay)
            finally:
                children = sigkill_runner(proc)
        assert proc.returncode == -signal.SIGKILL, log_path.read_text()
        assert_children_exit(children)
        listed, unlisted, done = check_ledger(run_dir, N)
        if listed - listed_before:  # this run got past its start-up and committed: older leftovers are gone
            survivors = leftovers & unlisted
            assert not survivors, f"crash leftovers survived a resume: {sorted(survivors)}"
            leftovers = set()
        leftovers |= unlisted
        if listed and ((planted == 0 and i >= 4) or (planted == 1 and i >= 13)):
            leftovers |= plant_orphans(run_dir, listed)
            planted += 1
        if after_commit:
            assert done >= done_before + more, f"run {i}: the commit seen before the kill is lost: {history}"
        history.append((engine, "after-commit" if after_commit else "any-time", round(delay, 2), done))
    done_before_final = history[-1][-1]
    assert 0 < done_before_final < N, f"the kills did not land mid-run: {history}"
    assert len({d for *_, d in history}) >= 6, f"too little progress between kills: {history}"
    assert planted >= 1

    final = durabatch_cli(*base, "--engine", "threads", "--workers", "2", cwd=tmp_path, env=FAST)
    assert final.returncode == 0, final.stderr
    assert f"resuming: {done_before_final:,} items already done" in final.stderr
    listed, unlisted, done = check_ledger(run_dir, N)
    assert not unlisted, f"crash leftovers survived the final run: {sorted(unlisted)}"
    assert done == N
    table = read_export(run_dir, tmp_path)
    assert table.column("id").to_pylist() == list(range(N))  # every key exactly once, in source order
    assert table.column("digest").to_pylist() == reference(N)


def test_a_ledger_killed_while_being_created_is_created_again(tmp_path, records_file):
    """What a kill during the ledger's creation leaves (a half-written database under its temporary name, and its
    rollback journal) is not called corrupt: the next run creates the ledger again."""
    data = records_file(500)
    run_dir = tmp_path / "r"
    (run_dir / "shards").mkdir(parents=True)
    (run_dir / "ledger.sqlite.init").write_bytes(b"SQLite format 3\x00" + b"\x00" * 100)
    (run_dir / "ledger.sqlite.init-journal").write_bytes(b"\xd9\xd5\x05\xf9\x20\xa1\x63\xd7" + b"\x00" * 500)
    result = durabatch_cli("run", "-i", data, "--key", "id", "--fn", "jobs:digest", "--run-dir", run_dir,
                           "--progress", "off", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert ledger_query(run_dir, "PRAGMA integrity_check") == [("ok",)]
    assert read_export(run_dir, tmp_path).column("digest").to_pylist() == reference(500)


# -- stopping with a signal ----------------------------------------------------------------------------------------
STOP_CASES = [
    pytest.param(signal.SIGTERM, "inline", id="SIGTERM-inline"),
    pytest.param(signal.SIGTERM, "processes", id="SIGTERM-processes", marks=pytest.mark.slow),
    pytest.param(signal.SIGINT, "threads", id="SIGINT-threads"),
    pytest.param(signal.SIGINT, "inline", id="SIGINT-inline", marks=pytest.mark.slow),
    pytest.param(signal.SIGUSR1, "threads", id="SIGUSR1-threads"),  # Slurm's warning signal
]


@pytest.mark.parametrize(("sig", "engine"), STOP_CASES)
def test_stop_signal_exits_75_and_the_same_command_resumes(tmp_path, records_file, sig, engine):
    n = 3000
    data = records_file(n)
    run_dir = tmp_path / "r"
    args = ["run", "-i", data, "--key", "id", "--fn", "jobs:slow_digest", "--run-dir", run_dir, "--commit-every",
            "100", "--progress", "plain", "--engine", engine, "--workers", "1" if engine == "inline" else "2"]
    proc = durabatch_popen(*args, cwd=tmp_path, env={"JOBS_ITEM_SECONDS": "0.004"}, stderr=subprocess.PIPE,
                           text=True)
    try:
        wait_until(lambda: committed_rows(run_dir) > 0, timeout=60, what="a first commit")
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 75, err
    assert "run the same command again" in err.lower()
    before = committed_rows(run_dir)
    assert 0 < before < n, "the signal did not stop the run early"
    assert ledger_query(run_dir, "SELECT exit_code FROM runs ORDER BY id DESC LIMIT 1") == [(75,)]

    again = durabatch_cli(*args, cwd=tmp_path, env={"JOBS_ITEM_SECONDS": "0"})
    assert again.returncode == 0, again.stderr
    assert f"resuming: {before:,} items already done" in again.stderr
    table = read_export(run_dir, tmp_path)
    assert table.column("id").to_pylist() == list(range(n))
    assert table.column("digest").to_pylist() == reference(n)


SECOND_SIGNAL_CASES = [
    pytest.param(signal.SIGINT, "threads", id="SIGINT-threads"),
    pytest.param(signal.SIGTERM, "inline", id="SIGTERM-inline"),
    pytest.param(signal.SIGINT, "processes", id="SIGINT-processes"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "engine"), SECOND_SIGNAL_CASES)
def test_second_signal_during_the_grace_period_stops_at_once(tmp_path, records_file, sig, engine):
    """The job runs 200 items fast, then sits in 10-minute calls. The first signal waits for them (grace 5 min);
    the second exits 75 at once, keeping what was committed, and the same command later finishes the job,
    exactly once. The times are long so that "at once" (under a minute) cannot be confused with the end of the
    grace period, however busy the machine."""
    n, fast = 400, 200
    data = records_file(n)
    run_dir = tmp_path / "r"
    mark = tmp_path / "stuck"
    args = ["run", "-i", data, "--key", "id", "--fn", "jobs:stuck_from", "--run-dir", run_dir, "--commit-every",
            "20", "--commit-seconds", "0.2", "--progress", "off", "--grace-seconds", "300", "--engine", engine,
            "--workers", "1" if engine == "inline" else "2"]
    stuck = {"JOBS_STUCK_FROM": str(fast), "JOBS_STUCK_SECONDS": "600", "JOBS_STUCK_MARK": str(mark)}
    proc = durabatch_popen(*args, cwd=tmp_path, env=stuck, stderr=subprocess.PIPE, text=True)
    children: list[psutil.Process] = []
    try:
        wait_until(mark.exists, timeout=120, what="a call to get stuck")
        # the fast items that came back are committed (every 0.2 s)
        wait_until(lambda: committed_rows(run_dir) > 0, timeout=120, what="the fast items' commit")
        children = psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(sig)
        # Evidence that the handler ran, not only that the kernel delivered the signal: two signals that come
        # before Python runs its handler are one signal to it. (Inline, a thread says so: the call holds the loop.)
        wait_until(lambda: log_has(run_dir / "logs" / "run.log", "press Ctrl-C again"), timeout=120,
                   what="the run to announce the warm stop")
        assert proc.poll() is None, "the first signal should wait for the calls in flight (grace period 5 min)"
        t0 = time.monotonic()
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=240)
        elapsed = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
        alive = still_running(children, timeout=60)  # stuck worker processes of ours: never left sleeping
    assert proc.returncode == 75, err
    assert elapsed < 60, f"the second signal took {elapsed:.1f}s to stop the run (calls take 600 s, grace 300 s)"
    assert not alive, f"stuck worker processes outlived the run: {[p.pid for p in alive]}"
    before = committed_rows(run_dir)
    assert 0 < before <= fast  # the stuck calls never finished, so none of them is committed
    assert read_export(run_dir, tmp_path, partial=True).column("id").to_pylist() == list(range(before))

    again = durabatch_cli(*args, cwd=tmp_path)  # not stuck any more
    assert again.returncode == 0, again.stderr
    assert f"resuming: {before:,} items already done" in again.stderr
    table = read_export(run_dir, tmp_path)
    assert table.column("id").to_pylist() == list(range(n))
    assert table.column("digest").to_pylist() == reference(n)


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "engine"), [pytest.param(signal.SIGTERM, "inline", id="SIGTERM-inline"),
                                             pytest.param(signal.SIGINT, "threads", id="SIGINT-threads"),
                                             pytest.param(signal.SIGTERM, "processes", id="SIGTERM-processes")])
def test_stop_signal_while_the_function_sets_up_exits_75(tmp_path, records_file, sig, engine):
    """A model loading in setup() takes seconds: Ctrl-C or SIGTERM then is still a resumable stop (exit 75), not
    a death by signal or a KeyboardInterrupt exit. setup() lasts until the test opens its gate, after the signal
    was delivered: the signal certainly lands while it runs (no fixed setup time to outlast the signal)."""
    data = records_file(100)
    run_dir = tmp_path / "r"
    mark, gate = tmp_path / "setup-started", tmp_path / "setup-may-end"
    args = ["run", "-i", data, "--key", "id", "--fn", "jobs:SlowSetup", "--run-dir", run_dir, "--progress", "off",
            "--engine", engine, "--workers", "1" if engine == "inline" else "2"]
    proc = durabatch_popen(*args, cwd=tmp_path, env={"JOBS_SETUP_SECONDS": "120", "JOBS_SETUP_MARK": str(mark),
                                                     "JOBS_SETUP_GATE": str(gate)},
                           stderr=subprocess.PIPE, text=True)
    try:
        wait_until(mark.exists, timeout=120, what="setup() to start")
        proc.send_signal(sig)
        wait_signal_taken(proc, sig)  # the runner has the signal while setup() still runs
        gate.touch()
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 75, f"exit code {proc.returncode}; stderr: {err[-2000:]}"
    assert "Traceback" not in err
    again = durabatch_cli(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert read_export(run_dir, tmp_path).column("id").to_pylist() == list(range(100))


@pytest.mark.slow
def test_second_ctrl_c_while_the_function_sets_up_stops_at_once(tmp_path, records_file):
    """Ctrl-C twice while a model loads: no waiting for setup() to finish, exit 75, no traceback from a worker."""
    data = records_file(100)
    run_dir = tmp_path / "r"
    mark = tmp_path / "setup-started"
    args = ["run", "-i", data, "--key", "id", "--fn", "jobs:SlowSetup", "--run-dir", run_dir, "--progress", "off",
            "--engine", "threads", "--workers", "2"]
    proc = durabatch_popen(*args, cwd=tmp_path, env={"JOBS_SETUP_SECONDS": "300", "JOBS_SETUP_MARK": str(mark)},
                           stderr=subprocess.PIPE, text=True)
    try:
        wait_until(mark.exists, timeout=120, what="setup() to start")
        proc.send_signal(signal.SIGINT)
        # handled (not only delivered): two signals that come before Python runs its handler are one to it
        wait_until(lambda: log_has(run_dir / "logs" / "run.log", "press Ctrl-C again"), timeout=120,
                   what="the run to announce the warm stop")
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=240)
        elapsed = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 75, f"exit code {proc.returncode}; stderr: {err[-2000:]}"
    assert elapsed < 60, f"the second Ctrl-C took {elapsed:.1f}s (setup() takes 300 s, grace 30 s)"
    assert "Traceback" not in err and "BrokenBarrierError" not in err, err[-2000:]
