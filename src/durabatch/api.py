"""The edge of the library: `run()` turns settings into a ready-made Job (small frozen policies, the engine, the
observers) and executes it under the run lock. The core never sees the settings model; a new setting touches
config/settings.py and one line of `make_job` below."""

from __future__ import annotations

import functools
import os
import time
from typing import Any

from . import environment
from .config.job import check_params, code_hash, fingerprint
from .config.settings import JobSettings, merge, parse_size
from .core.events import Observer
from .core.fanout import Combine, FanIn, Split, default_combine
from .core.runner import Run, RunSummary
from .core.spec import Batching, CommitPolicy, Job, Keys, Safety, Selection, StopPolicy
from .engines import make_engine
from .engines.resolve import resolve
from .engines.user_fn import Work, is_async_target
from .errors import ConfigError, install_redaction
from .observe.logs import RunLog
from .observe.progress import make_progress
from .observe.resources import sample
from .policies.limits import ApiMetrics, Limits, LimitSpec
from .policies.memory import MemoryWatch
from .policies.retry import RetryPolicy, full_jitter, make_retryable
from .policies.stopping import wall_deadline
from .sources import Source, open_source
from .store.ledger import ItemState, Ledger
from .store.rundir import RunDir, run_lock


def run(fn: Any, source: Any = None, *, key: str | None = None, run_dir: str | None = None,
        batch_size: int | None = None, workers: int = 1, engine: str | None = None,
        split: Split | None = None, combine: Combine | None = None,
        observers: list[Observer] | None = None, **settings: Any) -> RunSummary:
    """Run fn over source as a durable job in run_dir; re-running the same call resumes.

    fn: a function (record -> dict), a batch function (with batch_size: records -> list; with also
    batch_format="columns": {field: values} -> {field: values}), a class (instantiated once per worker, setup()
    called) or "package.module:name". split(record) -> segments makes fn run on each
    segment, and combine(record, outputs) -> result groups them back (one committed row per input).
    Other settings: see JobSettings. Ctrl-C commits what is finished, then raises KeyboardInterrupt."""
    values = {"key": key, "run_dir": run_dir, "batch_size": batch_size, "workers": workers, "engine": engine,
              **settings}
    config = merge(("arguments", {k: v for k, v in values.items() if v is not None}))
    summary = run_job(fn, source, config, observers or [], split, combine)
    if summary.stopped == "SIGINT":
        # Ctrl-C stops the script too, as anywhere else in Python; what was finished is committed first.
        raise KeyboardInterrupt(str(summary))
    return summary


def run_job(fn: Any, source: Any, settings: JobSettings, observers: list[Observer], split: Any = None,
            combine: Any = None) -> RunSummary:
    if settings.run_dir is None:
        raise ConfigError("run_dir is required: where the ledger and results of this job live")
    target = resolve(fn) if isinstance(fn, str) else fn
    if target is None:
        raise ConfigError("fn is required: package.module:callable")
    fanin = _fan_in(settings, split, combine)
    install_redaction(environment.secret_values())  # secrets in the environment never reach the ledger
    deadline = wall_deadline(settings.deadline, settings.deadline_at, time.time(), environment.slurm_end_time())
    src = open_source(source if source is not None else settings.input or _missing_input())
    rd = RunDir(settings.run_dir)
    rd.create()
    with run_lock(rd):
        if settings.batch_api:
            return _run_batch_api(target, src, settings, rd, observers)
        job = make_job(target, src, settings, rd, observers, fanin, deadline)
        ledger = Ledger.open(rd)
        try:
            if job.limits is not None:  # a resumed run starts near the rate an earlier run learned
                job.limits.seed(ledger.get_meta("learned_limits"))
            return Run(job, rd, ledger).execute()
        finally:
            ledger.close()


def make_job(target: Any, source: Source, s: JobSettings, rd: RunDir, observers: list[Observer],
             fanin: FanIn | None, deadline: tuple[float, str] | None) -> Job:
    """Settings -> policies: the one mapping from the settings model to what the core is given."""
    engine_name = s.engine or ("asyncio" if is_async_target(target) else "inline" if s.workers == 1 else "threads")
    limits = _limits(s, engine_name)
    messages = []
    if s.item_timeout and engine_name == "threads":
        messages.append("--item-timeout is not enforced on the threads engine (a thread cannot be stopped); use "
                        "--engine processes")
    check_params(target, s.params, s.batch_size is not None)
    fp = fingerprint(target, s, source.identity())
    if fanin is not None:
        fp["fan_out"] = {"split": code_hash(fanin.split_fn), "combine": code_hash(fanin.combine_fn)}
    progress = make_progress(s.progress, s.log_every)
    return Job(
        target=target, source=source, fingerprint=fp, description=s.model_dump(),
        work=Work(target, s.batch_size is not None, s.cleanup_every, columns=s.batch_format == "columns",
                  params=s.params),
        engine=make_engine(engine_name, s.workers, s.item_timeout, parse_size(s.max_worker_memory), s.concurrency,
                           limits),
        keys=Keys(s.key, s.dedupe, s.skip_bad_rows),
        selection=Selection(s.start or 0, s.end, s.limit),
        batching=Batching(s.batch_size, s.batch_format == "columns", adaptive=not s.at_most_once),
        commit=CommitPolicy(s.commit_every, s.commit_seconds, s.output_format),
        stop=StopPolicy(s.grace_seconds, deadline, s.max_consecutive_failures),
        safety=Safety(s.at_most_once, s.quarantine_after, s.allow_changed),
        retry=RetryPolicy(s.max_attempts, full_jitter(s.backoff_base, s.backoff_max),
                          make_retryable(s.retry_on, s.fatal_on)),
        limits=limits,
        memory=MemoryWatch(parse_size(s.max_memory), parse_size(s.max_gpu_memory), sampler=sample),
        fanin=fanin,
        observers=[o for o in (progress, RunLog(rd.logs / "run.log")) if o] + observers,
        messages=messages,
    )


def _run_batch_api(build: Any, source: Source, s: JobSettings, rd: RunDir, observers: list[Observer]) -> RunSummary:
    """--batch-api: the items go through the provider's Batch API instead of the engine loop."""
    from .batch_api.lines import Prices
    from .batch_api.provider import make_provider
    from .batch_api.runner import BatchJob, BatchRun

    if s.max_cost is not None and (s.price_input is None or s.price_output is None):
        raise ConfigError("--max-cost with --batch-api needs --price-input and --price-output (per million tokens)")
    parse = resolve(s.parse) if s.parse else None
    fp = fingerprint(build, s, source.identity())
    fp["batch_api"] = {"provider": s.batch_api, "parse": code_hash(parse) if parse else None}
    prices = Prices(s.price_input, s.price_output, s.tokens_per_item) if s.price_input is not None and \
        s.price_output is not None else None
    job = BatchJob(
        provider=make_provider(s.batch_api or "", s.batch_requests),
        build=functools.partial(build, **s.params) if s.params else build, parse=parse, source=source,
        fingerprint=fp, description=s.model_dump(), keys=Keys(s.key, s.dedupe, s.skip_bad_rows),
        selection=Selection(s.start or 0, s.end, s.limit), output_format=s.output_format, poll_max=s.batch_poll,
        prices=prices, max_cost=s.max_cost, allow_changed=s.allow_changed,
        observers=[o for o in (make_progress(s.progress, s.log_every), RunLog(rd.logs / "run.log")) if o] + observers)
    ledger = Ledger.open(rd)
    try:
        return BatchRun(job, rd, ledger).execute()
    finally:
        ledger.close()


def _fan_in(s: JobSettings, split: Any, combine: Any) -> FanIn | None:
    if s.batch_format == "columns" and s.batch_size is None:
        raise ConfigError("batch_format 'columns' needs batch_size: the function gets up to that many rows per call")
    split = split or (resolve(s.split) if s.split else None)
    if split and s.batch_format == "columns":
        raise ConfigError("batch_format 'columns' cannot be combined with split (fan-out runs record by record)")
    combine = combine or (resolve(s.combine) if s.combine else None)
    return FanIn(split, combine or default_combine) if split else None


def _limits(s: JobSettings, engine_name: str) -> Limits | None:
    """Shared rate limits for API engines: asyncio always, threads when a limit is stated."""
    if not (engine_name == "asyncio" or (engine_name == "threads" and (s.rpm or s.tpm or s.limits))):
        return None
    specs = {name: LimitSpec(spec.get("rpm"), spec.get("tpm")) for name, spec in s.limits.items()}
    if s.rpm or s.tpm or not specs:
        specs["default"] = LimitSpec(s.rpm, s.tpm)
    return Limits(specs, s.limit_by, s.tokens_per_item, ApiMetrics(s.price_input, s.price_output, s.max_tokens,
                                                                   s.max_cost))


def retry_failed(run_dir: str | os.PathLike, error_type: str | None = None, quarantined: bool = False,
                 interrupted: bool = False) -> int:
    """Put failed items back so that the next run does them again (under the run lock); returns how many.
    quarantined / interrupted also put back those items (interrupted ones will be called again)."""
    rd = RunDir(run_dir)
    if not rd.ledger.exists():
        raise ConfigError(f"{run_dir}: no ledger here (not a durabatch run directory?)")
    states = (ItemState.FAILED,) + ((ItemState.QUARANTINED,) if quarantined else ()) + (
        (ItemState.INTERRUPTED,) if interrupted else ())
    with run_lock(rd):
        ledger = Ledger.open(rd)
        try:
            return ledger.put_back(states, error_type)
        finally:
            ledger.close()


def _missing_input() -> Any:
    raise ConfigError("no input: pass --input FILE (or source= in Python)")
