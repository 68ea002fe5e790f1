"""Stops always work, and nothing of a run outlives it (RELIABILITY #18, issue 10 items 9 and 10).

A call stuck in C code that releases the GIL (a sleep, a socket read, numpy): after the grace period the run
commits what is done, records the stuck items as interrupted (redone by the next run) and exits 75, whatever the
engine. A call stuck in C code that holds the GIL (a catastrophic regex in a thread) leaves no Python code able to
run in the process: the run's watchdog process ends it after the grace period, and says why. Worker processes die
with their runner, and the supervised child with its supervisor, even after a SIGKILL.

The tests wait for evidence (files a stuck call writes, named after its process), never for a fixed time."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
from conftest import committed_rows, durabatch_cli, durabatch_popen, ledger_query, read_export, wait_until

GRACE = 2
BOUND = 60  # "eventually": a generous upper bound on a loaded machine; the stuck calls last 600 s


def stuck_marks(folder: Path) -> list[tuple[int, int]]:
    """(process id, item id) of each call that got stuck so far."""
    return [tuple(map(int, p.name.split("-"))) for p in folder.iterdir()]


def interrupted(run_dir: Path) -> list[tuple[int, str]]:
    return ledger_query(run_dir, "SELECT pos, state FROM failures WHERE error_type = 'Interrupted' ORDER BY pos")


def gone(pids: list[int], timeout: float = BOUND) -> list[int]:
    """Pids still running (zombies count as gone) after waiting up to `timeout` for them to end."""
    deadline = time.monotonic() + timeout
    while True:
        alive = []
        for pid in pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
            except psutil.NoSuchProcess:
                pass
        if not alive or time.monotonic() > deadline:
            for pid in alive:  # this test's own stragglers: cleaned up before the test fails
                psutil.Process(pid).kill()
            return alive
        time.sleep(0.1)


def start(tmp_path: Path, records_file, fn: str, engine: str, workers: int, n: int = 400, stuck_from: int = 200,
          extra: tuple = ()) -> tuple[subprocess.Popen, list, Path, Path]:
    data = records_file(n)
    run_dir, marks = tmp_path / "r", tmp_path / "marks"
    marks.mkdir(exist_ok=True)
    args = ["run", "-i", data, "--key", "id", "--fn", fn, "--run-dir", run_dir, "--commit-every", "20",
            "--commit-seconds", "0.2", "--progress", "off", "--grace-seconds", str(GRACE), "--engine", engine,
            "--workers", str(workers), *extra]
    env = {"STOPS_FROM": str(stuck_from), "STOPS_MARKS": str(marks), "STOPS_ITEM_SECONDS": "0.002"}
    proc = durabatch_popen(*args, cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    return proc, args, run_dir, marks


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> tuple[str, float, list[int]]:
    """Signal the run; (stderr, seconds until it ended, pids of its descendants at the time of the signal)."""
    descendants = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
    t0 = time.monotonic()
    proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=GRACE + BOUND)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the run did not stop {GRACE + BOUND}s after {signal.Signals(sig).name} (grace {GRACE}s)")
    return err, time.monotonic() - t0, descendants


def finish_again(tmp_path: Path, args: list, run_dir: Path, n: int) -> None:
    """The same command, not stuck any more, finishes the job: every item exactly once."""
    again = durabatch_cli(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert read_export(run_dir, tmp_path).column("id").to_pylist() == list(range(n))
    assert interrupted(run_dir) == [], "an item done by the next run is no longer a failure"


@pytest.mark.parametrize(("engine", "workers"), [("threads", 2), ("inline", 1), ("processes", 2)])
def test_calls_stuck_past_the_grace_period_are_recorded_and_the_run_exits_75(tmp_path, records_file, engine,
                                                                              workers):
    n, stuck_from = 400, 200
    proc, args, run_dir, marks = start(tmp_path, records_file, "fns_stops:sleeps_from", engine, workers, n, stuck_from)
    try:
        wait_until(lambda: len(stuck_marks(marks)) >= workers, timeout=BOUND, what="every worker to be stuck")
        err, elapsed, descendants = stop(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 75, err[-3000:]
    assert elapsed < GRACE + 30, f"{elapsed:.1f}s to stop with a grace period of {GRACE}s"
    assert gone(descendants) == [], "a process of the run outlived it"
    before = committed_rows(run_dir)
    assert read_export(run_dir, tmp_path, partial=True).column("id").to_pylist() == list(range(before))
    stuck = {item for _, item in stuck_marks(marks)}
    recorded = interrupted(run_dir)
    positions = {pos for pos, _ in recorded}
    assert stuck <= positions, "the stuck calls are recorded as interrupted (with their batches' other items)"
    assert min(positions) >= before, "nothing committed is recorded as interrupted"
    assert {state for _, state in recorded} == {"pending"}, "at least once: the next run does them again"
    assert "did not return" in err and "interrupted" in err
    assert ledger_query(run_dir, "SELECT exit_code FROM runs ORDER BY id DESC LIMIT 1") == [(75,)]
    finish_again(tmp_path, args, run_dir, n)


def test_a_thread_stuck_in_c_code_holding_the_gil_cannot_stop_the_run(tmp_path, records_file):
    """A catastrophic regex holds the GIL: no signal handler, no thread of the runner runs any more. The watchdog
    process ends the run after the grace period and says why; what was committed is intact, nothing is left."""
    n = 400
    proc, args, run_dir, marks = start(tmp_path, records_file, "fns_stops:regex_from", "threads", 2, n, 200)
    try:
        wait_until(lambda: stuck_marks(marks), timeout=BOUND, what="a call to get stuck in the regex")
        err, elapsed, descendants = stop(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL, err[-3000:]
    assert elapsed < GRACE + 30, f"{elapsed:.1f}s to stop with a grace period of {GRACE}s"
    assert "holds the GIL" in err and "--engine processes" in err, err[-3000:]
    assert gone(descendants) == [], "the watchdog outlived the run"
    assert ledger_query(run_dir, "PRAGMA integrity_check") == [("ok",)]
    before = committed_rows(run_dir)
    assert read_export(run_dir, tmp_path, partial=True).column("id").to_pylist() == list(range(before))
    finish_again(tmp_path, args, run_dir, n)


def test_workers_die_with_a_killed_runner(tmp_path, records_file):
    proc, _, _, marks = start(tmp_path, records_file, "fns_stops:sleeps_from", "processes", 2)
    try:
        wait_until(lambda: len(stuck_marks(marks)) >= 2, timeout=BOUND, what="both workers to be stuck")
        workers = sorted({pid for pid, _ in stuck_marks(marks)})
        assert proc.pid not in workers
        proc.kill()
        proc.wait(timeout=BOUND)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert gone(workers) == [], "worker processes outlived their SIGKILLed runner"


def test_the_supervised_child_dies_with_a_killed_supervisor(tmp_path, records_file):
    proc, _, _, marks = start(tmp_path, records_file, "fns_stops:sleeps_from", "inline", 1, extra=("--supervise",))
    try:
        wait_until(lambda: stuck_marks(marks), timeout=BOUND, what="the supervised run to be stuck")
        [(child, _)] = stuck_marks(marks)  # inline: the call runs in the supervised child itself
        assert child != proc.pid
        proc.kill()
        proc.wait(timeout=BOUND)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert gone([child]) == [], "the supervised run outlived its SIGKILLed supervisor"
