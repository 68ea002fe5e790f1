"""Starting over (issue 12 item 5): `fresh=True` / `--fresh` moves the old run directory aside (renamed, never
deleted), says where it went and runs from the beginning; refused while a process holds the run, and for ranks."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pyarrow.parquet as pq
import pytest
import userfns
from conftest import durabatch_cli, make_records, wait_until

import durabatch
from durabatch.config.job import fingerprint
from durabatch.config.settings import JobSettings
from durabatch.errors import ConfigError, DurabatchError, RunLockedError
from durabatch.store.rundir import RunDir, lock_holder, move_aside

RECORDS = make_records(30)


def _old_dirs(parent):
    return sorted(p for p in parent.iterdir() if p.name.startswith("r.old-"))


def test_fresh_moves_the_old_run_aside_says_where_and_runs_everything_again(tmp_path, capsys):
    run_dir = tmp_path / "r"
    durabatch.run(userfns.digest, RECORDS, key="id", run_dir=run_dir, progress="off")
    summary = durabatch.run(userfns.fails_on_sevens, RECORDS, key="id", run_dir=run_dir, progress="off",
                            fresh=True, max_attempts=1)  # another function: no refusal, a new job
    assert summary.already_done == 0 and summary.done + summary.failed == 30
    [old] = _old_dirs(tmp_path)
    assert f"the previous run directory is now {old}" in capsys.readouterr().err
    assert durabatch.status(old)["done"] == 30  # the old run is intact where it went
    durabatch.export(old, to=tmp_path / "old.parquet")
    assert pq.read_table(tmp_path / "old.parquet").num_rows == 30
    again = durabatch.run(userfns.fails_on_sevens, RECORDS, key="id", run_dir=run_dir, progress="off")
    assert again.done == 0  # without fresh the new run resumes as usual


def test_fresh_without_a_run_directory_just_runs(tmp_path, capsys):
    summary = durabatch.run(userfns.digest, RECORDS, key="id", run_dir=tmp_path / "r", progress="off", fresh=True)
    assert summary.done == 30 and not _old_dirs(tmp_path)
    assert "starting fresh" not in capsys.readouterr().err


def test_moving_aside_never_overwrites_an_earlier_one(tmp_path):
    stamp = 1_800_000_000.0  # the same second twice: the second one gets a suffix
    moved = []
    for n in range(3):
        rd = RunDir(tmp_path / "r")
        rd.create()
        rd.ledger.write_text(f"run {n}")
        moved.append(move_aside(rd, now=stamp))
    assert [p.name.rsplit("-", 1)[-1] for p in moved[1:]] == ["2", "3"]
    assert [(p / "ledger.sqlite").read_text() for p in moved] == ["run 0", "run 1", "run 2"]
    assert not (tmp_path / "r").exists()


def test_a_directory_that_is_not_a_run_is_never_moved(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "notes.txt").write_text("mine")
    with pytest.raises(DurabatchError, match="not a durabatch run directory"):
        durabatch.run(userfns.digest, RECORDS, key="id", run_dir=tmp_path / "r", progress="off", fresh=True)
    assert (tmp_path / "r" / "notes.txt").read_text() == "mine" and not _old_dirs(tmp_path)
    (tmp_path / "r" / "ranks" / "0-of-2").mkdir(parents=True)  # a ranked job: its ranks may be running
    with pytest.raises(DurabatchError, match="holds a ranked job"):
        move_aside(RunDir(tmp_path / "r"))
    assert (tmp_path / "r" / "ranks").is_dir() and not _old_dirs(tmp_path)


HOLD = textwrap.dedent("""
    import sys
    from durabatch.store.rundir import RunDir, run_lock
    with run_lock(RunDir(sys.argv[1])):
        sys.stdin.read()  # hold the run until the test closes our stdin
""")


def test_fresh_is_refused_while_another_process_holds_the_run(tmp_path, records_file):
    data = records_file(10)
    run_dir = tmp_path / "r"
    durabatch.run(userfns.digest, str(data), key="id", run_dir=run_dir, progress="off")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdin=subprocess.PIPE)
    try:
        wait_until(lambda: lock_holder(RunDir(run_dir)) == holder.pid, timeout=60, what="the lock to be taken")
        with pytest.raises(RunLockedError, match=f"cannot start fresh: .*pid {holder.pid}"):
            durabatch.run(userfns.digest, str(data), key="id", run_dir=run_dir, progress="off", fresh=True)
        refused = durabatch_cli("run", "-i", data, "--key", "id", "--fn", "userfns:digest", "--run-dir", run_dir,
                                "--fresh", cwd=tmp_path)
        assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
        assert f"pid {holder.pid}" in refused.stderr
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    assert not _old_dirs(tmp_path) and durabatch.status(run_dir)["done"] == 10  # nothing moved


def test_fresh_with_ranks_is_refused_in_one_line(tmp_path, records_file):
    with pytest.raises(ConfigError, match=r"fresh=True cannot be combined with rank/ranks"):
        durabatch.run(userfns.digest, RECORDS, key="id", run_dir=tmp_path / "r", progress="off", fresh=True,
                      rank=0, ranks=2)
    refused = durabatch_cli("run", "-i", records_file(10), "--key", "id", "--fn", "userfns:digest", "--run-dir",
                            tmp_path / "r", "--fresh", "--rank", "0", "--ranks", "2", cwd=tmp_path)
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.strip().splitlines() == [refused.stderr.strip()]
    assert "--fresh cannot be combined with --rank/--ranks" in refused.stderr


def test_fresh_is_not_part_of_the_job_identity():
    def job(**extra):
        return fingerprint(userfns.digest, JobSettings(key="id", **extra), {"name": "x"})
    assert job(fresh=True) == job()


def test_cli_fresh_under_the_supervisor_moves_the_run_once(tmp_path, records_file):
    data = records_file(20)
    args = ["run", "-i", data, "--key", "id", "--fn", "userfns:digest", "--run-dir", tmp_path / "r",
            "--progress", "off"]
    assert durabatch_cli(*args, cwd=tmp_path).returncode == 0
    result = durabatch_cli(*args, "--fresh", "--supervise", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    [old] = _old_dirs(tmp_path)  # the parent moved it; the supervised child resumed the new one, moved nothing
    assert f"the previous run directory is now {old}" in result.stderr
    assert durabatch.status(tmp_path / "r")["done"] == 20 and durabatch.status(old)["done"] == 20
