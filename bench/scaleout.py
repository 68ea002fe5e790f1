"""Scale-out: does a second worker (Ray) or a second rank (`--rank K --ranks N`) double the speed of a GPU-like
function, and how many trivial items per second can the Ray driver move, next to the processes engine?

    python bench/scaleout.py --rounds 5

Starts a real two-node Ray cluster on loopback (tests/cluster/ray_cluster.py: a private network namespace, so it
needs root or user namespaces), then runs every arm once per round, interleaved, as real CLI subprocesses:

- ray1 / ray2: `--engine ray --workers 1|2` (actors spread over the two nodes) on `scalefns:sleepy_batch`, a batch
  function that sleeps 50 ms per call; rank1 / rank2: the same function, inline engine, as 1 or 2 concurrent
  `--rank K --ranks N` processes. Time = the span of the work itself (first call's start to last call's end, from
  the stamps the function writes), not process or actor start-up; commits at the end only. Speed-up =
  span(1) / span(2) per round.
- ray_trivial / processes_trivial: `scalefns:trivial` (no work) with 2 workers; items/s between the first and the
  last commit (the steady state, from the ledger's shard times), and end to end.
- ray_bulky: `scalefns:bulky` (64 KB of random bytes per item, no work) on 2 Ray workers, a commit every 200
  items: MB/s of output through the driver (steady), the ceiling that the heavy-item variant (actors write
  their own shards) lifts: bulky_actors is the same run with `--ray-shards actors` (each actor writes its
  batches' shards, the driver only lists them). ray_trivial_actors: the trivial arm with `--ray-shards actors`,
  the cost of that variant when items are light. `--shards-only` runs only these four arms. These arms also
  report the driver's own CPU time (getrusage of the waited-for driver process), per MB or per item.
- in_driver / in_actors: heavy inputs (`--heavy-in` rows of `--in-kb` KB in a Parquet file; `scalefns:digest`
  hashes each row's blob) on 2 Ray workers, the records read by the driver and sent to the actors, or read by
  the actors themselves (`--ray-reads actors`: the driver reads the key column only). Reported: MB/s of input
  (steady and end to end), the driver's CPU ms per MB of input and the bytes it read (rchar of /proc/self/io,
  as it exits). `--inputs-only` runs only these two arms.

Reported: the median over the rounds, with the spread (min-max)."""

from __future__ import annotations

import argparse
import json
import random
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent / "tests" / "cluster"))
from ray_cluster import RayCluster, available  # noqa: E402


def cli(*args: object) -> list[str]:
    return [sys.executable, "-m", "durabatch", "run", *map(str, args), "--progress", "off"]


# The CLI in a driver that prints its own bytes read (rchar) as it exits.
READS = "import atexit, runpy, sys; atexit.register(lambda: sys.stderr.write('\\nRCHAR ' + [l for l in " \
        "open('/proc/self/io') if l.startswith('rchar')][0].split()[1] + '\\n')); sys.argv = ['durabatch', " \
        "*sys.argv[1:]]; runpy.run_module('durabatch', run_name='__main__', alter_sys=True)"


def heavy_input(path: Path, n: int, kb: int) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    blobs = [random.Random(i).randbytes(kb * 1024) for i in range(n)]
    pq.write_table(pa.table({"id": list(range(n)), "blob": blobs}), path, row_group_size=16, compression="none")
    return path


def heavy_in_arm(cluster: RayCluster, work: Path, data: Path, n: int, actors: bool) -> tuple[float, ...]:
    """(steady items/s, end-to-end items/s, driver CPU s, driver bytes read)"""
    run = ["run", "--input", data, "--fn", "scalefns:digest", "--key", "id", "--run-dir", work / "run",
           "--engine", "ray", "--workers", 2, "--commit-every", 64, "--progress", "off",
           *(("--ray-reads", "actors") if actors else ())]
    t0, cpu = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(cluster.command([sys.executable, "-c", READS, *map(str, run)]), env=cluster.driver_env(),
                          check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    rchar = int([line for line in done.stderr.splitlines() if line.startswith("RCHAR ")][-1].split()[1])
    rate = steady_rate(work / "run")
    shutil.rmtree(work / "run")
    return rate, n / seconds, after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime, rchar


def write_input(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"id": i}) + "\n" for i in range(n)))
    return path


def span(stamps: Path) -> float:
    lines = [line.split() for f in stamps.iterdir() for line in f.read_text().splitlines()]
    return max(float(e) for _, e, _ in lines) - min(float(s) for s, _, _ in lines)


def steady_rate(run_dir: Path) -> float:
    """Items per second between the first and the last commit (start-up and the first batch left out)."""
    rows = []
    for ledger in run_dir.rglob("ledger.sqlite"):
        with sqlite3.connect(ledger) as conn:
            rows += conn.execute("SELECT committed_at, rows FROM shards").fetchall()
    rows.sort()
    if len(rows) < 2 or rows[-1][0] <= rows[0][0]:
        raise RuntimeError(f"{run_dir}: fewer than two commits; give the arm more items")
    return sum(r for _, r in rows[1:]) / (rows[-1][0] - rows[0][0])


def sleepy_arm(cluster: RayCluster, work: Path, data: Path, arm: str, batch: int) -> float:
    stamps = work / "stamps"
    stamps.mkdir()
    # Commits at the end only: a commit stalls dispatch for as long in every arm (bench/overhead.py measures it).
    common = ["--input", data, "--fn", "scalefns:sleepy_batch", "--key", "id", "--batch-size", batch,
              "--param", f"stamps={stamps}", "--commit-seconds", 600]
    if arm.startswith("ray"):
        run = [*common, "--run-dir", work / "run", "--engine", "ray", "--workers", arm[-1]]
        subprocess.run(cluster.command(cli(*run)), env=cluster.driver_env(), check=True, capture_output=True)
    else:
        ranks = int(arm[-1])
        procs = [subprocess.Popen(cli(*common, "--run-dir", work / "run", "--rank", k, "--ranks", ranks),
                                  env=cluster.env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                 for k in range(ranks)]
        for proc in procs:
            _, err = proc.communicate()
            if proc.returncode:
                raise RuntimeError(f"{arm}: {err.decode()[-2000:]}")
    return span(stamps)


def trivial_arm(cluster: RayCluster, work: Path, data: Path, engine: str, n: int, fn: str = "scalefns:trivial",
                commit_every: int = 10_000, extra: tuple = ()) -> tuple[float, float, float]:
    """(steady items/s, end-to-end items/s, the driver's CPU seconds: its user + system time, as a waited-for
    child; Ray's actors and raylets are not its children)"""
    run = ["--input", data, "--fn", fn, "--key", "id", "--run-dir", work / "run", "--engine", engine, "--workers", 2,
           "--commit-every", commit_every, *extra]
    t0, cpu = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    if engine == "ray":
        subprocess.run(cluster.command(cli(*run)), env=cluster.driver_env(), check=True, capture_output=True)
    else:
        subprocess.run(cli(*run), env=cluster.env(), check=True, capture_output=True)
    seconds = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    driver_cpu = after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime
    rate = steady_rate(work / "run")
    shutil.rmtree(work / "run")  # bulky runs write hundreds of MB
    return rate, n / seconds, driver_cpu


SHARDS = {False: (), True: ("--ray-shards", "actors")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=60, help="50 ms calls per sleepy run")
    parser.add_argument("--batch", type=int, default=4, help="items per call")
    parser.add_argument("--trivial", type=int, default=200_000, help="items per trivial run")
    parser.add_argument("--bulky", type=int, default=3000, help="items of 64 KB per bulky run (0: no bulky arm)")
    parser.add_argument("--kb", type=int, default=64, help="output KB per bulky item")
    parser.add_argument("--skip-ranks", action="store_true", help="without the --rank/--ranks arms")
    parser.add_argument("--shards-only", action="store_true", help="only the driver/actors shard arms")
    parser.add_argument("--heavy-in", type=int, default=1200, help="heavy input rows (0: no heavy-input arms)")
    parser.add_argument("--in-kb", type=int, default=256, help="KB per heavy input row")
    parser.add_argument("--inputs-only", action="store_true", help="only the heavy-input arms")
    args = parser.parse_args()
    why = available()
    if why:
        sys.exit(f"cannot start a local Ray cluster: {why}")
    root = Path(tempfile.mkdtemp(prefix="scaleout-"))
    sleepy = write_input(root / "sleepy.jsonl", args.calls * args.batch)
    trivial = write_input(root / "trivial.jsonl", args.trivial)
    bulky = write_input(root / "bulky.jsonl", args.bulky)
    cluster = RayCluster(root / "cluster", cpus_per_node=2, pythonpath=[str(BENCH)])
    if args.inputs_only:
        args.shards_only, args.trivial, args.bulky = True, 0, 0
    heavy = heavy_input(root / "heavy.parquet", args.heavy_in, args.in_kb) if args.heavy_in else None
    arms = [] if args.shards_only else ["ray1", "ray2"] + ([] if args.skip_ranks else ["rank1", "rank2"])
    spans: dict[str, list[float]] = {a: [] for a in arms}
    rates: dict[str, list[tuple[float, float, float]]] = {"ray": [], "processes": [], "bulky": [], "bulky_actors": [],
                                                   "ray_actors": [], "in_driver": [], "in_actors": []}
    cluster.start()
    try:
        for r in range(args.rounds):
            order = arms if r % 2 == 0 else arms[::-1]  # no arm always runs first
            for arm in order:
                spans[arm].append(sleepy_arm(cluster, Path(tempfile.mkdtemp(dir=root)), sleepy, arm, args.batch))
            light = ("ray", "ray_actors") if args.shards_only else ("ray", "processes", "ray_actors")
            light = light if args.trivial else ()
            for arm in light if r % 2 == 0 else light[::-1]:
                engine, extra = ("processes", ()) if arm == "processes" else ("ray", SHARDS[arm.endswith("actors")])
                rates[arm].append(trivial_arm(cluster, Path(tempfile.mkdtemp(dir=root)), trivial, engine,
                                              args.trivial, extra=extra))
            for arm in ("bulky", "bulky_actors")[::1 if r % 2 == 0 else -1] if args.bulky else ():
                rates[arm].append(trivial_arm(cluster, Path(tempfile.mkdtemp(dir=root)), bulky, "ray", args.bulky,
                                              "scalefns:bulky", commit_every=200,
                                              extra=(*SHARDS[arm.endswith("actors")], "--param", f"kb={args.kb}")))
            for arm in ("in_driver", "in_actors")[::1 if r % 2 == 0 else -1] if heavy else ():
                rates[arm].append(heavy_in_arm(cluster, Path(tempfile.mkdtemp(dir=root)), heavy, args.heavy_in,
                                               arm == "in_actors"))
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
    report(spans, rates, args)


def spread(values: list[float], fmt: str = "{:.2f}") -> str:
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def report(spans: dict[str, list[float]], rates: dict[str, list[tuple[float, float, float]]], args) -> None:
    if spans:
        print_spans(spans, args)
    if rates["ray"]:
        print_trivial(rates, args)
    if rates["bulky"]:
        print(f"\nbulky outputs ({args.kb} KB per item, {args.bulky:,} items), 2 Ray workers: MB/s of output\n")
        print("| shards written by | steady (between commits) | end to end | driver CPU ms per MB |")
        print("| --- | ---: | ---: | ---: |")
        for arm, who in (("bulky", "the driver"), ("bulky_actors", "the actors")):
            mb = [(s * args.kb / 1024, e * args.kb / 1024) for s, e, _ in rates[arm]]
            cpu = [c / (args.bulky * args.kb / 1024) * 1000 for *_, c in rates[arm]]  # ms per MB of output
            print(f"| {who} | {spread([s for s, _ in mb], '{:.0f}')} | {spread([e for _, e in mb], '{:.0f}')} | "
                  f"{spread(cpu, '{:.1f}')} |")
        ratio = [a[0] / d[0] for a, d in zip(rates["bulky_actors"], rates["bulky"], strict=True)]
        print(f"\nactors / driver, steady: {spread(ratio, '{:.2f}')}")
    if rates["in_driver"]:
        print_inputs(rates, args)


def print_inputs(rates: dict[str, list[tuple[float, ...]]], args) -> None:
    mb = args.heavy_in * args.in_kb / 1024
    print(f"\nheavy inputs ({args.in_kb} KB per row, {args.heavy_in:,} rows, {mb:.0f} MB Parquet), 2 Ray workers\n")
    print("| records read by | MB/s steady | MB/s end to end | driver CPU ms per MB | driver MB read |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for arm, who in (("in_driver", "the driver"), ("in_actors", "the actors (--ray-reads actors)")):
        values = rates[arm]
        print(f"| {who} | {spread([v[0] * args.in_kb / 1024 for v in values], '{:.0f}')} | "
              f"{spread([v[1] * args.in_kb / 1024 for v in values], '{:.0f}')} | "
              f"{spread([v[2] / mb * 1000 for v in values], '{:.1f}')} | "
              f"{spread([v[3] / 2**20 for v in values], '{:.0f}')} |")
    ratio = [a[0] / d[0] for a, d in zip(rates["in_actors"], rates["in_driver"], strict=True)]
    print(f"\nactors read / driver reads, steady: {spread(ratio, '{:.2f}')}")


def print_trivial(rates: dict[str, list[tuple[float, float, float]]], args) -> None:
    print(f"\ntrivial items ({args.trivial:,}), 2 workers: items/s\n")
    print("| engine | steady (between commits) | end to end | driver CPU us per item |")
    print("| --- | ---: | ---: | ---: |")
    for engine in ("ray", "processes", "ray_actors"):
        if values := rates[engine]:
            steady, end = spread([v[0] for v in values], "{:,.0f}"), spread([v[1] for v in values], "{:,.0f}")
            cpu = spread([v[2] / args.trivial * 1e6 for v in values], "{:.0f}")
            print(f"| {engine} | {steady} | {end} | {cpu} |")
    if rates["processes"]:
        ratio = [r[0] / p[0] for r, p in zip(rates["ray"], rates["processes"], strict=True)]
        print(f"\nray / processes, steady: {spread(ratio, '{:.2f}')}")
    ratio = [a[0] / d[0] for a, d in zip(rates["ray_actors"], rates["ray"], strict=True)]
    print(f"ray actors-write / driver-writes, trivial, steady: {spread(ratio, '{:.2f}')}")


def print_spans(spans: dict[str, list[float]], args) -> None:
    items = args.calls * args.batch
    print(f"\n{args.calls} calls of 50 ms ({items} items, {args.batch} per call); median (min-max) over "
          f"{args.rounds} interleaved rounds\n")
    print("| arm | work span s | speed-up vs 1 |")
    print("| --- | ---: | ---: |")
    for kind in ("ray", "rank"):
        if f"{kind}1" not in spans:
            continue
        one, two = spans[f"{kind}1"], spans[f"{kind}2"]
        print(f"| {kind} x1 | {spread(one)} | 1 |")
        print(f"| {kind} x2 | {spread(two)} | {spread([a / b for a, b in zip(one, two, strict=True)])} |")

if __name__ == "__main__":
    main()
