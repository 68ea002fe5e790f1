"""A/B of two source trees of durabatch on the same overhead arms: did a change (a refactor, a new check) cost
speed? Each round runs every arm once per tree, interleaved, in fresh subprocesses (bench/overhead.py --child);
the report is the median work seconds per tree and the median of the per-round ratios B/A, with their spread.

    git worktree add /tmp/old <commit>
    python bench/ab.py /tmp/old/src src --arms bare,durabatch,durabatch_columns --n 1000000 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

OVERHEAD = Path(__file__).resolve().parent / "overhead.py"


def once(src: str, arm: str, n: int) -> float:
    work = tempfile.mkdtemp(prefix=f"ab-{arm}-")
    try:
        env = {**os.environ, "PYTHONPATH": str(Path(src).resolve()), "PYTHONHASHSEED": "0"}
        out = subprocess.run([sys.executable, str(OVERHEAD), "--child", arm, "--n", str(n), "--work", work],
                             env=env, capture_output=True, text=True, check=True).stdout
        return float(json.loads(out.strip().splitlines()[-1])["seconds"])
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", help="source folder of tree A (holding durabatch/), the baseline")
    parser.add_argument("b", help="source folder of tree B")
    parser.add_argument("--arms", default="bare,durabatch,durabatch_columns")
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    arms = args.arms.split(",")
    seconds: dict[tuple[str, str], list[float]] = {}
    for r in range(args.rounds):
        for arm in arms:
            order = ("a", "b") if r % 2 == 0 else ("b", "a")  # neither tree always runs first
            for tree in order:
                seconds.setdefault((arm, tree), []).append(once(getattr(args, tree), arm, args.n))
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    print(f"| arm | items | A median s | B median s | B/A median (min-max over {args.rounds} rounds) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for arm in arms:
        a, b = seconds[(arm, "a")], seconds[(arm, "b")]
        ratios = [y / x for x, y in zip(a, b, strict=True)]
        print(f"| {arm} | {args.n:,} | {statistics.median(a):.2f} | {statistics.median(b):.2f} | "
              f"{statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f}) |")


if __name__ == "__main__":
    main()
