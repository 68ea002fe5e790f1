"""Ranks without any scheduler (issue 11 item 2): `--rank K --ranks N` processes share one run directory, each
with its own ledger and shards; status, export, verify and report merge them."""

from __future__ import annotations

import json
import signal

import pyarrow.parquet as pq
import pytest
from conftest import committed_rows, durabatch_cli, durabatch_popen, wait_until

import durabatch
from durabatch.errors import ConfigError
from durabatch.store import ranks

N = 3000


def run_args(data, run_dir, rank, total=2):
    return ("run", "--fn", "jobs:slow_digest", "--input", data, "--key", "id", "--run-dir", run_dir,
            "--rank", rank, "--ranks", total, "--commit-every", 50, "--progress", "off")


def test_two_ranks_at_once_one_killed_and_rerun_export_exactly_once(tmp_path, records_file):
    data = records_file(N)
    run_dir = tmp_path / "run"
    one = ranks.rank_dir(run_dir, 1, 2)
    # Rank 1 slow (so the kill lands mid-range), rank 0 quicker; the speed is not part of the job's identity.
    slow = durabatch_popen(*run_args(data, run_dir, 1), cwd=tmp_path, env={"JOBS_ITEM_SECONDS": "0.01"})
    quick = durabatch_popen(*run_args(data, run_dir, 0), cwd=tmp_path, env={"JOBS_ITEM_SECONDS": "0.0005"})
    try:
        wait_until(lambda: committed_rows(one.path) >= 100, timeout=120, what="rank 1 to commit 100 items")
        slow.send_signal(signal.SIGKILL)
        assert slow.wait(timeout=60) == -signal.SIGKILL
        assert quick.wait(timeout=180) == 0
    finally:
        for proc in (slow, quick):
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    info = durabatch.status(run_dir)
    assert info["unfinished_ranks"] == [1]
    assert 100 <= info["done"] < N
    text = durabatch_cli("status", run_dir, cwd=tmp_path)
    assert "unfinished: ranks 1" in text.stdout, text.stdout
    refused = durabatch_cli("export", run_dir, "--to", tmp_path / "early.parquet", cwd=tmp_path)
    assert refused.returncode == 2
    assert f"of {N:,} items done; rank 1 unfinished" in refused.stderr, refused.stderr

    # Another split of the same run directory is refused, naming the ranks it has.
    other = durabatch_cli(*run_args(data, run_dir, 0, total=3), cwd=tmp_path)
    assert other.returncode == 2
    assert "split into 2 ranks" in other.stderr and "--ranks 3" in other.stderr, other.stderr

    rerun = durabatch_cli(*run_args(data, run_dir, 1), cwd=tmp_path, env={"JOBS_ITEM_SECONDS": "0"})
    assert rerun.returncode == 0, rerun.stderr
    assert ranks.unfinished_ranks(run_dir) == []

    single = tmp_path / "single"
    alone = durabatch_cli("run", "--fn", "jobs:slow_digest", "--input", data, "--key", "id", "--run-dir", single,
                          "--progress", "off", cwd=tmp_path, env={"JOBS_ITEM_SECONDS": "0"})
    assert alone.returncode == 0, alone.stderr
    merged = durabatch_cli("export", run_dir, "--to", tmp_path / "ranks.parquet", cwd=tmp_path)
    assert merged.returncode == 0, merged.stderr
    durabatch.export(single, tmp_path / "single.parquet")
    got, want = pq.read_table(tmp_path / "ranks.parquet"), pq.read_table(tmp_path / "single.parquet")
    assert got.column("id").to_pylist() == list(range(N))  # every key once, in source order
    assert got.select(["id", "digest"]).equals(want.select(["id", "digest"]))

    checked = durabatch_cli("verify", run_dir, cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout
    status = json.loads(durabatch_cli("status", run_dir, "--json", cwd=tmp_path).stdout)
    assert (status["state"], status["done"], status["total"], status["unfinished_ranks"]) == ("finished", N, N, [])
    report = durabatch_cli("report", run_dir, "--json", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    assert json.loads(report.stdout)["totals"]["done"] == N


def test_rank_settings_that_cannot_work_are_one_line_errors(tmp_path, records_file):
    data = records_file(10)
    for args, text in ((("--rank", 1), "--rank 1 needs --ranks N"), (("--rank", 2, "--ranks", 2), "out of range"),
                       (("--ranks", 2), "needs --rank K")):
        result = durabatch_cli("run", "--fn", "jobs:digest", "--input", data, "--key", "id", "--run-dir",
                               tmp_path / "r", *args, cwd=tmp_path)
        assert result.returncode == 2
        assert text in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_ranks_cover_the_selection_and_a_plain_run_on_a_ranked_directory_is_refused(tmp_path, records_file):
    data = records_file(100)
    run_dir = tmp_path / "run"
    for k in range(3):  # more than one item per rank, a selection that does not start at 0
        durabatch.run("jobs:digest", str(data), key="id", run_dir=str(run_dir), rank=k, ranks=3, start=10,
                      limit=50, progress="off")
    spans = [json.loads(rd.job.read_text())["settings"] for _, rd in ranks.rank_dirs(run_dir)]
    assert [(s["start"], s["end"]) for s in spans] == [(10, 26), (26, 43), (43, 60)]
    durabatch.export(run_dir, tmp_path / "out.jsonl")
    ids = [json.loads(line)["id"] for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert ids == list(range(10, 60))
    with pytest.raises(ConfigError, match="split into 3 ranks"):
        durabatch.run("jobs:digest", str(data), key="id", run_dir=str(run_dir), progress="off")


def test_the_input_is_counted_once_for_all_ranks_and_again_when_it_changes(tmp_path, records_file, monkeypatch):
    from durabatch.sources.files import FileSource

    data = records_file(100)
    args = {"key": "id", "run_dir": str(tmp_path / "run"), "ranks": 2, "limit": 80, "progress": "off"}
    assert durabatch.run("jobs:digest", str(data), rank=1, **args).done == 40  # counts, and keeps the count

    def no_count(self):
        raise AssertionError("the input was counted again")

    monkeypatch.setattr(FileSource, "count", no_count)
    again = durabatch.run("jobs:digest", str(data), rank=1, **args)  # a resume: its recorded range
    assert (again.exit_code, again.done, again.already_done) == (0, 0, 40)
    first = durabatch.run("jobs:digest", str(data), rank=0, **args)  # a fresh rank: the kept count
    assert (first.exit_code, first.done) == (0, 40)
    with data.open("a") as f:  # another input: counted again
        f.write(json.dumps({"id": 100, "text": "new"}) + "\n")
    with pytest.raises(AssertionError, match="counted again"):
        durabatch.run("jobs:digest", str(data), rank=0, **args)
    kept = json.loads((tmp_path / "run" / ranks.COUNT_FILE).read_text())
    assert kept["count"] == 100


def test_a_key_in_two_ranks_is_refused_at_export_naming_both(tmp_path):
    data = tmp_path / "dupes.jsonl"
    data.write_text("".join(json.dumps({"id": i % 15}) + "\n" for i in range(20)))  # ids 0..4 twice
    run_dir = tmp_path / "run"
    for k in range(2):  # each rank's own range has unique keys: [0, 10) and [10, 20)
        durabatch.run("jobs:digest", str(data), key="id", run_dir=str(run_dir), rank=k, ranks=2, progress="off")
    with pytest.raises(ConfigError, match=r"key 0 is in rank 0 and in rank 1"):
        durabatch.export(run_dir, tmp_path / "out.parquet")
    assert not (tmp_path / "out.parquet").exists()
    assert not durabatch.verify(run_dir).ok


def test_a_rank_skips_the_blocks_before_its_range_and_counts_positions_exactly(tmp_path):
    import pyarrow as pa

    from durabatch.intervals import From
    from durabatch.sources import open_source
    from durabatch.sources.base import BadRow
    from durabatch.sources.jsonl import jsonl_blocks

    lines = [json.dumps({"id": i}) for i in range(3000)]
    lines[100] = ""  # blank lines are no position...
    lines[200] = "\u3000"  # ...nor is a line of Unicode spaces: those blocks are read the ordinary way
    lines[2500] = "{not json"
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(lines) + "\n")
    parquet = tmp_path / "data.parquet"
    pq.write_table(pa.table({"id": list(range(3000))}), parquet, row_group_size=256)

    def read_jsonl(lo, block_size):  # small blocks, so that many lie wholly before the range
        blocks = jsonl_blocks(str(data), 0, From(lo), None, BadRow, block_size=block_size)
        return [(p, getattr(r, "message", None) or r["id"])
                for ps, _, rs in blocks for p, r in zip(ps, rs, strict=True)]

    everything = read_jsonl(0, 1 << 20)
    assert len(everything) == 2998 and everything[-1] == (2997, 2999)
    for lo in (0, 150, 1700, 2990):
        assert read_jsonl(lo, 2048) == [x for x in everything if x[0] >= lo]
        assert [(p, r["id"]) for p, _, r in open_source(str(parquet)).rows(From(lo), None)] == \
            [(p, p) for p in range(lo, 3000)]


def test_a_supervised_rank_is_judged_on_its_own_directory(tmp_path, records_file):
    data = records_file(40)
    run_dir = tmp_path / "run"
    result = durabatch_cli("run", "--fn", "jobs:digest", "--input", data, "--key", "id", "--run-dir", run_dir,
                           "--rank", 1, "--ranks", 2, "--supervise", "--progress", "off", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    own = ranks.rank_dir(run_dir, 1, 2)
    assert "exited with code 0" in (own.logs / "supervise.log").read_text()
    assert not (run_dir / "logs").exists()
    assert ranks.unfinished_ranks(run_dir) == [0]


def test_verify_names_the_rank_with_a_damaged_shard_and_repairs_it(tmp_path, records_file):
    data = records_file(60)
    run_dir = tmp_path / "run"
    for k in range(2):
        durabatch.run("jobs:digest", str(data), key="id", run_dir=str(run_dir), rank=k, ranks=2, commit_every=10,
                      progress="off")
    shard = sorted(ranks.rank_dir(run_dir, 1, 2).shards.iterdir())[0]
    shard.write_bytes(shard.read_bytes()[:-10])
    report = durabatch.verify(run_dir)
    assert not report.ok and all(p.detail.startswith("rank 1: ") for p in report.problems), report.render()
    result = durabatch_cli("verify", run_dir, "--repair", cwd=tmp_path)
    assert result.returncode == 0, result.stdout
    assert ranks.unfinished_ranks(run_dir) == [1]  # its shard's items are pending again
    durabatch.run("jobs:digest", str(data), key="id", run_dir=str(run_dir), rank=1, ranks=2, progress="off")
    assert durabatch.export(run_dir, tmp_path / "out.parquet") == 60
    assert pq.read_table(tmp_path / "out.parquet").column("id").to_pylist() == list(range(60))


def test_failures_of_every_rank_export_as_one_table(tmp_path, records_file):
    data = records_file(12)
    run_dir = tmp_path / "run"
    for k in range(3):  # ranks [0, 4), [4, 8), [8, 12): failures (ids 0 and 7) in the first two, none in the last
        durabatch.run("userfns:fails_on_sevens", str(data), key="id", run_dir=str(run_dir), rank=k, ranks=3,
                      max_attempts=1, progress="off")
    assert durabatch.export(run_dir, tmp_path / "failed.jsonl", failed=True) == 2
    assert durabatch.export(run_dir, tmp_path / "all.parquet", include_failed=True) == 12
    table = pq.read_table(tmp_path / "all.parquet")
    assert table.column("id").to_pylist() == list(range(12))
    assert [r["id"] for r in table.to_pylist() if r["_status"] == "failed"] == [0, 7]
    # retry-failed on the run directory puts back the failures of every rank (2), and only those
    assert durabatch.retry_failed(run_dir) == 2
    assert durabatch.status(run_dir)["failed"] == 0
