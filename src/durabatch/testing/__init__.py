"""Fakes for testing your own durabatch jobs, in milliseconds and without a network:

    FakeClock        a clock you advance by hand, for the policies that take `clock=` (rate limits, retries)
    Flaky, Poison    wrap your function: transient failures then success; or exit/segfault/hang/raise on keys
    Calls            per-key call counts in a directory, shared by threads, worker processes and runs
    LLMServer        a local OpenAI-compatible server (127.0.0.1): latency, RPM/TPM limits with 429s, faults
    AskAsync/AskSync user functions that ask that server through the official openai client
    BatchServer      a local fake of the OpenAI Batch API (files, batches, states, line errors, pauses)

Nothing here imports openai (or any optional dependency) until it is used."""

from .batch_server import BatchServer, BatchServerConfig
from .fakes import Calls, FakeClock, Flaky, Harm, Poison, PoisonError, TransientError
from .server import AskAsync, AskSync, LLMServer, Log, ServerConfig, answer_for

__all__ = ["AskAsync", "AskSync", "BatchServer", "BatchServerConfig", "Calls",
           "FakeClock", "Flaky", "Harm", "LLMServer", "Log", "Poison", "PoisonError",
           "ServerConfig", "TransientError", "answer_for"]
