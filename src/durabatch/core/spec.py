"""What the core is given: a job made ready by the edge (api.py) out of the settings. Small frozen policies
grouped by concern, each a few fields, instead of one settings object with fifty knobs travelling everywhere.
A new setting touches config/settings.py and one line of api.py's mapping."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..engines.base import Engine
from ..engines.user_fn import Work
from ..policies.limits import Limits
from ..policies.memory import MemoryWatch
from ..policies.retry import RetryPolicy
from ..sources.base import Source
from .events import Observer
from .fanout import FanIn


@dataclass(frozen=True)
class Keys:
    """How items are named, and what a bad or repeated key does."""

    column: str | None = None  # None: each record's content hash is its key
    dedupe: bool = False  # keep the first of duplicate keys instead of refusing the input
    skip_bad_rows: bool = False  # record malformed rows (and rows without a key) as failures

    @property
    def output_column(self) -> str:
        return self.column or "_key"


@dataclass(frozen=True)
class Selection:
    """Which source positions the job covers: [start, end), at most `limit` of them."""

    start: int = 0
    end: int | None = None
    limit: int | None = None
    ranked: bool = False  # one rank's share of a split input: keys are checked in [start, end) only


@dataclass(frozen=True)
class Batching:
    size: int | None = None  # a batch function gets up to `size` records; None: one record per call
    columns: bool = False  # the batch function takes and returns {field: values}
    adaptive: bool = True  # per-record functions go out in chunks of ~20 ms of work (off: one call per batch)


@dataclass(frozen=True)
class CommitPolicy:
    every_items: int = 10_000
    every_seconds: float = 5.0
    output_format: str = "parquet"


@dataclass(frozen=True)
class StopPolicy:
    grace_seconds: float = 30.0  # how long in-flight work may finish after a stop request
    deadline: tuple[float, str] | None = None  # (epoch seconds, where it came from), resolved by the edge
    max_consecutive_failures: int = 50  # final failures of one error type, none succeeding, that stop (0: never)


@dataclass(frozen=True)
class Safety:
    at_most_once: bool = False  # a durable started mark before each call; interrupted items never re-called
    quarantine_after: int = 3  # deaths pinned on an item running alone before it is quarantined
    allow_changed: bool = False  # resume although the fingerprint differs


@dataclass
class Job:
    """Everything one run needs, ready made. `description` is what job.json records (settings, secrets out)."""

    target: Any
    source: Source
    work: Work
    engine: Engine
    fingerprint: dict[str, Any]
    description: dict[str, Any]
    keys: Keys = Keys()
    selection: Selection = Selection()
    batching: Batching = Batching()
    commit: CommitPolicy = CommitPolicy()
    stop: StopPolicy = StopPolicy()
    safety: Safety = Safety()
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    limits: Limits | None = None
    memory: MemoryWatch | None = None
    fanin: FanIn | None = None
    observers: list[Observer] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)  # for the user at the start (e.g. an engine caveat)
