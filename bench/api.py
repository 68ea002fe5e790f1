"""Driving a rate-limited API: 2,000 chat completions against the local OpenAI-compatible server (lognormal
latency, median 50 ms, 5% at 500 ms; 3,000 rpm enforced over 1-second windows, as providers do).

Arms, all in one run: durabatch with --rpm, durabatch with no stated limit (it must find it), the seed 004
pattern (asyncio.gather over fixed batches of 5 under a semaphore of min(rpm // 3, 5)), and an unlimited
streaming pool of 64 that retries 429s at once. The floor is 40 s (2,000 requests at 50/s).

    python bench/api.py [--requests 2000] [--rpm 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rpm", type=float, default=3000)
    args = parser.parse_args()
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
