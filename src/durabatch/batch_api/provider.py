"""What the Batch-API runner asks of a provider: upload a request file, create a batch naming it (with metadata
that says which chunk of which job it is), look a batch up, list batches (newest first), download a file.

OpenAIProvider speaks it with the official openai client (imported when a provider is made). Anthropic's
Message Batches API has the same shape (requests in, a results file out) and would be a sibling here: its
`upload_file` would keep the requests for `create_batch`, which sends them inline."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..errors import ConfigError

TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})


@dataclass(frozen=True)
class BatchInfo:
    """A provider's batch, in the provider-neutral terms the runner uses."""

    id: str
    status: str  # validating, in_progress, finalizing, completed, failed, expired, cancelling, cancelled
    metadata: dict[str, str] = field(default_factory=dict)
    created_at: float = 0.0
    output_file_id: str | None = None
    error_file_id: str | None = None
    counts: dict[str, int] = field(default_factory=dict)  # total, completed, failed
    errors: list[str] = field(default_factory=list)  # why a whole batch failed

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


class Provider(Protocol):
    name: str
    endpoint: str  # what every request line of a batch calls
    max_requests: int  # per batch (file)
    max_bytes: int  # per request file
    discount: float  # batch price / normal price, for the cost estimate

    def upload_file(self, path: Path) -> str:
        """Upload a JSONL request file for batches; its id."""

    def create_batch(self, file_id: str, metadata: dict[str, str]) -> BatchInfo:
        """Create a batch over an uploaded file. Never retried blindly: a lost answer may mean it exists."""

    def get_batch(self, batch_id: str) -> BatchInfo: ...

    def list_batches(self, since: float) -> Iterator[BatchInfo]:
        """Batches newest first, down to those created at `since` (epoch seconds)."""

    def download(self, file_id: str) -> bytes: ...


class OpenAIProvider:
    """The OpenAI Batch API (`/v1/files`, `/v1/batches`): half price, results within 24 h. The client reads
    OPENAI_API_KEY and OPENAI_BASE_URL itself."""

    name = "openai"
    endpoint = "/v1/chat/completions"
    discount = 0.5

    def __init__(self, client: Any = None, max_requests: int = 50_000, max_bytes: int = 190 * 2**20):
        self.max_requests, self.max_bytes = max_requests, max_bytes  # the provider's: 50,000 and 200 MB
        if client is None:
            try:
                from openai import OpenAI
            except ImportError:
                raise ConfigError("--batch-api openai needs the openai client: pip install 'durabatch[openai]'") \
                    from None
            client = OpenAI()
        self.client = client

    def upload_file(self, path: Path) -> str:
        with open(path, "rb") as f:
            return str(self.client.files.create(file=(path.name, f), purpose="batch").id)

    def create_batch(self, file_id: str, metadata: dict[str, str]) -> BatchInfo:
        batch = self.client.with_options(max_retries=0).batches.create(
            input_file_id=file_id, endpoint=self.endpoint, completion_window="24h", metadata=metadata)
        return _info(batch)

    def get_batch(self, batch_id: str) -> BatchInfo:
        return _info(self.client.batches.retrieve(batch_id))

    def list_batches(self, since: float) -> Iterator[BatchInfo]:
        for batch in self.client.batches.list(limit=100):  # pages on by itself, newest first
            if batch.created_at < since:
                return
            yield _info(batch)

    def download(self, file_id: str) -> bytes:
        return bytes(self.client.files.content(file_id).read())


def _info(batch: Any) -> BatchInfo:
    counts = batch.request_counts.model_dump() if batch.request_counts is not None else {}
    errors = [f"{e.code}: {e.message}" + (f" (line {e.line})" if e.line else "")
              for e in (batch.errors.data or [] if batch.errors is not None else [])]
    return BatchInfo(batch.id, batch.status, dict(batch.metadata or {}), float(batch.created_at),
                     batch.output_file_id, batch.error_file_id, counts, errors)


def make_provider(name: str, max_requests: int | None = None) -> Provider:
    """The provider named by --batch-api; `max_requests` lowers the per-batch request limit."""
    if name == "openai":
        provider = OpenAIProvider()
    else:
        raise ConfigError(f"--batch-api {name}: unknown provider (supported: openai)")
    if max_requests is not None:
        provider.max_requests = min(provider.max_requests, max_requests)
    return provider
