"""Crash injection at every step of the commit path (shard write, fsync, rename, directory fsync, each SQL
statement of the ledger transaction), SQLite-style: for k = 1, 2, ... the job really dies (os._exit in a forked
child) at its k-th I/O event; a normal re-run must then leave every key exactly once, no orphan, a sound ledger."""

from __future__ import annotations

import os
import sqlite3

import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import durabatch
from durabatch.store import ledger as ledger_mod

CRASHED = 77


def double(record: dict) -> dict:
    if record["id"] % 13 == 5:
        raise ValueError("unlucky")  # failures take the same commit path
    return {"double": record["id"] * 2}


def _run_with_crash_at(k: int, run_dir: str, n: int, commit_every: int, workers: int) -> int:
    """Fork a child that dies at its k-th I/O event; return the child's exit status."""
    pid = os.fork()
    if pid == 0:  # the child: count events, die abruptly at the k-th
        try:
            count = [0]

            def event() -> None:
                count[0] += 1
                if count[0] == k:
                    os._exit(CRASHED)

            real_write, real_fsync, real_replace = os.write, os.fsync, os.replace
            os.write = lambda fd, data: (event(), real_write(fd, data))[1]
            os.fsync = lambda fd: (event(), real_fsync(fd))[1]
            os.replace = lambda a, b: (event(), real_replace(a, b))[1]
            real_connect = sqlite3.connect

            def connect(*args, **kwargs):
                conn = real_connect(*args, **kwargs)
                conn.set_trace_callback(lambda sql: event() if sql.split()[0] in ("INSERT", "DELETE", "COMMIT")
                                        else None)
                return conn

            ledger_mod.sqlite3.connect = connect
            records = [{"id": i} for i in range(n)]
            summary = durabatch.run(double, records, key="id", run_dir=run_dir, commit_every=commit_every,
                                    workers=workers, progress="off")
            os._exit(summary.exit_code)
        except BaseException:  # noqa: BLE001
            os._exit(99)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _check_invariants(run_dir: str) -> None:
    conn = sqlite3.connect(os.path.join(run_dir, "ledger.sqlite"))
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    listed = {row[0] for row in conn.execute("SELECT name FROM shards")}
    conn.close()
    on_disk = set(os.listdir(os.path.join(run_dir, "shards")))
    assert listed == on_disk, f"orphans or missing shards: listed={listed} on_disk={on_disk}"


@pytest.mark.slow  # every crash point, each a run and a resume
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(k=st.integers(min_value=1, max_value=60), commit_every=st.sampled_from([1, 3, 7, 50]),
       workers=st.sampled_from([1, 2]), second_crash=st.integers(min_value=0, max_value=30))
def test_crash_at_any_commit_step_loses_and_duplicates_nothing(tmp_path_factory, k, commit_every, workers,
                                                              second_crash):
    n = 40
    run_dir = str(tmp_path_factory.mktemp("run"))
    code = _run_with_crash_at(k, run_dir, n, commit_every, workers)
    assert code in (CRASHED, 1), f"child ended with {code}"
    if second_crash and code == CRASHED:  # crash again during the recovery run
        code = _run_with_crash_at(second_crash, run_dir, n, commit_every, workers)
        assert code in (CRASHED, 1)
    summary = durabatch.run(double, [{"id": i} for i in range(n)], key="id", run_dir=run_dir,
                            commit_every=commit_every, progress="off")
    assert summary.exit_code == 1  # the unlucky ids failed, everything else is done
    _check_invariants(run_dir)
    out = os.path.join(run_dir, "out.parquet")
    durabatch.export(run_dir, to=out)
    table = pq.read_table(out)
    expected = [i for i in range(n) if i % 13 != 5]
    assert table.column("id").to_pylist() == expected
    assert table.column("double").to_pylist() == [i * 2 for i in expected]
    failed = os.path.join(run_dir, "failed.parquet")
    durabatch.export(run_dir, to=failed, failed=True)
    assert sorted(int(k) for k in pq.read_table(failed).column("key").to_pylist()) == [
        i for i in range(n) if i % 13 == 5]
