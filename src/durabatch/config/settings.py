"""The job's settings: one pydantic model, loaded from a YAML job file, DURABATCH_* environment variables and
CLI flags with precedence CLI > env > file > defaults. Only the CLI layer reads the environment."""

from __future__ import annotations

import difflib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..errors import ConfigError

ENV_PREFIX = "DURABATCH_"


class JobSettings(BaseModel):
    """Every setting of a job. Descriptions double as CLI help."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    fn: str | None = Field(None, description="The function, as package.module:callable (a class gets setup()).")
    input: list[str] = Field(default_factory=list, description="Input files: JSONL, CSV or Parquet; globs allowed.")
    key: str | None = Field(None, description="Key column; without it each record's content hash is its key.")
    run_dir: str | None = Field(None, description="Run directory: ledger, shards, logs. Re-running resumes it.")
    split: str | None = Field(None, description="Fan out: package.module:fn turning a record into segments; fn runs "
                              "on each, and a record is committed once all its segments are done.")
    combine: str | None = Field(None, description="Fan in: package.module:fn(record, outputs) -> the record's result "
                                "(default: {segments: outputs}).")
    params: dict[str, Any] = Field(default_factory=dict, description="The function's own settings (model name, "
                                   "temperature...), passed to it as keyword arguments: to a class's constructor, "
                                   "or to its setup() when the constructor takes none, or to the function on every "
                                   "call. Part of the job: a resume with other params is refused.")
    batch_size: int | None = Field(
        None, ge=1, description="Call fn with lists of up to N records (a batch function). Unset: one record."
    )
    batch_format: Literal["rows", "columns"] = Field(
        "rows", description="rows: fn gets a list of records; columns: fn gets {field: [values]} and returns "
        "{field: [values]} (or an Arrow table), the shape of HF map(batched=True), read and written in Arrow."
    )
    workers: int = Field(1, ge=1, description="Parallel workers.")
    engine: Literal["inline", "threads", "processes", "asyncio", "ray"] | None = Field(
        None, description="inline (one worker, for debugging), threads, processes, asyncio or ray (a Ray "
        "cluster: actors run batches). Default: asyncio for async functions, inline for one worker, threads "
        "otherwise."
    )
    gpus: str | None = Field(None, description="One process worker per listed GPU on this node, e.g. 0,1,2,3, "
                             "each started with CUDA_VISIBLE_DEVICES set to its device (implies --engine "
                             "processes and sets --workers; a replacement worker keeps the device).")
    ray_address: str | None = Field(None, description="ray engine: the cluster to join (default: RAY_ADDRESS, "
                                    "else a local Ray started for this run).")
    cpus_per_worker: float | None = Field(None, gt=0, description="ray engine: CPUs reserved per actor (default 1).")
    gpus_per_worker: float | None = Field(None, ge=0, description="ray engine: GPUs reserved per actor.")
    ray_shards: Literal["driver", "actors"] = Field(
        "driver", description="ray engine: who writes the result shards. driver: results come back to this "
        "process, which writes them. actors: each actor writes its batch's shard into the run directory (which "
        "must be on storage every node shares) and this process only lists it: for heavy results, where the "
        "driver's bytes are the limit (see docs/benchmarks.md).")
    ray_reads: Literal["driver", "actors"] = Field(
        "driver", description="ray engine: who reads the input's records. driver: this process reads them and "
        "sends them to the actors. actors: this process reads only the --key column and sends positions; each "
        "actor reads its batches' records from the input files itself (JSONL or Parquet on storage every node "
        "shares): for heavy items, where the driver's bytes are the limit (see docs/benchmarks.md).")
    ray_env: list[str] = Field(default_factory=list, description="ray engine: environment variables of this "
                               "process passed to every actor, by name (e.g. OPENAI_API_KEY,HF_HOME): actors "
                               "otherwise see the environment their node's `ray start` had. Not in the job "
                               "fingerprint; the values travel in Ray's runtime env of each actor.")
    rank: int | None = Field(None, ge=0, description="This process's share of the input, 0-based, with --ranks: "
                             "any launcher (Slurm arrays, torchrun, k8s indexed jobs) runs ranks 0..N-1 at once.")
    ranks: int | None = Field(None, ge=1, description="Split the input into N contiguous ranges, each with its "
                              "own ledger and shards under the run directory; status/export/verify/report merge "
                              "them.")
    fresh: bool = Field(False, description="Start over: move an existing run directory aside (renamed with a "
                        "timestamp, never deleted) and run from the beginning.")
    commit_every: int = Field(10_000, ge=1, description="Commit a shard every N finished items (1 = ultra-safe).")
    commit_seconds: float = Field(5.0, gt=0, description="... or every T seconds, whichever comes first.")
    output_format: Literal["parquet", "jsonl"] = Field("parquet", description="Shard format.")
    limit: int | None = Field(None, ge=0, description="Only the first N items (after --start): a test run.")
    start: int | None = Field(None, ge=0, description="First source position to run (0-based).")
    end: int | None = Field(None, ge=0, description="Source position to stop before (exclusive).")
    dedupe: bool = Field(False, description="Keep the first of duplicate keys instead of refusing the input.")
    skip_bad_rows: bool = Field(False, description="Record malformed rows as failures instead of stopping.")
    allow_changed: bool = Field(False, description="Resume even though the function, settings or input changed.")
    max_attempts: int = Field(3, ge=1, description="Attempts per item for transient errors (timeouts, "
                              "connection and rate-limit errors, 5xx), before it is recorded as failed.")
    backoff_base: float = Field(1.0, ge=0, description="Retry backoff: attempt n waits U(0, base * 2**(n-1)) s...")
    backoff_max: float = Field(60.0, ge=0, description="... capped at this many seconds.")
    retry_on: list[str] = Field(default_factory=list, description="Also retry these exception type names.")
    fatal_on: list[str] = Field(default_factory=list, description="Never retry these exception type names.")
    grace_seconds: float = Field(30.0, ge=0, description="On Ctrl-C/SIGTERM, how long in-flight work may finish.")
    max_consecutive_failures: int = Field(50, ge=0, description="Stop (exit 1) after this many items in a row "
                                          "failed with the same error and none succeeded: a typo or an expired "
                                          "key fails fast (0: never stop).")
    item_timeout: float | None = Field(None, gt=0, description="Seconds an item may take: the processes engine "
                                       "kills and replaces the stuck worker; inline interrupts the call; threads "
                                       "cannot be stopped (use processes).")
    max_worker_memory: str | None = Field(None, description="Kill a worker process above this resident memory "
                                          "(e.g. 4GB) and pin it on its item (processes engine).")
    at_most_once: bool = Field(False, description="For calls with side effects that must never repeat: a durable "
                               "started mark before each call; an interrupted item is reported, never re-called.")
    max_memory: str | None = Field(None, description="RAM limit for the job and its workers (e.g. 80GB): warn "
                                   "near it, pause dispatch above it.")
    max_gpu_memory: str | None = Field(None, description="The same for GPU memory (NVML, or torch when loaded).")
    cleanup_every: int = Field(0, ge=0, description="Every N batches per worker: gc.collect() and "
                               "torch.cuda.empty_cache() when torch is loaded (0: never).")
    quarantine_after: int = Field(3, ge=1, description="Quarantine an item after it killed its worker or the "
                                  "runner this many times, running alone.")
    supervise: bool = Field(False, description="Run the job in a child process and restart it after an abnormal "
                            "death (signal, OOM kill), until done or a crash loop (CLI only).")
    restarts: int | None = Field(None, ge=0, description="Supervise, restarting at most N times.")
    restart_delay: float = Field(1.0, ge=0, description="Seconds before a restart (doubling while no progress).")
    concurrency: int = Field(16, ge=1, description="asyncio engine: calls in flight at most (adapts down on 429s).")
    rpm: float | None = Field(None, gt=0, description="Requests per minute, shared by all workers. Unset: found "
                              "from the provider's 429s.")
    tpm: float | None = Field(None, gt=0, description="Tokens per minute (estimated per item, corrected by the "
                              "usage the function reports).")
    tokens_per_item: float = Field(500, gt=0, description="Token estimate per item for --tpm and budgets.")
    limits: dict[str, dict[str, float]] = Field(default_factory=dict, description="Named limits, e.g. "
                                                "{gpt: {rpm: 500}, claude: {rpm: 50, tpm: 40000}} (job file).")
    limit_by: str | None = Field(None, description="Record field naming which of --limits applies to it.")
    price_input: float | None = Field(None, ge=0, description="Price per million input tokens, for the cost shown.")
    price_output: float | None = Field(None, ge=0, description="Price per million output tokens.")
    currency: str = Field("USD", description="The currency of --price-input/--price-output, shown with costs.")
    max_tokens: int | None = Field(None, gt=0, description="Budget: stop (exit 75) before using more tokens.")
    max_cost: float | None = Field(None, gt=0, description="Budget: stop (exit 75) before spending more.")
    deadline: str | None = Field(None, description="Stop in time before this long after the start (11h30m, 90m): "
                                 "finish in-flight work, commit, exit 75.")
    deadline_at: str | None = Field(None, description="The same at a wall-clock time (ISO 8601). Under Slurm the "
                                    "job's end time is a deadline too.")
    progress: Literal["auto", "bar", "plain", "off"] = Field(
        "auto", description="auto: a live bar on a terminal, a plain line every few seconds elsewhere."
    )
    log_every: float = Field(10.0, gt=0, description="Seconds between plain progress lines.")
    batch_api: Literal["openai"] | None = Field(None, description="Send the items through the provider's Batch "
                                                "API (half price, results within 24 h): fn(record) returns one "
                                                "request body; needs --key (each request's custom_id).")
    parse: str | None = Field(None, description="Batch API: package.module:fn(record, response) -> the item's "
                              "result (default: the answer's text and the whole response as JSON).")
    batch_requests: int | None = Field(None, ge=1, description="Batch API: at most N requests per batch (the "
                                       "provider's limit otherwise).")
    batch_poll: float = Field(60.0, gt=0, description="Batch API: longest wait between polls of the batches "
                                "(seconds; polls back off up to it).")

    @field_validator("input", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        if isinstance(value, str):
            return [part for part in value.split(",") if part] if "," in value else [value]
        return [os.fspath(v) if isinstance(v, os.PathLike) else v for v in value]

    @field_validator("retry_on", "fatal_on", "ray_env", mode="before")
    @classmethod
    def _names(cls, value: Any) -> Any:
        """Names as a list, or comma-separated (`--retry-on A,B`, also repeated: `--retry-on A --retry-on B`)."""
        names: list[str] = []
        for v in [value] if isinstance(value, str) else value:
            if isinstance(v, type):
                names.append(v.__name__)
            else:
                names.extend(part.strip() for part in str(v).split(",") if part.strip())
        return names

    @field_validator("params", mode="before")
    @classmethod
    def _params(cls, value: Any) -> Any:
        """A mapping; or `key=value` texts (--param, DURABATCH_PARAMS="a=1,b=x"), each value read as JSON when it
        is JSON (3, 0.5, true, null, "text", [1, 2]) and as text otherwise."""
        if isinstance(value, str):
            value = json.loads(value) if value.lstrip().startswith("{") else [v for v in value.split(",") if v]
        if isinstance(value, list | tuple):
            return dict(parse_param(v) for v in value)
        return value

    @field_validator("run_dir", mode="before")
    @classmethod
    def _path(cls, value: Any) -> Any:
        return os.fspath(value) if isinstance(value, os.PathLike) else value

    def result_affecting(self) -> dict[str, Any]:
        """Settings that change what the output is; the rest (workers, progress...) may change on resume."""
        call = "one record" if self.batch_size is None else f"batches of {self.batch_format}"
        return {"key": self.key, "output_format": self.output_format, "dedupe": self.dedupe, "call": call}


def parse_param(text: Any) -> tuple[str, Any]:
    """'model=gpt-4o' -> ('model', 'gpt-4o'); 'n=3' -> ('n', 3): a value is JSON when it parses as JSON."""
    name, sep, raw = str(text).partition("=")
    if not sep or not name.strip():
        raise ValueError(f"param '{text}': expected key=value, like model=gpt-4o-mini")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return name.strip(), value


FIELDS = tuple(JobSettings.model_fields)

# The sections of `durabatch run --help`, in order (a new setting goes into one of them: tests/test_help.py).
HELP_SECTIONS: dict[str, tuple[str, ...]] = {
    "Input": ("input", "key", "start", "end", "limit", "dedupe", "skip_bad_rows"),
    "Function": ("fn", "params", "batch_size", "batch_format", "split", "combine", "cleanup_every"),
    "Engine": ("engine", "workers", "concurrency", "batch_api", "parse", "batch_requests", "batch_poll"),
    "Scale-out": ("gpus", "ray_address", "cpus_per_worker", "gpus_per_worker", "ray_shards", "ray_reads", "ray_env",
                  "rank", "ranks"),
    "Limits and budgets": ("rpm", "tpm", "tokens_per_item", "limits", "limit_by", "price_input", "price_output",
                           "currency", "max_tokens", "max_cost", "item_timeout", "max_worker_memory", "max_memory",
                           "max_gpu_memory"),
    "Failures": ("max_attempts", "backoff_base", "backoff_max", "retry_on", "fatal_on", "max_consecutive_failures",
                 "quarantine_after", "at_most_once", "supervise", "restarts", "restart_delay"),
    "Output and the run directory": ("run_dir", "fresh", "allow_changed", "output_format", "commit_every",
                                     "commit_seconds", "progress", "log_every"),
    "Stopping": ("grace_seconds", "deadline", "deadline_at"),
}


_SIZE_UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 2**10, "m": 2**20, "mb": 2**20, "g": 2**30, "gb": 2**30,
               "t": 2**40, "tb": 2**40, "kib": 2**10, "mib": 2**20, "gib": 2**30}


def parse_size(text: str | None) -> int | None:
    """'400MB', '4GB', '1.5g' or bytes."""
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(text))
    if not match or match.group(2).lower() not in _SIZE_UNITS:
        raise ConfigError(f"size '{text}': expected a number with a unit, like 400MB or 4GB")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])


_GPU = re.compile(r"\d+|(?:GPU|MIG)-[0-9A-Za-z/-]+")  # what CUDA_VISIBLE_DEVICES takes: an index or a UUID


def parse_gpus(text: str | None) -> list[str]:
    """'0,1,2,3' -> ['0', '1', '2', '3'] (--gpus: one process worker per device); None or '' -> []."""
    devices = [part.strip() for part in str(text or "").split(",") if part.strip()]
    for device in devices:
        if not _GPU.fullmatch(device):
            raise ConfigError(f"gpus '{text}': '{device}' is not a GPU; expected device indices like --gpus 0,1,2,3 "
                              "(or GPU UUIDs)")
    if len(set(devices)) != len(devices):
        raise ConfigError(f"gpus '{text}': a device is listed twice; list each GPU once (one worker per GPU)")
    return devices


def _check_keys(data: Mapping[str, Any], origin: str) -> None:
    for name in data:
        if name not in FIELDS:
            close = difflib.get_close_matches(name, FIELDS, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"{origin}: unknown setting '{name}'.{hint}")


DATA_SUFFIXES = (".jsonl", ".ndjson", ".csv", ".parquet", ".pq")


def read_job_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.suffix.lower() in DATA_SUFFIXES:
        raise ConfigError(f"{path} looks like input data, not a job file: pass it as `--input {path}` (a job file "
                          "is YAML: fn, input, key, run_dir and other settings)")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"job file not found: {path}") from None
    except yaml.YAMLError as exc:  # one line: file:line:column and the problem (PyYAML's own text spans five)
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        context, start = getattr(exc, "context", None), getattr(exc, "context_mark", None)
        if context and start is not None:
            problem += f" ({context} from line {start.line + 1})"
        raise ConfigError(f"{where}: not valid YAML: {problem}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a job file is a mapping of settings, got {type(data).__name__}")
    _check_keys(data, str(path))
    # Relative paths in a job file are relative to the file, like a Makefile's.
    base = path.resolve().parent
    if "input" in data:
        inputs = data["input"] if isinstance(data["input"], list) else [data["input"]]
        data["input"] = [str(base / p) if not os.path.isabs(p) else p for p in inputs]
    if isinstance(data.get("run_dir"), str) and not os.path.isabs(data["run_dir"]):
        data["run_dir"] = str(base / data["run_dir"])
    return data


def read_env(environ: Mapping[str, str]) -> dict[str, Any]:
    data = {}
    for name, value in environ.items():
        if name.startswith(ENV_PREFIX):
            field = name[len(ENV_PREFIX):].lower()
            if field in FIELDS:
                data[field] = value
    return data


def merge(*layers: tuple[str, Mapping[str, Any]]) -> JobSettings:
    """Merge (origin, values) layers, later ones winning; a bad value names the layer it came from."""
    merged: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for origin, values in layers:
        for name, value in values.items():
            if name == "params" and value is not None:  # params merge key by key: --param a=1 keeps the file's b
                try:
                    value = {**merged.get("params", {}), **JobSettings._params(value)}
                except (TypeError, ValueError) as exc:
                    raise ConfigError(f"params (from {origin}): {exc}") from None
            if value is not None:
                merged[name] = value
                origins[name] = origin
    try:
        return JobSettings(**merged)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            name = str(err["loc"][0]) if err["loc"] else "?"
            problems.append(f"{name} = {merged.get(name)!r} (from {origins.get(name, '?')}): {err['msg']}")
        if len(problems) == 1:  # the usual case: one line
            raise ConfigError(f"invalid setting {problems[0]}") from None
        raise ConfigError("invalid settings:\n  " + "\n  ".join(problems)) from None
