"""`--local` for the API recipes: start the bundled OpenAI-compatible test server and point the openai client
at it (no key, no network)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from durabatch.testing import LLMServer, ServerConfig


@contextlib.contextmanager
def local_api(enabled: bool, rpm: float = 3000) -> Iterator[None]:
    if not enabled:
        yield
        return
    with LLMServer(ServerConfig(rpm=rpm, latency_median=0.05)) as server:
        os.environ["OPENAI_BASE_URL"] = server.url
        os.environ.setdefault("OPENAI_API_KEY", "sk-local")
        yield
