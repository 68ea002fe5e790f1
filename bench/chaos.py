"""Chaos: a job under --supervise, its runner SIGKILLed at random moments and the supervisor SIGTERMed a few
times. Checks that every key ends up exactly once and equal to a reference loop, and reports how many items ran
more than once against the bound the commit policy promises. The kills never build a crash loop on purpose:
after two restarts in a row without progress (the supervisor gives up at three, as it should for a job that cannot
start) the next attempt is let commit something before it is killed; the result counts those deferred kills.

    python bench/chaos.py                      # 50,000 items, 100 kills (a few minutes)
    python bench/chaos.py --items 20000 --kills 20 --terms 2
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:  # imported as a module by the suite's chaos test: chaosfns sits beside this file
    sys.path.insert(0, str(BENCH))
import chaosfns  # noqa: E402

from durabatch.store.ledger import Ledger  # noqa: E402
from durabatch.store.rundir import RunDir, lock_holder  # noqa: E402
from durabatch.supervise import STALL_LIMIT  # noqa: E402


def chaos(items: int, kills: int, terms: int, workdir: Path, seed: int = 1, commit_every: int = 500,
          item_ms: float = 0.2, verbose: bool = True) -> dict:
    data = workdir / "data.jsonl"
    data.write_text("".join(json.dumps({"id": i}) + "\n" for i in range(items)))
    executions = workdir / "executions.txt"
    run_dir = workdir / "run"
    env = {**os.environ, "PYTHONPATH": str(BENCH), "EXECUTIONS_FILE": str(executions),
           "ITEM_SECONDS": str(item_ms / 1000)}
    command = [sys.executable, "-m", "durabatch", "run", "-i", str(data), "--key", "id",
               "--fn", "chaosfns:counted_digest", "--run-dir", str(run_dir), "--commit-every", str(commit_every),
               "--commit-seconds", "0.5", "--supervise", "--restart-delay", "0.05", "--progress", "off"]
    rng = random.Random(seed)
    term_at = set(rng.sample(range(kills), min(terms, kills)))
    done_kills = done_terms = launches = deferred = 0
    t0 = time.monotonic()
    while True:
        supervisor = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        launches += 1
        while supervisor.poll() is None and done_kills + done_terms < kills:
            time.sleep(rng.uniform(0.05, 0.6))
            running = (lock_holder(RunDir(run_dir)) or 0) > 0  # before that the supervisor has no handler yet
            if done_kills + done_terms in term_at and supervisor.poll() is None and running:
                supervisor.send_signal(signal.SIGTERM)  # graceful: the runner drains, commits, exits 75
                term_at.discard(done_kills + done_terms)
                done_terms += 1
                break
            pid = lock_holder(RunDir(run_dir))
            if pid and pid > 0 and on_the_brink(run_dir):
                # Two restarts in a row made no progress: a third would be the supervisor's crash-loop verdict
                # (right for a job that cannot start, wrong for this one). Let this attempt commit first.
                pid = after_progress(run_dir, supervisor)
                deferred += 1
            if pid and pid > 0:
                try:
                    os.kill(pid, signal.SIGKILL)
                    done_kills += 1
                except ProcessLookupError:
                    pass
        code = supervisor.wait(timeout=600)
        if code == 0:
            break
        if code not in (0, 75):
            raise SystemExit(f"supervisor ended with {code}; see {run_dir}/logs/supervise.log")
    elapsed = time.monotonic() - t0
    out = workdir / "out.parquet"
    subprocess.run([sys.executable, "-m", "durabatch", "export", str(run_dir), "--to", str(out)], env=env, check=True,
                   capture_output=True)
    table = pq.read_table(out)
    ids = table.column("id").to_pylist()
    reference = [chaosfns.digest({"id": i})["digest"] for i in range(items)]
    counts = collections.Counter(executions.read_text().split())
    repeated = sum(c - 1 for c in counts.values() if c > 1)
    status = json.loads(subprocess.run([sys.executable, "-m", "durabatch", "status", str(run_dir), "--json"], env=env,
                                       capture_output=True, text=True, check=True).stdout)
    result = {
        "quarantined": status["quarantined"],
        "items": items, "kills": done_kills, "sigterms": done_terms, "supervisor_launches": launches,
        "kills_deferred_until_progress": deferred,
        "exactly_once": ids == list(range(items)) and table.column("digest").to_pylist() == reference
        and status["quarantined"] == 0,
        "executions": sum(counts.values()), "re_executions": repeated,
        "bound_per_kill": 2 * commit_every + 1000, "seconds": round(elapsed, 1),
    }
    result["bound_total"] = result["bound_per_kill"] * done_kills
    if verbose:
        print(json.dumps(result, indent=2))
    return result


def on_the_brink(run_dir: Path) -> bool:
    """True when the supervisor's last restart was its last chance: one more no-progress death and it gives up."""
    log = run_dir / "logs" / "supervise.log"
    restarts = [line for line in log.read_text().splitlines() if "restarting in" in line] if log.exists() else []
    return bool(restarts) and f"no progress x{STALL_LIMIT - 1})" in restarts[-1]


def after_progress(run_dir: Path, supervisor: subprocess.Popen, timeout: float = 120.0) -> int | None:
    """Wait until the running attempt has committed something; the pid still holding the run then."""
    base = done_count(run_dir)
    limit = time.monotonic() + timeout
    while supervisor.poll() is None and time.monotonic() < limit:
        if done_count(run_dir) > base:
            return lock_holder(RunDir(run_dir))
        time.sleep(0.02)
    return None


def done_count(run_dir: Path) -> int:
    try:
        ledger = Ledger.open_readonly(RunDir(run_dir))
    except Exception:  # noqa: BLE001 - not created yet
        return -1
    try:
        return ledger.count_done()
    finally:
        ledger.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--kills", type=int, default=100)
    parser.add_argument("--terms", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--item-ms", type=float, default=1.0, help="work per item, so that the kills fit in")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = chaos(args.items, args.kills, args.terms, Path(tmp), args.seed, item_ms=args.item_ms)
    raise SystemExit(0 if result["exactly_once"] else 1)


if __name__ == "__main__":
    main()
