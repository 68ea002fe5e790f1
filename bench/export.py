"""The cost of export's integrity check (every shard hashed and compared with the ledger as it is read) on a
1M-item export: `durabatch.export` as shipped vs the same export with shards read unchecked (pq.read_table on
the path, as before the check). Arms interleaved, in one process, after one warm-up of each; median seconds,
spread (min-max) and the median of the per-round ratios checked/unchecked.

    python bench/export.py --n 1000000 --rounds 5
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

import durabatch
import durabatch.store.export as export_mod
from durabatch.store.shards import read_shard

CHECKED = export_mod._load


def unchecked(rd, shard):  # noqa: ANN001, ANN201 - the arm without the check: read the file, trust it
    return read_shard(rd.shards / shard["name"]) if not shard["name"].endswith(".parquet") else \
        pq.read_table(rd.shards / shard["name"])


def digest_batch(records: list[dict]) -> list[dict]:
    return [{"digest": hashlib.blake2b(str(r["id"]).encode(), digest_size=16).hexdigest(),
             "text": r["text"].upper()} for r in records]


def make_run(work: Path, n: int, fmt: str) -> Path:
    run_dir = work / f"run-{fmt}"
    records = ({"id": i, "text": f"item-{i}"} for i in range(n))
    summary = durabatch.run(digest_batch, records, key="id", run_dir=run_dir, batch_size=1000,
                            commit_every=50_000, output_format=fmt, progress="off")
    assert summary.exit_code == 0
    return run_dir


def once(run_dir: Path, out: Path, check: bool) -> float:
    export_mod._load = CHECKED if check else unchecked
    try:
        t0 = time.perf_counter()
        rows = durabatch.export(run_dir, to=out)
        seconds = time.perf_counter() - t0
    finally:
        export_mod._load = CHECKED
        out.unlink(missing_ok=True)
    assert rows > 0
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--format", default="parquet", choices=["parquet", "jsonl"], help="the shards' format")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        work = Path(tmp)
        run_dir = make_run(work, args.n, args.format)
        shards = sorted((run_dir / "shards").iterdir())
        size = sum(p.stat().st_size for p in shards)
        out = work / "out.parquet"
        once(run_dir, out, True), once(run_dir, out, False)  # warm the page cache and the imports
        seconds: dict[bool, list[float]] = {True: [], False: []}
        ratios = []
        for r in range(args.rounds):
            order = (True, False) if r % 2 == 0 else (False, True)  # neither arm always runs first
            got = {check: once(run_dir, out, check) for check in order}
            for check, s in got.items():
                seconds[check].append(s)
            ratios.append(got[True] / got[False])
        print(f"{args.n:,} items, {len(shards)} {args.format} shards, {size / 2**20:.1f} MiB; {args.rounds} rounds")
        for check, label in ((False, "unchecked"), (True, "checked")):
            s = seconds[check]
            print(f"  {label:9s} median {statistics.median(s):.3f} s  (min {min(s):.3f}, max {max(s):.3f})")
        print(f"  checked/unchecked: median {statistics.median(ratios):.3f}  "
              f"(min {min(ratios):.3f}, max {max(ratios):.3f})")


if __name__ == "__main__":
    main()
