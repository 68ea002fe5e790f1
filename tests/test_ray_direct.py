"""Heavy items on a real two-node Ray cluster (tests/cluster/ray_cluster.py): `--ray-shards actors` (each actor
writes its batches' shards into the run directory and the driver only lists them in its ledger transaction) and
`--ray-reads actors` (the driver reads only the key column; each actor reads its batches' records itself).

The evidence that the actors wrote the shards: the driver runs under RLIMIT_FSIZE (no file it writes may pass
LIMIT bytes), and shards larger than LIMIT exist; with the shards written by the driver, the same run fails.
Results equal the inline engine's; one type per result field holds across actors; the driver SIGKILLed and rerun
gives every item exactly once (the shards it never listed are adopted or removed) and `verify` is healthy.
The evidence that the actors read the records: the bytes the driver read (its rchar), with and without."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
from conftest import TESTS, cli_command, committed_rows, durabatch_cli, ledger_query, read_export, wait_until

sys.path.insert(0, str(TESTS / "cluster"))
from ray_cluster import RayCluster, module_cluster  # noqa: E402

from durabatch.core import written  # noqa: E402
from durabatch.core.committer import Committer  # noqa: E402
from durabatch.core.events import Stats  # noqa: E402
from durabatch.core.failfast import FailFast  # noqa: E402
from durabatch.engines.base import Batch, BatchResult  # noqa: E402
from durabatch.errors import ErrorKind  # noqa: E402
from durabatch.store.actor_shards import ShardWriter  # noqa: E402
from durabatch.store.ledger import Ledger  # noqa: E402
from durabatch.store.rundir import RunDir  # noqa: E402

N = 240
LIMIT = 512 * 1024  # the driver may write no file larger than this
FSIZE = "import os, resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]),) * 2); " \
        "os.execv(sys.argv[2], sys.argv[2:])"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    yield from module_cluster(tmp_path_factory.mktemp("ray"), [str(TESTS)])


def write_input(folder: Path, n: int = N) -> Path:
    path = folder / "data.jsonl"
    path.write_text("".join(json.dumps({"id": i}) + "\n" for i in range(n)))
    return path


def run_args(data: Path, run_dir: Path, fn: str, *extra: object) -> list:
    return ["run", "--input", data, "--fn", fn, "--key", "id", "--run-dir", run_dir, "--progress", "off", *extra]


def driver_command(cluster: RayCluster, *args: object) -> list[str]:
    """The CLI as a Ray driver in the cluster's namespace, unable to write a file past LIMIT bytes (the same
    process: nsenter and the wrapper exec it, so its pid is the driver's)."""
    return cluster.command([sys.executable, "-c", FSIZE, str(LIMIT), *cli_command(*args)])


def ray_run(cluster: RayCluster, *args: object) -> subprocess.CompletedProcess:
    return subprocess.run(driver_command(cluster, *args), env=cluster.driver_env(), capture_output=True, text=True,
                          timeout=300, stdin=subprocess.DEVNULL)


def shard_sizes(run_dir: Path) -> list[int]:
    return [p.stat().st_size for p in (run_dir / "shards").iterdir()]


def healthy(run_dir: Path, tmp_path: Path) -> None:
    check = durabatch_cli("verify", run_dir, cwd=tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr


def by_id(table) -> list[dict]:
    return sorted(table.to_pylist(), key=lambda row: row["id"])


@pytest.mark.slow
def test_actors_write_the_shards_and_results_equal_the_inline_engine(cluster, tmp_path):
    data = write_input(tmp_path)
    heavy = ["--param", "seconds=0.02", "--engine", "ray", "--workers", 2]
    actors = ray_run(cluster, *run_args(data, tmp_path / "actors", "rayheavyfns:heavy", *heavy,
                                        "--ray-shards", "actors"))
    assert actors.returncode == 0, actors.stderr
    assert max(shard_sizes(tmp_path / "actors")) > LIMIT  # written by the actors: the driver could not
    assert sum(shard_sizes(tmp_path / "actors")) > N * 64 * 1024
    healthy(tmp_path / "actors", tmp_path)
    inline = subprocess.run(cli_command(*run_args(data, tmp_path / "inline", "rayheavyfns:heavy")),
                            env=cluster.env(), capture_output=True, text=True, timeout=300)
    assert inline.returncode == 0, inline.stderr
    assert by_id(read_export(tmp_path / "actors", tmp_path)) == by_id(read_export(tmp_path / "inline", tmp_path))
    # The limit bites: the driver writing the same shards itself fails.
    driver = ray_run(cluster, *run_args(data, tmp_path / "driver", "rayheavyfns:heavy", *heavy))
    assert driver.returncode != 0
    assert ledger_query(tmp_path / "driver", "SELECT count(*) FROM shards")[0][0] == 0


@pytest.mark.slow
def test_one_type_per_field_holds_across_actors(cluster, tmp_path):
    # Ids below 30 give a number, the rest text: whichever actor's shard comes first, the number (fixed by id 0)
    # wins and the text rows fail with ResultTypeError, as on the inline engine.
    data = write_input(tmp_path, 120)
    actors = ray_run(cluster, *run_args(data, tmp_path / "actors", "rayheavyfns:int_then_text", "--param",
                                        "seconds=0.01", "--engine", "ray", "--workers", 2, "--ray-shards", "actors"))
    inline = subprocess.run(cli_command(*run_args(data, tmp_path / "inline", "rayheavyfns:int_then_text")),
                            env=cluster.env(), capture_output=True, text=True, timeout=300)
    assert actors.returncode == inline.returncode == 1, actors.stderr + inline.stderr
    exported = by_id(read_export(tmp_path / "actors", tmp_path))
    assert exported == by_id(read_export(tmp_path / "inline", tmp_path))
    assert [row["id"] for row in exported] == list(range(30))
    failed = ledger_query(tmp_path / "actors", "SELECT pos, error_type FROM failures ORDER BY pos")
    assert failed == [(i, "ResultTypeError") for i in range(30, 120)]
    healthy(tmp_path / "actors", tmp_path)


@pytest.mark.slow
def test_the_driver_sigkilled_and_rerun_gives_every_item_exactly_once(cluster, tmp_path):
    data = write_input(tmp_path)
    run_dir = tmp_path / "run"
    args = run_args(data, run_dir, "rayheavyfns:heavy", "--param", "kb=16", "--param", "seconds=0.02", "--engine",
                    "ray", "--workers", 2, "--ray-shards", "actors")
    driver = subprocess.Popen(driver_command(cluster, *args), env=cluster.driver_env(), stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: committed_rows(run_dir) > 0 or driver.poll() is not None, timeout=180,
                   what="a first shard listed by the Ray driver")
        assert driver.poll() is None, driver.stderr.read().decode()
        assert committed_rows(run_dir) < N  # killed mid-run
        driver.send_signal(signal.SIGKILL)
    finally:
        driver.kill()
        driver.wait()
    rerun = ray_run(cluster, *args)
    assert rerun.returncode == 0, rerun.stderr
    assert sorted(row["id"] for row in read_export(run_dir, tmp_path).to_pylist()) == list(range(N))
    assert ledger_query(run_dir, "SELECT count(*) FROM failures")[0][0] == 0
    healthy(run_dir, tmp_path)


def test_actor_shards_need_the_ray_engine(tmp_path):
    data = write_input(tmp_path, 3)
    result = durabatch_cli(*run_args(data, tmp_path / "run", "rayheavyfns:heavy", "--ray-shards", "actors"),
                           cwd=tmp_path, extra_path=[str(TESTS)])
    assert result.returncode == 2, result.stderr
    assert "--ray-shards actors needs --engine ray" in result.stderr


def test_a_shard_whose_types_conflict_is_deleted_and_its_items_run_again(tmp_path):
    # Without a cluster: the driver's side, on a real ledger and real shard files.
    rd = RunDir(tmp_path / "run")
    rd.create()
    ledger = Ledger.open(rd)
    committer = Committer(ledger, rd, "parquet", "id", ledger.start_run())
    committer.fields.join("v", pa.int64())  # fixed by an earlier shard
    writer = ShardWriter(str(rd.shards), "parquet", "id", committer.job_id)
    stats, failfast = Stats(None, 0), FailFast(0)

    # This actor's batch left before "v" was fixed: it wrote text. Never listed, deleted, run again.
    text = writer([0, 1], [0, 1], [[{"v": "a"}, {"v": "b"}]], None)
    back = written.record(committer, BatchResult(Batch(1, [0, 1], [0, 1], [{}, {}]), [None] * 2, {}, 0.1, None,
                                                 text), stats, failfast)
    assert list(rd.shards.iterdir()) == []
    assert back.batch.positions == [0, 1]
    assert [e.error_type for e in back.errors.values()] == [ErrorKind.WORKER_LOST] * 2

    # One with the driver's types: listed with its refused row in one transaction; an item error goes on.
    fine = writer([2, 3], [2, 3], [[{"v": 2}, {"v": "x"}]], committer.fields.dump())
    error = back.errors[0]
    back = written.record(committer, BatchResult(Batch(2, [2, 3, 4], [2, 3, 4], [{}, {}, {}]), [None] * 3,
                                                 {2: error}, 0.1, None, (fine[0], {1: fine[1][1]}, fine[2])),
                          stats, failfast)
    committer.close()
    assert back.batch.positions == [4] and list(back.errors) == [0]
    assert (stats.done, stats.failed) == (1, 1)
    assert ledger.done_spans() == [(2, 3)]
    assert ledger_query(rd.path, "SELECT pos, error_type FROM failures") == [(3, "ResultTypeError")]


# -- ray_reads "actors": the driver reads the keys only, each actor its batches' records -------------------------
# The evidence: the driver's own count of bytes read (rchar in /proc/self/io, printed as it exits), with the
# records read by the actors versus by the driver, on a Parquet input of heavy rows.
READS = "import atexit, runpy, sys; atexit.register(lambda: sys.stderr.write('\\nRCHAR ' + [l for l in " \
        "open('/proc/self/io') if l.startswith('rchar')][0].split()[1] + '\\n')); sys.argv = ['durabatch', " \
        "*sys.argv[1:]]; runpy.run_module('durabatch', run_name='__main__', alter_sys=True)"
HEAVY_ROWS, BLOB = 160, 256 * 1024  # 40 MB: well above what the driver reads anyway (~50 MB of imports, logs)


def bytes_read(cluster: RayCluster, *args: object) -> tuple[subprocess.CompletedProcess, int]:
    done = subprocess.run(cluster.command([sys.executable, "-c", READS, *map(str, args)]), env=cluster.driver_env(),
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    lines = [line for line in done.stderr.splitlines() if line.startswith("RCHAR ")]
    assert lines, done.stderr
    return done, int(lines[-1].split()[1])


def heavy_parquet(folder: Path) -> Path:
    import pyarrow.parquet as pq

    path = folder / "heavy.parquet"
    blobs = [random.Random(i).randbytes(BLOB) for i in range(HEAVY_ROWS)]
    pq.write_table(pa.table({"id": list(range(HEAVY_ROWS)), "blob": blobs}), path, row_group_size=8,
                   compression="none")
    return path


@pytest.mark.slow
def test_actors_read_their_records_and_the_driver_reads_only_the_keys(cluster, tmp_path):
    data = heavy_parquet(tmp_path)
    size = data.stat().st_size
    ray = ["--engine", "ray", "--workers", 2, "--param", "seconds=0.01"]
    actors, read_by_actors = bytes_read(cluster, *run_args(data, tmp_path / "actors", "rayheavyfns:digest", *ray,
                                                           "--ray-reads", "actors", "--ray-shards", "actors"))
    assert actors.returncode == 0, actors.stderr
    driver, read_by_driver = bytes_read(cluster, *run_args(data, tmp_path / "driver", "rayheavyfns:digest", *ray))
    assert driver.returncode == 0, driver.stderr
    # The driver reading the records reads the file; reading the keys, it reads a small part of it.
    assert read_by_driver - read_by_actors > 0.8 * size, (read_by_driver, read_by_actors, size)
    inline = subprocess.run(cli_command(*run_args(data, tmp_path / "inline", "rayheavyfns:digest")),
                            env=cluster.env(), capture_output=True, text=True, timeout=300)
    assert inline.returncode == 0, inline.stderr
    expected = by_id(read_export(tmp_path / "inline", tmp_path))
    assert len(expected) == HEAVY_ROWS and expected[5]["n"] == BLOB
    assert by_id(read_export(tmp_path / "actors", tmp_path)) == expected
    healthy(tmp_path / "actors", tmp_path)


@pytest.mark.slow
def test_actor_reads_keep_bad_rows_named_and_stop_on_an_input_changed_mid_run(cluster, tmp_path):
    n, bad = 200, 57
    lines = [json.dumps({"id": i, "text": "x" * i}) for i in range(n)]
    lines[bad] = '{"id": 57, "text": "cut off'  # malformed: named by its line, recorded as a failure
    data = tmp_path / "data.jsonl"
    original = "\n".join(lines) + "\n"
    data.write_text(original)
    run_dir = tmp_path / "run"
    args = run_args(data, run_dir, "rayheavyfns:text_length", "--param", "seconds=0.05", "--engine", "ray",
                    "--workers", 2, "--ray-reads", "actors", "--skip-bad-rows", "--commit-every", 10)
    driver = subprocess.Popen(cluster.command(cli_command(*args)), env=cluster.driver_env(),
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: committed_rows(run_dir) > 0 or driver.poll() is not None, timeout=180,
                   what="a first commit")
        assert committed_rows(run_dir) < n - 1, "the run ended before the input could change under it"
        with data.open("a") as f:  # the input changes under the run: the actors refuse to read it
            f.write(json.dumps({"id": n, "text": "late"}) + "\n")
        _, err = driver.communicate(timeout=180)
    finally:
        driver.kill()
    assert driver.returncode == 2, err
    assert "data.jsonl" in err and "changed" in err, err
    kept = committed_rows(run_dir)
    assert 0 < kept < n - 1
    data.write_text(original)  # restored: the same job resumes
    rerun = subprocess.run(cluster.command(cli_command(*args)), env=cluster.driver_env(), capture_output=True,
                           text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert rerun.returncode == 1, rerun.stderr  # done, with one failure: the bad row
    assert sorted(row["id"] for row in read_export(run_dir, tmp_path).to_pylist()) == \
        [i for i in range(n) if i != bad]
    failures = ledger_query(run_dir, "SELECT pos, error_type, message FROM failures")
    assert [(pos, kind) for pos, kind, _ in failures] == [(bad, "BadRow")]
    assert f"data.jsonl line {bad + 1}" in failures[0][2]


@pytest.mark.slow
def test_a_node_killed_while_actors_read_and_write_loses_nothing_and_quarantines_nothing(cluster, tmp_path):
    # Last in this file: the cluster has one node left afterwards.
    data = write_input(tmp_path)
    evidence = tmp_path / "evidence"
    evidence.mkdir()
    run_dir = tmp_path / "run"
    args = run_args(data, run_dir, "rayfns:digest", "--engine", "ray", "--workers", 2, "--param", "seconds=0.02",
                    "--param", f"evidence={evidence}", "--ray-reads", "actors", "--ray-shards", "actors")
    driver = subprocess.Popen(cluster.command(cli_command(*args)), env=cluster.driver_env(),
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: any(evidence.glob("second.*")) or driver.poll() is not None, timeout=180,
                   what="items running on the second node")
        assert driver.poll() is None, driver.stderr.read()
        cluster.kill_node("second")
        _, err = driver.communicate(timeout=240)
    finally:
        driver.kill()
    assert driver.returncode == 0, err
    assert sorted(row["id"] for row in read_export(run_dir, tmp_path).to_pylist()) == list(range(N))
    assert ledger_query(run_dir, "SELECT count(*) FROM failures")[0][0] == 0  # nothing failed or quarantined
    assert "a Ray actor was lost with its node" in (run_dir / "logs" / "run.log").read_text()
    healthy(run_dir, tmp_path)
