"""What export writes is what was committed (RELIABILITY #16): a shard changed after its commit (a flipped bit, a
swapped name, a valid Parquet file of other values, a missing, truncated or zeroed file) makes `export` refuse with
exit 2, naming the shard and the repair, never write different content. And the file it writes is durable before
its name claims it is whole (fsync of the file, rename, fsync of the directory)."""

from __future__ import annotations

import os
import random
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import durabatch_cli

import durabatch
from durabatch.errors import DurabatchError

N = 3000
KEYS = [f"k{i:06d}" for i in range(N)]
FLIPS = 200


def shout(record: dict) -> dict:
    return {"n": record["n"] * 3, "text": f"value {record['n']} of {record['key']}"}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished run (Parquet shards of 500 rows) and its export, shared by the tests that copy it."""
    base = tmp_path_factory.mktemp("integrity")
    run_dir = base / "r"
    records = [{"key": k, "n": i} for i, k in enumerate(KEYS)]
    summary = durabatch.run(shout, records, key="key", run_dir=run_dir, commit_every=500, progress="off")
    assert summary.exit_code == 0
    durabatch.export(run_dir, to=base / "reference.parquet")
    return run_dir, pq.read_table(base / "reference.parquet")


def copy_run(finished, tmp_path):
    run_dir = tmp_path / "r"
    shutil.copytree(finished[0], run_dir)
    return run_dir, sorted((run_dir / "shards").iterdir())


def export_or_refusal(run_dir, out) -> pa.Table | str:
    """The exported table, or the refusal's message."""
    try:
        durabatch.export(run_dir, to=out)
    except DurabatchError as exc:
        return str(exc)
    return pq.read_table(out)


def assert_refused_cli(tmp_path, run_dir, shard_name: str) -> None:
    out = tmp_path / "out.parquet"
    result = durabatch_cli("export", run_dir, "--to", out, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert shard_name in result.stderr and f"durabatch verify {run_dir} --repair" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out.parquet")]


def test_single_bit_flips_never_export_different_content(finished, tmp_path):
    run_dir, files = copy_run(finished, tmp_path)
    victim = files[len(files) // 2]
    original = victim.read_bytes()
    rng = random.Random(1604)
    bits = rng.sample(range(len(original) * 8), FLIPS)
    refused = 0
    for bit in bits:
        damaged = bytearray(original)
        damaged[bit // 8] ^= 1 << (bit % 8)
        victim.write_bytes(bytes(damaged))
        result = export_or_refusal(run_dir, tmp_path / "out.parquet")
        if isinstance(result, str):
            assert victim.name in result and "repair=True" in result, result  # spelled for Python here
            refused += 1
        else:
            assert result.equals(finished[1]), f"bit {bit}: export succeeded with different content"
    assert refused == FLIPS  # the checksum sees every flip
    victim.write_bytes(original)
    assert export_or_refusal(run_dir, tmp_path / "out.parquet").equals(finished[1])


def test_a_flipped_bit_is_refused_by_the_cli_naming_the_shard(finished, tmp_path):
    run_dir, files = copy_run(finished, tmp_path)
    data = bytearray(files[1].read_bytes())
    data[len(data) // 3] ^= 0x10
    files[1].write_bytes(bytes(data))
    assert_refused_cli(tmp_path, run_dir, files[1].name)


def test_swapped_shard_names_are_refused(finished, tmp_path):
    run_dir, files = copy_run(finished, tmp_path)
    a, b = files[0], files[3]
    a.rename(a.with_name("swap"))
    b.rename(a)
    a.with_name("swap").rename(b)
    result = export_or_refusal(run_dir, tmp_path / "out.parquet")
    assert isinstance(result, str) and (a.name in result or b.name in result), result
    assert_refused_cli(tmp_path, run_dir, a.name)


def test_a_valid_parquet_file_of_other_values_is_refused(finished, tmp_path):
    run_dir, files = copy_run(finished, tmp_path)
    victim = files[2]
    table = pq.read_table(victim)
    other = table.set_column(1, "n", pa.array([v * 5 for v in table.column("n").to_pylist()]))
    pq.write_table(other.replace_schema_metadata(table.schema.metadata), victim)
    assert_refused_cli(tmp_path, run_dir, victim.name)


def test_same_size_same_rows_other_values_is_refused(finished, tmp_path):
    """The checksum, not only sizes and row counts: a value changed in place keeps both."""
    run_dir, files = copy_run(finished, tmp_path)
    victim = files[4]
    table = pq.read_table(victim)
    keys = table.column("key").to_pylist()
    keys[0], keys[1] = keys[1], keys[0]  # same bytes, another order
    swapped = table.set_column(0, "key", pa.array(keys))
    pq.write_table(swapped.replace_schema_metadata(table.schema.metadata), victim, compression="zstd",
                   use_dictionary=False)
    assert_refused_cli(tmp_path, run_dir, victim.name)


@pytest.mark.parametrize("damage", ["missing", "truncated", "zeroed", "empty"])
def test_missing_truncated_or_zeroed_shards_are_refused_cleanly(finished, tmp_path, damage):
    run_dir, files = copy_run(finished, tmp_path)
    victim = files[-1]
    size = victim.stat().st_size
    if damage == "missing":
        victim.unlink()
    elif damage == "truncated":
        os.truncate(victim, size // 2)
    elif damage == "zeroed":
        victim.write_bytes(bytes(size))
    else:
        victim.write_bytes(b"")
    assert_refused_cli(tmp_path, run_dir, victim.name)


def test_jsonl_shards_are_checked_too(tmp_path):
    run_dir = tmp_path / "r"
    records = [{"key": k, "n": i} for i, k in enumerate(KEYS[:1000])]
    durabatch.run(shout, records, key="key", run_dir=run_dir, commit_every=250, output_format="jsonl",
                  progress="off")
    reference = export_or_refusal(run_dir, tmp_path / "ref.parquet")
    assert isinstance(reference, pa.Table) and reference.num_rows == 1000
    # the shard holding item 300, wherever the commits fell (batches may outgrow commit_every on a fast machine)
    victim = next(p for p in sorted((run_dir / "shards").iterdir()) if "value 300 " in p.read_text())
    victim.write_text(victim.read_text().replace("value 300 ", "value 301 "))
    assert_refused_cli(tmp_path, run_dir, victim.name)


def test_the_export_is_fsynced_before_its_rename_and_the_directory_after(finished, tmp_path, monkeypatch):
    """Whole means durable: a power loss must not leave an empty or partial file under the final name."""
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst, **kwargs):
        events.append(("replace", f"{src} -> {dst}"))
        return real_replace(src, dst, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    for suffix in (".parquet", ".jsonl"):
        out = tmp_path / f"out{suffix}"
        events.clear()
        durabatch.export(finished[0], to=out)
        renames = [i for i, (what, arg) in enumerate(events) if what == "replace" and arg.endswith(str(out))]
        assert len(renames) == 1, events
        at = renames[0]
        tmp = events[at][1].split(" -> ")[0]
        assert ("fsync", tmp) in events[:at], f"{suffix}: not fsynced before the rename: {events}"
        assert ("fsync", str(tmp_path)) in events[at + 1:], f"{suffix}: directory not fsynced after: {events}"
