"""The Ray engine on a real two-node Ray cluster (head + one more `ray start`, both on loopback inside a private
network namespace; tests/cluster/ray_cluster.py). The driver is the real CLI, run inside the same namespace.

Results equal the inline engine's; a node killed mid-run costs nothing but a redo (exactly once, nothing
quarantined); the driver SIGKILLed and rerun resumes exactly once; an item that kills its actor is quarantined
after K deaths while everything else is done; a changed job is refused."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TESTS, cli_command, committed_rows, export_ids, ledger_query, log_has, read_export, wait_until

sys.path.insert(0, str(TESTS / "cluster"))
from ray_cluster import RayCluster, module_cluster  # noqa: E402

from durabatch.core.outcomes import Action, Rules, decide  # noqa: E402
from durabatch.errors import ConfigError, ErrorKind, ItemError  # noqa: E402
from durabatch.policies.retry import RetryPolicy  # noqa: E402

N = 400


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    yield from module_cluster(tmp_path_factory.mktemp("ray"), [str(TESTS)])


def write_input(folder: Path, n: int = N) -> Path:
    path = folder / "data.jsonl"
    path.write_text("".join(json.dumps({"id": i, "text": f"item-{i}"}) + "\n" for i in range(n)))
    return path


def run_args(data: Path, run_dir: Path, fn: str = "rayfns:digest", *extra: object) -> list:
    return ["run", "--input", data, "--fn", fn, "--key", "id", "--run-dir", run_dir, "--progress", "off", *extra]


def ray_run(cluster: RayCluster, *args: object, timeout: float = 240, **env: str) -> subprocess.CompletedProcess:
    """The CLI as a driver inside the cluster's namespace, to the end (`env`: more of the driver's variables)."""
    return subprocess.run(cluster.command(cli_command(*args)), env=cluster.driver_env(**env), capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def ray_popen(cluster: RayCluster, *args: object) -> subprocess.Popen:
    return subprocess.Popen(cluster.command(cli_command(*args)), env=cluster.driver_env(), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def evidence_lines(folder: Path, node: str) -> int:
    return sum(len(p.read_text().splitlines()) for p in folder.glob(f"{node}.*"))


def failures(run_dir: Path) -> list[tuple]:
    return ledger_query(run_dir, "SELECT key, state FROM failures ORDER BY pos")


@pytest.mark.slow
def test_results_equal_the_inline_engine_and_both_nodes_work(cluster, tmp_path):
    data = write_input(tmp_path)
    evidence = tmp_path / "evidence"
    evidence.mkdir()
    params = ["--param", "seconds=0.002", "--param", f"evidence={evidence}"]
    ray = ray_run(cluster, *run_args(data, tmp_path / "ray", "rayfns:digest", "--engine", "ray", "--workers", 2,
                                     *params))
    assert ray.returncode == 0, ray.stderr
    inline = ray_run(cluster, *run_args(data, tmp_path / "inline", "rayfns:digest", *params))
    assert inline.returncode == 0, inline.stderr
    assert read_export(tmp_path / "ray", tmp_path).to_pylist() == read_export(tmp_path / "inline", tmp_path).to_pylist()
    assert evidence_lines(evidence, "head") > 0 and evidence_lines(evidence, "second") > 0  # spread on both nodes

    # The same run directory with a changed job: refused, exit 2, with the diff.
    changed = ray_run(cluster, *run_args(data, tmp_path / "ray", "rayfns:crashes_on_13", "--engine", "ray"))
    assert changed.returncode == 2, changed.stderr
    assert "crashes_on_13" in changed.stderr
    # More actors than the cluster can ever place: refused at once (exit 2), naming what it has, not a hang.
    too_many = ray_run(cluster, *run_args(data, tmp_path / "too-many", "rayfns:digest", "--engine", "ray",
                                          "--workers", 9))
    assert too_many.returncode == 2, too_many.stderr
    assert "needs 9 CPU, the Ray cluster has 4" in too_many.stderr


MAIN_SCRIPT = """
import sys
import durabatch

def double(record):
    return {"double": record["id"] * 2}

if __name__ == "__main__":
    summary = durabatch.run(double, [{"id": i} for i in range(50)], key="id", run_dir=sys.argv[1], engine="ray",
                            workers=2, progress="off")
    sys.exit(summary.exit_code)
"""


@pytest.mark.slow
def test_a_function_of_the_main_script_runs_on_the_actors(cluster, tmp_path):
    # Not importable on the nodes: it travels by value (the library API, as in a notebook).
    script = tmp_path / "job.py"
    script.write_text(MAIN_SCRIPT)
    result = subprocess.run(cluster.command([sys.executable, str(script), str(tmp_path / "run")]),
                            env=cluster.driver_env(), capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    table = read_export(tmp_path / "run", tmp_path)
    assert sorted(zip(table.column("id").to_pylist(), table.column("double").to_pylist(), strict=True)) == \
        [(i, 2 * i) for i in range(50)]


@pytest.mark.slow
def test_ray_env_passes_the_drivers_variables_to_actors_on_every_node(cluster, tmp_path):
    # An API key exported where the driver runs: without --ray-env, actors see their node's environment only.
    data = write_input(tmp_path, 40)
    secret = {"DURABATCH_TEST_SECRET": "sk-driver-only-1234"}
    rows = {}
    for name, extra in (("plain", ()), ("passed", ("--ray-env", "DURABATCH_TEST_SECRET,HOME"))):
        result = ray_run(cluster, *run_args(data, tmp_path / name, "rayfns:environment", "--engine", "ray",
                                            "--workers", "2", *extra), **secret)
        assert result.returncode == 0, result.stderr
        rows[name] = read_export(tmp_path / name, tmp_path).to_pylist()
    assert {row["secret"] for row in rows["plain"]} == {None}
    assert {row["secret"] for row in rows["passed"]} == {"sk-driver-only-1234"}
    assert {row["node"] for row in rows["passed"]} == {"head", "second"}  # the actors of both nodes got it
    missing = ray_run(cluster, *run_args(data, tmp_path / "missing", "rayfns:environment", "--engine", "ray",
                                         "--ray-env", "NOT_SET_ANYWHERE"), **secret)
    assert missing.returncode == 2 and "NOT_SET_ANYWHERE not set" in missing.stderr, missing.stderr


@pytest.mark.slow
def test_an_item_that_kills_its_actor_is_quarantined_after_k_deaths(cluster, tmp_path):
    data = write_input(tmp_path, 60)
    result = ray_run(cluster, *run_args(data, tmp_path / "run", "rayfns:crashes_on_13", "--engine", "ray",
                                        "--workers", 2, "--quarantine-after", 2))
    assert result.returncode == 1, result.stderr
    assert failures(tmp_path / "run") == [("13", "quarantined")]
    assert sorted(export_ids(tmp_path / "run", tmp_path)) == [i for i in range(60) if i != 13]


@pytest.mark.slow
def test_the_driver_sigkilled_and_rerun_resumes_exactly_once(cluster, tmp_path):
    data = write_input(tmp_path)
    run_dir = tmp_path / "run"
    args = run_args(data, run_dir, "rayfns:digest", "--engine", "ray", "--workers", 2, "--param", "seconds=0.01",
                    "--commit-seconds", 0.5)
    driver = ray_popen(cluster, *args)
    try:
        wait_until(lambda: committed_rows(run_dir) > 0 or driver.poll() is not None, timeout=180,
                   what="a first commit by the Ray driver")
        assert driver.poll() is None, driver.stderr.read().decode()
        assert committed_rows(run_dir) < N  # killed mid-run
        driver.send_signal(signal.SIGKILL)  # nsenter execs the driver: this pid is the driver itself
    finally:
        driver.kill()
        driver.wait()
    rerun = ray_run(cluster, *args)
    assert rerun.returncode == 0, rerun.stderr
    ids = export_ids(run_dir, tmp_path)
    assert sorted(ids) == list(range(N))
    assert failures(run_dir) == []


@pytest.mark.slow
def test_a_node_killed_mid_run_loses_nothing_and_quarantines_nothing(cluster, tmp_path):
    # Last in this file: the cluster has one node left afterwards.
    data = write_input(tmp_path)
    evidence = tmp_path / "evidence"
    evidence.mkdir()
    run_dir = tmp_path / "run"
    driver = ray_popen(cluster, *run_args(data, run_dir, "rayfns:digest", "--engine", "ray", "--workers", 2,
                                          "--param", "seconds=0.02", "--param", f"evidence={evidence}"))
    try:
        wait_until(lambda: evidence_lines(evidence, "second") > 0 or driver.poll() is not None, timeout=180,
                   what="items running on the second node")
        assert driver.poll() is None, driver.stderr.read().decode()
        cluster.kill_node("second")
        ran_on_head = evidence_lines(evidence, "head")
        code = driver.wait(timeout=240)
        stderr = driver.stderr.read().decode()
    finally:
        driver.kill()
        driver.wait()
    assert code == 0, stderr
    assert sorted(export_ids(run_dir, tmp_path)) == list(range(N))  # exactly once
    assert failures(run_dir) == []  # nothing failed, nothing quarantined
    assert evidence_lines(evidence, "head") > ran_on_head  # the rest was done on the node left
    assert log_has(run_dir / "logs" / "run.log", "a Ray actor was lost with its node")


# -- without a cluster: the decisions and the missing extra -------------------------------------------------------
LOST = ItemError(ErrorKind.WORKER_LOST, "a Ray actor was lost with its node", "")
DIED = ItemError(ErrorKind.WORKER_DIED, "the actor's process died", "")


def test_items_of_a_lost_actor_go_back_as_retries_never_alone_never_guilty():
    rules = Rules(RetryPolicy(max_attempts=1), quarantine_after=1)
    outcomes = decide(dict.fromkeys(range(3), LOST), [10, 11, 12], 1, rules, False, {})
    assert [o.action for o in outcomes] == [Action.RETRY] * 3  # even with no attempts left
    assert all(o.guilt == 0 and o.delay == 0 for o in outcomes)
    # An actor that died under the batch (its node alive) still sends each item alone to find the culprit.
    assert [o.action for o in decide(dict.fromkeys(range(3), DIED), [10, 11, 12], 1, rules, False, {})] == \
        [Action.RUN_ALONE] * 3
    # Stopping: the next run does them; at most once: the call may have happened.
    assert decide({0: LOST}, [10], 1, rules, True, {})[0].action is Action.REDO
    assert decide({0: LOST}, [10], 1, Rules(RetryPolicy(), at_most_once=True), False, {})[0].action is \
        Action.INTERRUPTED


def test_the_ray_engine_without_ray_says_how_to_install_it(monkeypatch):
    from durabatch.engines import make_engine
    from durabatch.engines.user_fn import Work

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    engine = make_engine("ray", 2)  # the core and the engine module import without Ray
    with pytest.raises(ConfigError, match=r"pip install 'durabatch\[ray\]'"):
        engine.start(Work(len, False))
