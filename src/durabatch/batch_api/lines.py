"""The Batch API's JSON lines, both ways: a request line per item (custom_id = the item's key), the cost estimate
made before a chunk is submitted, and each output or error line turned into a response or an item error."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Prices:
    """Per million tokens at the normal price; the provider's batch discount is applied on top."""

    input: float
    output: float
    tokens_out: float = 500  # expected completion tokens when a request states no max_tokens


@dataclass(frozen=True)
class LineResult:
    body: dict | None  # the response body of a successful request
    error_type: str | None = None
    message: str | None = None


def request_line(custom_id: str, body: dict, endpoint: str) -> bytes:
    return (json.dumps({"custom_id": custom_id, "method": "POST", "url": endpoint, "body": body},
                       ensure_ascii=False, separators=(",", ":")) + "\n").encode()


def estimate_cost(body: dict, prices: Prices | None, discount: float) -> float:
    """Input tokens guessed at 4 characters each; output tokens at the request's max_tokens (or the default)."""
    if prices is None:
        return 0.0
    tokens_in = len(json.dumps(body.get("messages", body), ensure_ascii=False)) / 4
    tokens_out = body.get("max_completion_tokens") or body.get("max_tokens") or prices.tokens_out
    return discount * (tokens_in * prices.input + float(tokens_out) * prices.output) / 1e6


def read_results(data: bytes) -> dict[str, LineResult]:
    """custom_id -> result, from an output or error file (a torn or foreign line is skipped)."""
    results = {}
    for raw in data.splitlines():
        try:
            line = json.loads(raw)
        except ValueError:
            continue
        if isinstance(line, dict) and "custom_id" in line:
            results[str(line["custom_id"])] = _result(line)
    return results


def _result(line: dict) -> LineResult:
    response = line.get("response") or {}
    status = response.get("status_code")
    body = response.get("body")
    error = line.get("error")
    if not error and status == 200 and isinstance(body, dict):
        return LineResult(body)
    if not error and isinstance(body, dict):
        error = body.get("error")
    error = error if isinstance(error, dict) else {"message": str(error or f"HTTP {status}")}
    kind = error.get("code") or error.get("type") or (f"HTTP {status}" if status else "BatchRequestError")
    return LineResult(None, str(kind), str(error.get("message") or kind))


def default_output(body: dict) -> dict[str, Any]:
    """Without --parse: the first choice's text, and the whole response as JSON text."""
    content = None
    choices = body.get("choices") or []
    if choices and isinstance(choices[0], dict):
        content = (choices[0].get("message") or {}).get("content")
    return {"content": content, "response": json.dumps(body, ensure_ascii=False)}
