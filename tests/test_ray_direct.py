"""`--ray-shards actors` on a real two-node Ray cluster (tests/cluster/ray_cluster.py): each actor writes its
batches' shards into the run directory and the driver only lists them in its ledger transaction.

The evidence that the actors wrote the shards: the driver runs under RLIMIT_FSIZE (no file it writes may pass
LIMIT bytes), and shards larger than LIMIT exist; with the shards written by the driver, the same run fails.
Results equal the inline engine's; one type per result field holds across actors; the driver SIGKILLed and rerun
gives every item exactly once (the shards it never listed are adopted or removed) and `verify` is healthy."""

from __future__ import annotations

import json
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
