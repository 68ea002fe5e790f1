"""What durability costs: durabatch against a bare loop, HF datasets' map and the seeds' hand-rolled patterns,
all on the same trivial work (blake2b of a short string) read from the same JSONL file, measured in one run.

    python bench/overhead.py            # 1M items (+3M for memory), seeds at 100k / 20k: a few minutes
    python bench/overhead.py --quick    # 100k items, seeds at 10k / 2k: about 30 s
    python bench/overhead.py --skip-slow

Each arm runs in its own subprocess; peak RSS is that process's maximum resident set (wait4)."""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out"


def digest(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def make_input(n: int) -> Path:
    path = OUT / f"items-{n}.jsonl"
    if not path.exists():
        OUT.mkdir(parents=True, exist_ok=True)
        with open(path.with_suffix(".tmp"), "w") as f:
            for i in range(n):
                f.write(f'{{"id": {i}, "text": "item-{i}"}}\n')
        path.with_suffix(".tmp").replace(path)
    return path


def read(path: Path):
    with open(path, "rb") as f:
        for line in f:
            yield json.loads(line)


# -- the arms --------------------------------------------------------------------------------------------------
def arm_bare(path: Path, work: Path) -> int:
    """A plain loop: everything in memory, one Parquet file at the end. Not durable at all."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids, digests = [], []
    for record in read(path):
        ids.append(record["id"])
        digests.append(digest(record["text"]))
    pq.write_table(pa.table({"id": ids, "digest": digests}), work / "out.parquet")
    return len(ids)


def arm_hf_map(path: Path, work: Path) -> int:
    """HF datasets: load_dataset + map(batched=True) + to_parquet. All or nothing: a crash loses everything."""
    import datasets

    datasets.disable_progress_bars()
    ds = datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=str(work / "cache"))
    ds = ds.map(lambda batch: {"digest": [digest(t) for t in batch["text"]]}, batched=True)
    ds.to_parquet(str(work / "out.parquet"))
    return len(ds)


def arm_hf_map_rows(path: Path, work: Path) -> int:
    """HF datasets with a per-record function (map without batched=True): the peer of durabatch's default."""
    import datasets

    datasets.disable_progress_bars()
    ds = datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=str(work / "cache"))
    ds = ds.map(lambda record: {"digest": digest(record["text"])})
    ds.to_parquet(str(work / "out.parquet"))
    return len(ds)


def arm_seed000(path: Path, work: Path) -> int:
    """Seed 000: pickle.gz per batch of 8; the processed-id JSON rewritten every 10 batches (grows quadratically)."""
    processed: set[int] = set()
    batch: list[dict] = []
    batch_id = 0

    def flush() -> None:
        nonlocal batch_id
        with gzip.open(work / f"batch_{batch_id:06d}.pkl.gz", "wb") as f:
            pickle.dump(batch, f)
        processed.update(r["id"] for r in batch)
        batch_id += 1
        if batch_id % 10 == 0:
            with open(work / "checkpoint.json", "w") as f:
                json.dump({"processed": sorted(processed)}, f)

    for record in read(path):
        batch.append({"id": record["id"], "digest": digest(record["text"])})
        if len(batch) == 8:
            flush()
            batch = []
    if batch:
        flush()
    return len(processed)


def arm_seed002(path: Path, work: Path) -> int:
    """Seed 002: every result kept in memory and the whole checkpoint JSON rewritten every 50 items."""
    results: list[dict] = []
    for record in read(path):
        results.append({"id": record["id"], "digest": digest(record["text"])})
        if len(results) % 50 == 0:
            with open(work / "checkpoint.json", "w") as f:
                json.dump({"completed_count": len(results), "results": results}, f)
    return len(results)


def durabatch_fn(record: dict) -> dict:
    return {"digest": digest(record["text"])}


def arm_durabatch(path: Path, work: Path) -> int:
    """durabatch: durable Parquet shards, SQLite ledger, resumable at any moment."""
    import durabatch

    summary = durabatch.run(durabatch_fn, source=str(path), key="id", run_dir=str(work / "run"), progress="off")
    return summary.done


def durabatch_batch_fn(records: list[dict]) -> list[dict]:
    return [{"digest": digest(r["text"])} for r in records]


def arm_durabatch_batched(path: Path, work: Path) -> int:
    """durabatch with a batch function (lists in, lists out): the shape of HF's map(batched=True)."""
    import durabatch

    summary = durabatch.run(durabatch_batch_fn, source=str(path), key="id", run_dir=str(work / "run"),
                            batch_size=1000, progress="off")
    return summary.done


def durabatch_columns_fn(batch: dict[str, list]) -> dict[str, list]:
    return {"digest": [digest(t) for t in batch["text"]]}


def arm_durabatch_columns(path: Path, work: Path) -> int:
    """durabatch with a columns batch function: the same function HF's map(batched=True) is given, Arrow in
    and out, durable."""
    import durabatch

    summary = durabatch.run(durabatch_columns_fn, source=str(path), key="id", run_dir=str(work / "run"),
                            batch_size=1000, batch_format="columns", progress="off")
    return summary.done


def arm_durabatch_rerun(path: Path, work: Path) -> int:
    """The same job run again on its finished run directory: nothing to do."""
    import durabatch

    summary = durabatch.run(durabatch_fn, source=str(path), key="id", run_dir=str(work / "run"), progress="off")
    assert summary.done == 0 and summary.exit_code == 0, summary
    return summary.already_done


ARMS = {"bare": arm_bare, "hf_map": arm_hf_map, "hf_map_rows": arm_hf_map_rows, "seed000": arm_seed000,
        "seed002": arm_seed002, "durabatch": arm_durabatch, "durabatch_batched": arm_durabatch_batched,
        "durabatch_columns": arm_durabatch_columns,
        "durabatch_rerun": arm_durabatch_rerun}


# -- the harness -----------------------------------------------------------------------------------------------
# pandas too: pyarrow imports it lazily at the first pa.array(list) when it is installed (0.2 s, an import, not
# work); `datasets` imports it anyway.
IMPORTS = {"bare": ["pyarrow.parquet", "pandas"], "hf_map": ["datasets"], "hf_map_rows": ["datasets"],
           "durabatch": ["durabatch", "pandas"], "durabatch_batched": ["durabatch", "pandas"],
           "durabatch_columns": ["durabatch", "pandas"], "durabatch_rerun": ["durabatch", "pandas"]}


def peak_rss() -> int:
    """VmHWM: this process's own high-water mark (reset by exec, unlike getrusage's maxrss)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def child(arm: str, n: int, work: str) -> None:
    import importlib

    path = make_input(n)
    for module in IMPORTS.get(arm, []):
        importlib.import_module(module)  # time the work, not the imports
    t0 = time.perf_counter()
    count = ARMS[arm](path, Path(work))
    print(json.dumps({"seconds": time.perf_counter() - t0, "count": count, "peak_rss": peak_rss()}))


def measure(arm: str, n: int, work: Path) -> dict:
    make_input(n)
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--child", arm, "--n", str(n), "--work", str(work)],
                            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONHASHSEED": "0"})
    out = proc.stdout.read()
    wall = time.perf_counter() - t0  # what a user waits: interpreter start, imports and the work
    proc.stdout.close()
    if proc.wait() != 0:
        raise SystemExit(f"arm {arm} failed")
    result = json.loads(out.strip().splitlines()[-1])
    return {"arm": arm, "items": n, "seconds": result["seconds"], "count": result["count"], "wall": wall,
            "rate": n / result["seconds"], "peak_rss_mb": result["peak_rss"] / 2**20}


def verify(work: Path, n: int) -> None:
    """Durability must not have dropped or doubled anything."""
    import pyarrow.parquet as pq

    import durabatch

    durabatch.export(work / "run", to=work / "export.parquet")
    ids = pq.read_table(work / "export.parquet", columns=["id"]).column(0).to_pylist()
    assert ids == list(range(n)), "durabatch output is not every key exactly once"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--skip-slow", action="store_true", help="skip the seed patterns")
    parser.add_argument("--arms", help="comma-separated arms to run (default: all)")
    parser.add_argument("--child")
    parser.add_argument("--n", type=int)
    parser.add_argument("--work")
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.n, args.work)
    big, seed000_n, seed002_n, huge = (100_000, 10_000, 2_000, 300_000) if args.quick else \
        (1_000_000, 100_000, 20_000, 3_000_000)
    plan = [("bare", big), ("hf_map", big), ("durabatch_columns", big), ("durabatch_batched", big),
            ("hf_map_rows", big), ("durabatch", big), ("durabatch_rerun", big),
            ("hf_map", huge), ("durabatch_columns", huge), ("durabatch", huge)]
    if args.arms:
        plan = [(arm, n) for arm, n in plan if arm in args.arms.split(",")]
    if not args.skip_slow:
        plan += [("seed000", seed000_n), ("seed002", seed002_n)]
    rows = []
    last_run: Path | None = None
    for arm, n in plan:
        work = last_run if arm == "durabatch_rerun" and last_run else Path(tempfile.mkdtemp(prefix=f"bench-{arm}-"))
        row = measure(arm, n, work)
        if arm.startswith("durabatch") and arm != "durabatch_rerun":
            verify(work, n)
        if arm == "durabatch":
            last_run = work
        rows.append(row)
        print(f"{arm:>16} {n:>9,} items {row['seconds']:8.2f} s (process {row['wall']:6.2f} s) "
              f"{row['rate']:>11,.0f} items/s peak RSS {row['peak_rss_mb']:6.0f} MB", flush=True)
    bare = next((r["rate"] for r in rows if r["arm"] == "bare"), None)
    hf = {r["items"]: r for r in rows if r["arm"] == "hf_map"}
    print("\n| arm | items | work seconds | items/s | throughput vs the bare loop | vs HF map (batched), work "
          "/ whole process | whole process seconds | peak RSS MB |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        ratio = "-" if r["arm"] == "durabatch_rerun" or bare is None else f"{r['rate'] / bare:.2f}x"
        peer = hf.get(r["items"])
        vs_hf = "-" if peer is None or r["arm"] in ("hf_map", "durabatch_rerun") else \
            f"{peer['seconds'] / r['seconds']:.2f}x / {peer['wall'] / r['wall']:.2f}x"
        print(f"| {r['arm']} | {r['items']:,} | {r['seconds']:.2f} | {r['rate']:,.0f} | {ratio} | {vs_hf} | "
              f"{r['wall']:.2f} | {r['peak_rss_mb']:.0f} |")
    for path in Path(tempfile.gettempdir()).glob("bench-*"):
        shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    main()
