"""Driving a rate-limited API: 2,000 chat completions against the local OpenAI-compatible server (lognormal
latency, median 50 ms, 5% at 500 ms; 3,000 rpm enforced over 1-second windows, as providers do).

Arms, all in one run: durabatch with --rpm, durabatch with no stated limit (it must find it), the seed 004
pattern (asyncio.gather over fixed batches of 5 under a semaphore of min(rpm // 3, 5)), and an unlimited
streaming pool of 64 that retries 429s at once. The floor is 40 s (2,000 requests at 50/s).

    python bench/api.py [--requests 2000] [--rpm 3000]

Issue 13 arms (`--issue13 [--runs 5]`, 600 requests at 600 rpm, runs interleaved, medians with min-max): no
stated limit against a continuous-refill bucket (429 share, share of the limit), the same with OpenAI's
x-ratelimit-* headers, a resume after a kill -9 with many calls in flight (rate from the resume's first
request to its end, and from the resume's process start), the seed 004 pattern against the same continuous
refill (for comparison), and the warm-stop latency of an asyncio job (SIGINT/SIGTERM to exit, with nothing in
flight, and with slow calls in flight: time beyond the slowest call in flight).

    python bench/api.py --issue13 --runs 5 [--arms resume stop]

The 429 storm (`--storm OLD_SRC`): 20 s of refusals mid-job, then the rate in the 40 s after, on an older tree
(A, e.g. `git worktree add /tmp/old REV`, then /tmp/old/src) and this one (B), interleaved.

    python bench/api.py --storm /tmp/old/src --runs 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import durabatch
from durabatch.testing import AskAsync, LLMServer, ServerConfig

os.environ.setdefault("OPENAI_API_KEY", "sk-local-bench")


def server_config(rpm: float) -> ServerConfig:
    return ServerConfig(rpm=rpm, window=1.0, latency_median=0.05, latency_sigma=0.3, tail_fraction=0.05,
                        tail_latency=0.5, seed=1)


def questions(n: int) -> list[dict]:
    return [{"id": i, "question": f"Question {i}: pick A, B, C or D."} for i in range(n)]


async def _ask(client, question: str) -> str:
    from openai import APIConnectionError, RateLimitError

    while True:  # the hand-rolled pools retry a 429 (or a dropped connection) at once
        try:
            response = await client.chat.completions.create(
                model="local", messages=[{"role": "user", "content": question}])
            return response.choices[0].message.content
        except (RateLimitError, APIConnectionError):
            await asyncio.sleep(0)


async def seed004(url: str, items: list[dict], rpm: float) -> None:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=url, max_retries=0)
    semaphore = asyncio.Semaphore(min(int(rpm) // 3, 5))

    async def one(item: dict) -> str:
        async with semaphore:
            return await _ask(client, item["question"])

    for start in range(0, len(items), 5):  # each batch waits for its slowest call
        await asyncio.gather(*(one(item) for item in items[start:start + 5]))
    await client.close()


async def unlimited_pool(url: str, items: list[dict], size: int = 64) -> None:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=url, max_retries=0)
    queue: asyncio.Queue = asyncio.Queue()
    for item in items:
        queue.put_nowait(item)

    async def worker() -> None:
        while not queue.empty():
            await _ask(client, queue.get_nowait()["question"])

    await asyncio.gather(*(worker() for _ in range(size)))
    await client.close()


def arm(name: str, n: int, rpm: float) -> dict:
    items = questions(n)
    with LLMServer(server_config(rpm)) as server:
        os.environ["LLM_BASE_URL"] = server.url
        t0 = time.monotonic()
        failed = 0
        if name.startswith("durabatch"):
            limits = {"rpm": rpm} if name == "durabatch --rpm" else {}
            with tempfile.TemporaryDirectory() as tmp:
                summary = durabatch.run(AskAsync, items, key="id", run_dir=tmp, concurrency=64,
                                        progress="off", **limits)
            failed = summary.failed_total + (n - summary.done)
        elif name == "seed 004 pattern":
            asyncio.run(seed004(server.url, items, rpm))
        else:
            asyncio.run(unlimited_pool(server.url, items))
        elapsed = time.monotonic() - t0
        log = server.log
    achieved = n / elapsed * 60
    return {"arm": name, "seconds": elapsed, "share_of_limit": achieved / rpm, "failed": failed,
            "requests_429": len(log.rejections), "share_429": len(log.rejections) / max(1, len(log.arrivals))}


def unstated(n: int, rpm: float, headers: bool) -> dict:
    """No --rpm against a continuous-refill limit (a burst of one second's worth), with or without headers."""
    config = ServerConfig(rpm=rpm, refill="bucket", headers=headers, latency_median=0.05, latency_sigma=0.3,
                          tail_fraction=0.05, tail_latency=0.5, seed=1)
    with LLMServer(config) as server, tempfile.TemporaryDirectory() as tmp:
        os.environ["LLM_BASE_URL"] = server.url
        t0 = time.monotonic()
        summary = durabatch.run(AskAsync, questions(n), key="id", run_dir=tmp, concurrency=64, progress="off")
        elapsed = time.monotonic() - t0
        log = server.log
    return {"share_of_limit": n / elapsed * 60 / rpm, "share_429": len(log.rejections) / len(log.arrivals),
            "requests_429": len(log.rejections), "failed": summary.failed_total + n - summary.done}


def seed004_bucket(n: int, rpm: float) -> dict:
    """The seed 004 pattern against the continuous-refill limit the issue 13 arms use."""
    config = ServerConfig(rpm=rpm, refill="bucket", latency_median=0.05, latency_sigma=0.3, tail_fraction=0.05,
                          tail_latency=0.5, seed=1)
    with LLMServer(config) as server:
        t0 = time.monotonic()
        asyncio.run(seed004(server.url, questions(n), rpm))
        elapsed = time.monotonic() - t0
        log = server.log
    return {"share_of_limit": n / elapsed * 60 / rpm, "share_429": len(log.rejections) / len(log.arrivals),
            "requests_429": len(log.rejections)}


def stop_latency(slow: bool, sig: int) -> dict:
    """A warm stop (SIGINT or SIGTERM) of a running asyncio job, grace 30 s. Not slow: --rpm 3, so after the
    first call every item waits for the limit and nothing is in flight. Slow: every call takes 3 s, 8 at once;
    the stop must wait for them, and only for them (`beyond`: exit minus the end of the slowest call in flight)."""
    latency = 3.0 if slow else 0.05
    config = ServerConfig(latency_median=latency, latency_sigma=0.0, seed=1)
    with LLMServer(config) as server, tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "q.jsonl"
        data.write_text("".join(json.dumps(q) + "\n" for q in questions(200)))
        env = {**os.environ, "LLM_BASE_URL": server.url}
        cmd = [sys.executable, "-m", "durabatch", "run", "-i", str(data), "--key", "id", "--fn",
               "durabatch.testing:AskAsync", "--run-dir", str(Path(tmp) / "r"), "--concurrency", "8",
               "--grace-seconds", "30", "--progress", "off", *(() if slow else ("--rpm", "3"))]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while len(server.log.arrivals) < (8 if slow else 1):
            time.sleep(0.02)
        time.sleep(1.0)  # mid-call (slow), or well after the first call (nothing in flight)
        started = list(server.log.arrivals)
        t_signal = time.monotonic()
        proc.send_signal(sig)
        code = proc.wait(timeout=120)
        t_exit = time.monotonic()
    slowest_end = max(started) + latency if slow else t_signal
    return {"seconds": t_exit - t_signal, "beyond": t_exit - max(slowest_end, t_signal), "exit": code}


STORM = (10.0, 30.0)  # seconds after the first request: every request answered 429 (Retry-After 1 s)
AFTER = 40.0  # seconds after the storm over which the rate is measured


def storm(rpm: float, src: str | None = None) -> dict:
    """No stated limit, continuous refill; 20 s into the job the provider refuses everything for 20 s (an overload,
    a shared quota drained by another job), then answers as before. The figure: requests answered in the 40 s
    after the storm, as a share of the limit. `src`: the durabatch tree the job runs on (A/B of a change)."""
    config = ServerConfig(rpm=rpm, refill="bucket", latency_median=0.05, latency_sigma=0.3, tail_fraction=0.05,
                          tail_latency=0.5, seed=1, reject_from=STORM[0], reject_until=STORM[1],
                          reject_retry_after=1.0)
    with LLMServer(config) as server, tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "q.jsonl"
        data.write_text("".join(json.dumps(q) + "\n" for q in questions(int(rpm / 60 * 200))))
        env = {**os.environ, "LLM_BASE_URL": server.url, **({"PYTHONPATH": src} if src else {})}
        cmd = [sys.executable, "-m", "durabatch", "run", "-i", str(data), "--key", "id", "--fn",
               "durabatch.testing:AskAsync", "--run-dir", str(Path(tmp) / "r"), "--concurrency", "64",
               "--progress", "off"]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while not server.log.arrivals or time.monotonic() - server.log.arrivals[0] < STORM[1] + AFTER:
            time.sleep(0.1)
        proc.kill()
        proc.wait()
        first = server.log.arrivals[0]
        rejected = {at for at, _ in server.log.rejections}
        answered = [at for at in server.log.arrivals if at not in rejected
                    and STORM[1] <= at - first < STORM[1] + AFTER]
    return {"share_after": len(answered) / AFTER * 60 / rpm}


def storm_ab(old_src: str, runs: int) -> None:
    """The storm arm on an older tree (A) and this one (B), interleaved."""
    new_src = str(Path(__file__).resolve().parents[1] / "src")
    shares: dict[str, list[float]] = {"A": [], "B": []}
    for i in range(runs):
        for tree, src in (("A", old_src), ("B", new_src)):
            shares[tree].append(storm(600, src)["share_after"])
        print(f"run {i + 1}: A {shares['A'][-1]:.3f}, B {shares['B'][-1]:.3f}", flush=True)
    print(f"\n| 600 rpm, 429 storm of 20 s (median of {runs}, min-max) | answered in the 40 s after it, share of "
          "the limit |\n| --- | ---: |")
    for tree, src in (("A", old_src), ("B", new_src)):
        print(f"| {tree}: {src} | {median_spread(shares[tree])} |")


def resume(n: int, rpm: float, kill_after: int) -> dict:
    """--rpm stated, concurrency 64: kill -9 the runner once `kill_after` answers came back (up to 256 calls are
    then dispatched and waiting for the limiter), then resume and time the resume."""
    config = ServerConfig(rpm=rpm, refill="bucket", latency_median=0.05, latency_sigma=0.3, tail_fraction=0.05,
                          tail_latency=0.5, seed=1)
    with LLMServer(config) as server, tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "q.jsonl"
        data.write_text("".join(json.dumps(q) + "\n" for q in questions(n)))
        env = {**os.environ, "LLM_BASE_URL": server.url}
        cmd = [sys.executable, "-m", "durabatch", "run", "-i", str(data), "--key", "id", "--fn",
               "durabatch.testing:AskAsync", "--run-dir", str(Path(tmp) / "r"), "--rpm", str(rpm),
               "--concurrency", "64", "--commit-seconds", "1", "--progress", "off"]
        first = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while server.log.ok < kill_after:
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        first.wait()
        t0 = time.monotonic()
        before = len(server.log.arrivals)
        second = subprocess.run(cmd, env=env, capture_output=True, text=True)
        elapsed = time.monotonic() - t0
        arrivals = server.log.arrivals[before:]
        note = next((line for line in second.stderr.splitlines() if "in flight when the last run died" in line), "")
        done = int(note.split("]")[-1].split()[0]) if note else 0
    resumed = [line for line in second.stderr.splitlines() if "resuming:" in line]
    to_go = int(resumed[0].split(",")[-1].split()[0]) if resumed else n
    span = arrivals[-1] - arrivals[0] if len(arrivals) > 1 else elapsed
    return {"share_of_limit": to_go / span * 60 / rpm, "share_from_start": to_go / elapsed * 60 / rpm,
            "suspects": done, "items": to_go, "exit": second.returncode,
            "to_first_request": arrivals[0] - t0 if arrivals else None,
            "after_last_request": t0 + elapsed - arrivals[-1] if arrivals else None}


def median_spread(values: list[float]) -> str:
    return f"{100 * statistics.median(values):.1f}% ({100 * min(values):.1f}-{100 * max(values):.1f})"


def issue13(runs: int, only: set[str] | None = None) -> None:
    arms = {"no limit stated, no headers": lambda i: unstated(600, 600, headers=False),
            "no limit stated, x-ratelimit headers": lambda i: unstated(600, 600, headers=True),
            "resume after kill -9": lambda i: resume(600, 600, kill_after=250),
            "seed 004 pattern": lambda i: seed004_bucket(600, 600),
            "warm stop, nothing in flight": lambda i: stop_latency(False, (signal.SIGINT, signal.SIGTERM)[i % 2]),
            "warm stop, 3 s calls in flight": lambda i: stop_latency(True, (signal.SIGINT, signal.SIGTERM)[i % 2])}
    names = [name for name in arms if only is None or any(word in name for word in only)]
    results: dict[str, list[dict]] = {name: [] for name in names}
    for i in range(runs):  # interleaved: a slow moment of the machine falls on every arm alike
        for name in names:
            results[name].append(arms[name](i))
        print(f"run {i + 1}: " + "; ".join(f"{k}: {json.dumps(v[-1])}" for k, v in results.items()), flush=True)
    print_issue13(results, runs)


def print_issue13(results: dict[str, list[dict]], runs: int) -> None:
    names = list(results)
    print(f"\n| arm (600 requests, 600 rpm, continuous refill; median of {runs}, min-max) | share of the limit | "
          "share of requests answered 429 |")
    print("| --- | ---: | ---: |")
    for name in names:
        rows = results[name]
        if name.startswith("warm stop"):
            continue
        if name.startswith("resume"):
            print(f"| {name} (--rpm 600; {statistics.median([r['suspects'] for r in rows]):.0f} suspects, "
                  f"{statistics.median([r['items'] for r in rows]):.0f} items to go): from its first request | "
                  f"{median_spread([r['share_of_limit'] for r in rows])} | |")
            print(f"| the same, from the resume's process start (first request after "
                  f"{seconds_spread([r['to_first_request'] for r in rows])}) | "
                  f"{median_spread([r['share_from_start'] for r in rows])} | |")
        else:
            print(f"| {name} | {median_spread([r['share_of_limit'] for r in rows])} | "
                  f"{median_spread([r['share_429'] for r in rows])} |")
    stops = [name for name in names if name.startswith("warm stop")]
    if stops:
        print(f"\n| warm stop of an asyncio job, grace 30 s (SIGINT and SIGTERM alternately; median of {runs}, "
              "min-max) | signal to exit | beyond the slowest call in flight |")
        print("| --- | ---: | ---: |")
        for name in stops:
            rows = results[name]
            print(f"| {name} | {seconds_spread([r['seconds'] for r in rows])} | "
                  f"{seconds_spread([r['beyond'] for r in rows])} |")


def seconds_spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} s ({min(values):.2f}-{max(values):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rpm", type=float, default=3000)
    parser.add_argument("--issue13", action="store_true", help="the issue 13 arms only (600 requests, 600 rpm)")
    parser.add_argument("--storm", metavar="OLD_SRC", help="the 429-storm arm, A/B: an older tree's src (from "
                        "`git worktree add /tmp/old REV`) against this one")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--arms", nargs="*", help="issue 13 arms whose name holds one of these words (default: all)")
    args = parser.parse_args()
    if args.storm:
        return storm_ab(args.storm, args.runs)
    if args.issue13:
        return issue13(args.runs, set(args.arms) if args.arms else None)
    rows = []
    for name in ("durabatch --rpm", "durabatch, limit unstated", "seed 004 pattern", "unlimited pool of 64"):
        row = arm(name, args.requests, args.rpm)
        rows.append(row)
        print(f"{name:>26}: {row['seconds']:6.1f} s, {100 * row['share_of_limit']:5.1f}% of the limit, "
              f"{row['failed']} failed, {row['requests_429']:,} answered 429 ({100 * row['share_429']:.1f}%)",
              flush=True)
    print(f"\n| arm ({args.requests:,} requests, {args.rpm:,.0f} rpm) | seconds | share of the limit | failed | "
          "429s | share of requests answered 429 |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['arm']} | {r['seconds']:.1f} | {100 * r['share_of_limit']:.1f}% | {r['failed']} | "
              f"{r['requests_429']:,} | {100 * r['share_429']:.1f}% |")


if __name__ == "__main__":
    main()
