"""`--local` for the API recipes: start the bundled OpenAI-compatible test server and point the openai client
at it (no key, no network)."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def local_api(enabled: bool, rpm: float = 3000) -> Iterator[None]:
    if not enabled:
        yield
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from llm_server import LLMServer, ServerConfig

    with LLMServer(ServerConfig(rpm=rpm, latency_median=0.05)) as server:
        os.environ["OPENAI_BASE_URL"] = server.url
        os.environ.setdefault("OPENAI_API_KEY", "sk-local")
        yield
