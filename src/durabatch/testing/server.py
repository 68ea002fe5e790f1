"""A local OpenAI-compatible server for tests, benchmarks and examples: /v1/chat/completions with a
configurable latency distribution, RPM/TPM limits enforced per window with 429 + Retry-After, injectable
errors (500s, hangs, malformed JSON), deterministic answers and `usage`. Binds 127.0.0.1 only.

Why: an API job's hard parts (429 bursts, Retry-After, budgets, a hanging call) cannot be tested against a real
provider cheaply or repeatably. Standard library only; the openai client is imported by AskAsync/AskSync when
a worker sets them up, never at import time.

    python -m durabatch.testing.server --rpm 3000 --port 8011     # serve until Ctrl-C
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from ..policies.limits import report_headers


@dataclass
class ServerConfig:
    rpm: float | None = None  # requests per minute, enforced per `window` seconds (as providers do)
    tpm: float | None = None
    window: float = 1.0
    refill: str = "window"  # "window": fixed windows; "bucket": continuous refill, a burst of one window's worth
    headers: bool = False  # send x-ratelimit-limit/remaining/reset-requests (OpenAI's names) with every answer
    latency_median: float = 0.05  # lognormal
    latency_sigma: float = 0.3
    tail_fraction: float = 0.0  # this share of requests take tail_latency instead
    tail_latency: float = 0.5
    error_rate: float = 0.0  # 500s
    hang_rate: float = 0.0  # never answer (until hang_seconds)
    hang_seconds: float = 30.0
    malformed_rate: float = 0.0  # 200 with a body that is not JSON
    reject_until: float = 0.0  # answer 429 to everything for this many seconds from the first request (a burst
    # that meets a client under way, whatever its start-up took)
    reject_from: float = 0.0  # ... starting this many seconds after the first request (a storm mid-job)
    reject_retry_after: float | None = None  # the storm's Retry-After (None: the time left of it)
    seed: int = 0
    # the reply text for a prompt (default "Answer: <A-D>" from answer_for): lets a recipe bring its own "model"
    answer: Callable[[str], str] | None = None


@dataclass
class Log:
    arrivals: list[float] = field(default_factory=list)
    rejections: list[tuple[float, float]] = field(default_factory=list)  # (time, retry_after)
    ok: int = 0
    errors: int = 0


def answer_for(prompt: str) -> str:
    """The deterministic answer to a prompt: one of A-D, from its hash."""
    return "ABCD"[hashlib.sha256(prompt.encode()).digest()[0] % 4]


class LLMServer:
    """The server in a background thread: `with LLMServer(ServerConfig(rpm=600)) as s: ... s.url ... s.log`.
    port=0 picks a free port; `url` ends in /v1, ready for the openai client's base_url."""

    def __init__(self, config: ServerConfig | None = None, port: int = 0):
        self.config = config or ServerConfig()
        self.log = Log()
        self._rng = random.Random(self.config.seed)
        self._lock = threading.Lock()
        self._window_start = 0.0
        self._window_requests = 0
        self._window_tokens = 0.0
        self._bucket_at = time.monotonic()
        self._requests_level = (self.config.rpm or 0) * self.config.window / 60  # bucket mode: full at start
        self._tokens_level = (self.config.tpm or 0) * self.config.window / 60
        self.started = time.monotonic()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> LLMServer:
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.started = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    # -- the rules ---------------------------------------------------------------------------------------------
    def admit(self, tokens: float) -> float | None:
        """None to serve the request, else the Retry-After (seconds) of a 429."""
        c = self.config
        with self._lock:
            now = time.monotonic()
            self.log.arrivals.append(now)
            first = self.log.arrivals[0]
            if c.reject_from <= now - first < c.reject_until:
                wait = c.reject_until - (now - first)
                if c.reject_retry_after is not None:
                    wait = min(wait, c.reject_retry_after)
                self.log.rejections.append((now, wait))
                return wait
            if c.refill == "bucket":
                return self._admit_bucket(now, tokens)
            if now - self._window_start >= c.window:
                self._window_start = now - (now - self.started) % c.window
                self._window_requests = 0
                self._window_tokens = 0.0
            over_requests = c.rpm is not None and self._window_requests + 1 > c.rpm * c.window / 60
            over_tokens = c.tpm is not None and self._window_tokens + tokens > c.tpm * c.window / 60
            if over_requests or over_tokens:
                wait = max(0.001, self._window_start + c.window - now)
                self.log.rejections.append((now, wait))
                return wait
            self._window_requests += 1
            self._window_tokens += tokens
            return None

    def _admit_bucket(self, now: float, tokens: float) -> float | None:
        """Continuous refill (under the lock): rpm/60 requests a second, up to one window's worth saved up."""
        c = self.config
        self._refill(now)
        waits = []
        if c.rpm is not None and self._requests_level < 1:
            waits.append((1 - self._requests_level) * 60 / c.rpm)
        if c.tpm is not None and self._tokens_level < tokens:
            waits.append((tokens - self._tokens_level) * 60 / c.tpm)
        if waits:
            self.log.rejections.append((now, max(waits)))
            return max(waits)
        self._requests_level -= 1
        self._tokens_level -= tokens
        return None

    def _refill(self, now: float) -> None:
        c = self.config
        elapsed, self._bucket_at = now - self._bucket_at, now
        if c.rpm is not None:
            self._requests_level = min(c.rpm * c.window / 60, self._requests_level + elapsed * c.rpm / 60)
        if c.tpm is not None:
            self._tokens_level = min(c.tpm * c.window / 60, self._tokens_level + elapsed * c.tpm / 60)

    def limit_headers(self) -> dict[str, str]:
        """x-ratelimit-*-requests as OpenAI sends them (limit per minute; remaining now; time to a full quota)."""
        c = self.config
        if not c.headers or c.rpm is None:
            return {}
        with self._lock:
            now = time.monotonic()
            if c.refill == "bucket":
                self._refill(now)
                remaining = self._requests_level
                reset = (c.rpm * c.window / 60 - remaining) * 60 / c.rpm
            else:
                remaining = c.rpm * c.window / 60 - self._window_requests
                reset = max(0.0, self._window_start + c.window - now)
        return {"x-ratelimit-limit-requests": str(int(c.rpm)),
                "x-ratelimit-remaining-requests": str(max(0, int(remaining))),
                "x-ratelimit-reset-requests": f"{reset:.3f}s"}

    def latency(self) -> float:
        """How long to take over this answer: lognormal around latency_median, or the tail latency."""
        c = self.config
        with self._lock:
            if self._rng.random() < c.tail_fraction:
                return c.tail_latency
            return c.latency_median * math.exp(self._rng.gauss(0, c.latency_sigma))

    def fault(self) -> str | None:
        """The injected failure for this request, drawn from the configured rates: error, hang, malformed."""
        c = self.config
        with self._lock:
            r = self._rng.random()
        if r < c.error_rate:
            return "error"
        if r < c.error_rate + c.hang_rate:
            return "hang"
        if r < c.error_rate + c.hang_rate + c.malformed_rate:
            return "malformed"
        return None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # quiet
                pass

            def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                try:
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client went away (killed, or gave up waiting): nobody to answer

            def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
                length = int(self.headers.get("Content-Length", 0))
                request = json.loads(self.rfile.read(length) or b"{}")
                if not self.path.endswith("/chat/completions"):
                    return self._send(404, b'{"error": {"message": "not found"}}')
                prompt = "\n".join(str(m.get("content", "")) for m in request.get("messages", []))
                prompt_tokens = len(prompt) // 4 + 1
                retry_after = server.admit(prompt_tokens + 5)
                if retry_after is not None:
                    body = json.dumps({"error": {"message": "Rate limit reached", "type": "rate_limit_exceeded",
                                                 "code": "rate_limit_exceeded"}}).encode()
                    return self._send(429, body, {"retry-after": f"{retry_after:.3f}",
                                                  "retry-after-ms": str(int(retry_after * 1000)),
                                                  "x-ratelimit-reset-requests": f"{retry_after:.3f}s",
                                                  **{k: v for k, v in server.limit_headers().items()
                                                     if k != "x-ratelimit-reset-requests"}})
                fault = server.fault()
                time.sleep(server.latency() if fault != "hang" else server.config.hang_seconds)
                if fault == "error":
                    server.log.errors += 1
                    return self._send(500, b'{"error": {"message": "internal error", "type": "server_error"}}')
                if fault == "malformed":
                    return self._send(200, b'{"id": "chatcmpl-x", "choices": [')
                content = server.config.answer(prompt) if server.config.answer else f"Answer: {answer_for(prompt)}"
                body = {
                    "id": "chatcmpl-" + hashlib.sha256(prompt.encode()).hexdigest()[:12], "object": "chat.completion",
                    "created": int(time.time()), "model": request.get("model", "local"),
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": content}}],
                    "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(content) // 4 + 1,
                              "total_tokens": prompt_tokens + len(content) // 4 + 1},
                }
                server.log.ok += 1
                self._send(200, json.dumps(body).encode(), server.limit_headers())

        return Handler


class AskAsync:
    """A user function for the local server: asks record["question"], returns the answer letter and `usage`.
    One AsyncOpenAI client per worker (built in setup(), closed in teardown()), no client retries so that
    durabatch's own 429 and retry handling is what gets exercised. Base URL: LLM_BASE_URL, else the openai
    client's own OPENAI_BASE_URL."""

    def setup(self) -> None:
        from openai import AsyncOpenAI

        self.client = AsyncOpenAI(base_url=os.environ.get("LLM_BASE_URL"), max_retries=0, timeout=30)

    async def __call__(self, record: dict) -> dict:
        raw = await self.client.chat.completions.with_raw_response.create(
            model="local", messages=[{"role": "user", "content": record["question"]}])
        report_headers(raw.headers)  # the provider's x-ratelimit-* headers: a limit known before any 429
        response = raw.parse()
        return {"answer": response.choices[0].message.content[-1], "usage": response.usage.model_dump()}

    async def teardown(self) -> None:
        await self.client.close()  # in the engine's loop, before it stops: no "Event loop is closed" later


class AskSync:
    """AskAsync with the sync client, for the threads and processes engines."""

    def setup(self) -> None:
        from openai import OpenAI

        self.client = OpenAI(base_url=os.environ.get("LLM_BASE_URL"), max_retries=0, timeout=30)

    def __call__(self, record: dict) -> dict:
        raw = self.client.chat.completions.with_raw_response.create(
            model="local", messages=[{"role": "user", "content": record["question"]}])
        report_headers(raw.headers)
        response = raw.parse()
        return {"answer": response.choices[0].message.content[-1], "usage": response.usage.model_dump()}

    def teardown(self) -> None:
        self.client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8011)
    parser.add_argument("--rpm", type=float)
    parser.add_argument("--tpm", type=float)
    parser.add_argument("--latency", type=float, default=0.05)
    args = parser.parse_args()
    with LLMServer(ServerConfig(rpm=args.rpm, tpm=args.tpm, latency_median=args.latency), port=args.port) as s:
        print(f"serving {s.url}", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
