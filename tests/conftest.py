"""Shared helpers: write inputs, run the CLI as a real subprocess, read exports and the ledger back.

The CLI runs as `python -m durabatch ...` with this directory on PYTHONPATH, so `--fn jobs:digest` (tests/jobs.py)
and `--fn userfns:...` import in the runner and in spawned worker processes alike."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

TESTS = Path(__file__).resolve().parent


# -- a loaded machine on purpose -------------------------------------------------------------------------------------
# `pytest --busy N` (or DURABATCH_TEST_BUSY=N) starts N busy-loop processes for the whole session, so that the
# timing-sensitive tests run on a machine with no spare core: they must wait for evidence, never for a fixed time.
BUSY_LOOP = "while True:\n    pass\n"


def pytest_addoption(parser):
    parser.addoption("--busy", type=int, default=int(os.environ.get("DURABATCH_TEST_BUSY", "0") or 0),
                     metavar="N", help="run the session beside N busy-loop processes (a loaded machine)")


def pytest_configure(config):
    config._busy_loops = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP], stdin=subprocess.DEVNULL)
                          for _ in range(max(0, config.getoption("--busy")))]


def pytest_unconfigure(config):
    for proc in getattr(config, "_busy_loops", []):  # only the processes this session started, by their handle
        proc.kill()
        proc.wait()


def pytest_report_header(config):
    loops = getattr(config, "_busy_loops", [])
    return f"busy loops beside the tests: {len(loops)} (pids {[p.pid for p in loops]})" if loops else None


# -- inputs --------------------------------------------------------------------------------------------------------
def write_jsonl(path: Path, records: Iterable[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def make_records(n: int, start: int = 0) -> list[dict]:
    """N records with an integer "id" key and a little text."""
    return [{"id": i, "text": f"item-{i}"} for i in range(start, start + n)]


@pytest.fixture
def records_file(tmp_path):
    """records_file(n, name="data.jsonl") -> a JSONL file of n records {"id": i, "text": "item-i"} in tmp_path."""

    def make(n: int, name: str = "data.jsonl") -> Path:
        return write_jsonl(tmp_path / name, make_records(n))

    return make


# -- running the CLI -----------------------------------------------------------------------------------------------
def cli_env(extra_path: Path | None = None, env: Mapping[str, str] | None = None) -> dict:
    """The environment for a CLI subprocess: tests/ (and extra_path) importable, plus `env` overrides."""
    paths = [str(TESTS)] + ([str(extra_path)] if extra_path else [])
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), **(env or {})}


def cli_command(*args) -> list[str]:
    return [sys.executable, "-m", "durabatch", *map(str, args)]


def durabatch_cli(*args, cwd, extra_path=None, env=None, timeout=180, **kwargs) -> subprocess.CompletedProcess:
    """Run the CLI to the end; stdout and stderr captured as text."""
    return subprocess.run(cli_command(*args), cwd=cwd, env=cli_env(extra_path, env), capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL, **kwargs)


def durabatch_popen(*args, cwd, extra_path=None, env=None, **kwargs) -> subprocess.Popen:
    """Start the CLI and return at once (to signal it). Output goes where kwargs say (inherited by default)."""
    kwargs.setdefault("stdin", subprocess.DEVNULL)
    return subprocess.Popen(cli_command(*args), cwd=cwd, env=cli_env(extra_path, env), **kwargs)


def wait_until(predicate: Callable[[], object], timeout: float = 30.0, interval: float = 0.02,
               what: str = "condition") -> object:
    """Poll until predicate() is truthy and return its value; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def signal_pending(pid: int, sig: int) -> bool:
    """Whether `sig` sent to process `pid` still waits to be delivered (kill() marks it pending before it returns;
    the kernel clears the mark when one of the process's threads runs the handler). A process that is gone has
    nothing pending. Evidence that a first signal was taken before a second one is sent (two pending signals of
    the same kind merge into one)."""
    bit = 1 << (int(sig) - 1)
    proc = Path("/proc") / str(pid)


    def masks(status: Path, field: str) -> list[int]:
        try:
            return [int(line.split()[1], 16) for line in status.read_text().splitlines() if line.startswith(field)]
        except (FileNotFoundError, ProcessLookupError):  # gone (a thread ends, or the whole process)
            return []

    try:
        tasks = list((proc / "task").iterdir())
    except (FileNotFoundError, ProcessLookupError):
        return False
    pending = masks(proc / "status", "ShdPnd:") + [m for t in tasks for m in masks(t / "status", "SigPnd:")]
    return any(m & bit for m in pending)


def wait_signal_taken(proc: subprocess.Popen, sig: int, timeout: float = 120.0) -> None:
    """Wait until a signal sent to `proc` has been delivered (see signal_pending)."""
    wait_until(lambda: not signal_pending(proc.pid, sig), timeout=timeout, interval=0.005,
               what=f"signal {sig} to be delivered to pid {proc.pid}")


def log_has(path: Path, text: str) -> bool:
    """Whether the (line-buffered) log file at `path` contains `text` yet."""
    try:
        return text in Path(path).read_text(errors="replace")
    except FileNotFoundError:
        return False


# -- reading results back ------------------------------------------------------------------------------------------
def read_export(run_dir: Path, tmp_path: Path, failed: bool = False, suffix: str = ".parquet",
                partial: bool = False) -> pa.Table:
    """`durabatch export RUN_DIR --to ...` (with --failed if asked; --partial for a job stopped on purpose before
    its end) as a real subprocess, read back with pyarrow."""
    out = tmp_path / f"export{'-failed' if failed else ''}{suffix}"
    result = durabatch_cli("export", run_dir, "--to", out, *(["--failed"] if failed else []),
                           *(["--partial"] if partial else []), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    if suffix == ".parquet":
        return pq.read_table(out)
    rows = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    return pa.Table.from_pylist(rows)


def export_ids(run_dir: Path, tmp_path: Path, column: str = "id", partial: bool = False) -> list:
    """The key column of the export, in export order."""
    return read_export(run_dir, tmp_path, partial=partial).column(column).to_pylist()


def ledger_query(run_dir: Path, sql: str, params: tuple = ()) -> list[tuple]:
    """A query on run_dir/ledger.sqlite opened read-only, as `status` does (never changes the ledger)."""
    conn = sqlite3.connect(f"file:{Path(run_dir) / 'ledger.sqlite'}?mode=ro", uri=True)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def committed_rows(run_dir: Path) -> int:
    """Items committed so far according to the ledger (0 when there is no ledger yet)."""
    if not (Path(run_dir) / "ledger.sqlite").exists():
        return 0
    try:
        return int(ledger_query(run_dir, "SELECT coalesce(sum(rows), 0) FROM shards")[0][0])
    except sqlite3.OperationalError:  # being created right now
        return 0
