"""The edge of the library: `run()` turns settings into a ready-made Job (small frozen policies, the engine, the
observers) and executes it under the run lock. The core never sees the settings model; a new setting touches
config/settings.py and one line of `make_job` below."""

from __future__ import annotations

import functools
import logging
import os
import sys
import time
from typing import Any

from . import environment
from .config.job import check_params, code_hash, fingerprint
from .config.settings import JobSettings, merge, parse_gpus, parse_size
from .core.events import Observer
from .core.fanout import Combine, FanIn, Split, default_combine
from .core.runner import Run, RunSummary
from .core.spec import Batching, CommitPolicy, Job, Keys, Safety, Selection, StopPolicy
from .engines import make_engine
from .engines.main_script import reimporting_main
from .engines.resolve import resolve
from .engines.user_fn import Work, is_async_target
from .errors import ConfigError, RunLockedError, command, install_redaction, option
from .observe.logs import RunLog
from .observe.progress import make_progress
from .observe.resources import sample
from .policies.limits import ApiMetrics, Limits, LimitSpec
from .policies.memory import MemoryWatch
from .policies.retry import RetryPolicy, full_jitter, make_retryable
from .policies.stopping import wall_deadline
from .sources import Source, open_source
from .sources.files import FileSource
from .sources.keys_only import KeysOnly
from .sources.row_reader import RowReader
from .store import ranks
from .store.ledger import ItemState, Ledger
from .store.rundir import RunDir, move_aside, run_lock


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
    if reimporting_main():  # a spawned worker re-importing an unguarded script: its runner explains, once
        raise SystemExit(2)
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
        raise ConfigError("run_dir is required: where the ledger and results of this job live; pass --run-dir DIR "
                          "(run_dir= in Python, run_dir: in a job file)")
    target = resolve(fn) if isinstance(fn, str) else fn
    if target is None:
        raise ConfigError("fn is required: package.module:callable")
    fanin = _fan_in(settings, split, combine)
    install_redaction(environment.secret_values())  # secrets in the environment never reach the ledger
    deadline = wall_deadline(settings.deadline, settings.deadline_at, time.time(), environment.slurm_end_time())
    src = open_source(source if source is not None else settings.input or _missing_input())
    if settings.fresh and not environment.supervised():  # a supervised child: its parent started fresh already
        start_fresh(settings)
    selection = [settings.start, settings.end, settings.limit]  # as given: a rank's range is made from it
    settings, rd = _own_share(settings, src)
    rd.create()
    with run_lock(rd):
        if settings.batch_api:
            return _run_batch_api(target, src, settings, rd, observers)
        job = make_job(target, src, settings, rd, observers, fanin, deadline)
        if settings.ranks is not None:  # resuming a rank's directory with another range is another job
            job.fingerprint["rank"] = ranks.fingerprint_entry(settings.rank, settings.ranks,
                                                              (settings.start or 0, settings.end or 0), selection)
        ledger = Ledger.open(rd)
        try:
            if job.limits is not None:  # a resumed run starts near the rate an earlier run learned
                job.limits.seed(ledger.get_meta("learned_limits"))
                # API counters and budgets cover all runs of the job: carry on from the committed totals
                job.limits.metrics.seed(ledger.get_meta("api"), ledger.get_meta("api_history"))
            return Run(job, rd, ledger).execute()
        finally:
            ledger.close()


def start_fresh(s: JobSettings) -> None:
    """fresh: move the run directory aside (renamed, never deleted) so that this run starts from the beginning."""
    if s.rank is not None or s.ranks is not None:
        raise ConfigError(f"{option('fresh')} cannot be combined with {option('rank', None)}/{option('ranks', None)}"
                          ": every rank would move the shared run directory aside under the others; to start a "
                          f"ranked job over, rename {s.run_dir} once no rank runs, then start the ranks again")
    try:
        moved = move_aside(RunDir(s.run_dir or ""))
    except RunLockedError as exc:
        raise RunLockedError(f"cannot start fresh: {exc}", exc.pid) from None
    if moved is not None:
        print(f"durabatch: starting fresh; the previous run directory is now {moved}", file=sys.stderr, flush=True)


def _ray_env(s: JobSettings, engine_name: str) -> dict[str, str]:
    """ray_env: the named variables' values here, for the actors (refused where they are not set: an actor
    without its API key would fail every item)."""
    if not s.ray_env:
        return {}
    if engine_name != "ray":
        raise ConfigError(f"{option('ray_env', None)} needs {option('engine', 'ray')}")
    values, missing = environment.named(s.ray_env)
    if missing:
        raise ConfigError(f"{option('ray_env', None)}: {', '.join(missing)} not set in this process's environment "
                          "(set it here, or leave it out to use the nodes' own)")
    return values


def make_job(target: Any, source: Source, s: JobSettings, rd: RunDir, observers: list[Observer],
             fanin: FanIn | None, deadline: tuple[float, str] | None) -> Job:
    """Settings -> policies: the one mapping from the settings model to what the core is given."""
    devices = _gpu_devices(s)  # --gpus: one processes-engine worker per listed device
    workers = len(devices) or s.workers
    engine_name = s.engine or ("processes" if devices else "asyncio" if is_async_target(target)
                               else "inline" if workers == 1 else "threads")
    limits = _limits(s, engine_name)
    messages = []
    if s.item_timeout and engine_name == "threads":
        messages.append(f"{option('item_timeout', None)} is not enforced on the threads engine (a thread cannot "
                        f"be stopped); use {option('engine', 'processes')}")
    if s.ray_shards == "actors" and (engine_name != "ray" or fanin is not None):
        raise ConfigError(f"{option('ray_shards', 'actors')} needs {option('engine', 'ray')} and no "
                          f"{option('split', None)} (fan-out results are combined by this process)")
    source, reader = _actor_reads(s, source, engine_name, fanin)
    check_params(target, s.params, s.batch_size is not None)
    fp = fingerprint(target, s, source.identity())
    if fanin is not None:
        fp["fan_out"] = {"split": code_hash(fanin.split_fn), "combine": code_hash(fanin.combine_fn)}
    progress = make_progress(s.progress, s.log_every)
    return Job(
        target=target, source=source, fingerprint=fp, description=s.model_dump(),
        work=Work(target, s.batch_size is not None, s.cleanup_every, columns=s.batch_format == "columns",
                  params=s.params),
        engine=make_engine(engine_name, workers, s.item_timeout, parse_size(s.max_worker_memory), s.concurrency,
                           limits, devices=devices, runner_visible=_runner_visible(devices), ray_options={
                               "address": s.ray_address, "cpus_per_worker": s.cpus_per_worker,
                               "gpus_per_worker": s.gpus_per_worker, "shards": s.ray_shards,
                               "env": _ray_env(s, engine_name),
                               **({"reader": reader, "key": s.key} if reader is not None else {})}),
        keys=Keys(s.key, s.dedupe, s.skip_bad_rows),
        selection=Selection(s.start or 0, s.end, s.limit, ranked=s.ranks is not None),
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


def _own_share(s: JobSettings, source: Source) -> tuple[JobSettings, RunDir]:
    """--rank K --ranks N: this process's directory under the run directory and its contiguous range of the
    selected positions (as start/end); otherwise the run directory itself, which must not be a ranked one."""
    ranks.check_rank(s.rank, s.ranks)
    if s.rank is None or s.ranks is None:
        ranks.refuse_unranked(s.run_dir or "")
        return s, RunDir(s.run_dir or "")
    ranks.claim_ranks(s.run_dir or "", s.ranks)
    rd = ranks.rank_dir(s.run_dir or "", s.rank, s.ranks)
    selection = [s.start, s.end, s.limit]
    # A resume of the same selection of the same input reuses the recorded range: no count of the input's rows.
    identity = source.identity()
    share = ranks.recorded_range(rd, selection, identity) or _count_share(s, source, identity)
    return s.model_copy(update={"start": share[0], "end": share[1], "limit": None}), rd


def _count_share(s: JobSettings, source: Source, identity: dict) -> tuple[int, int]:
    count = ranks.shared_count(s.run_dir or "", identity, source.count)
    if count is None:
        raise ConfigError(f"--ranks needs an input of known length; {source.describe()} has none (a generator?): "
                          "pass a file or a list")
    lo = s.start or 0
    hi = count if s.end is None else min(s.end, count)
    if s.limit is not None:
        hi = min(hi, lo + s.limit)
    return ranks.rank_range(lo, max(lo, hi), s.rank or 0, s.ranks or 1)


def _runner_visible(devices: list[str]) -> str | None:
    """The runner's own CUDA_VISIBLE_DEVICES, put back after each GPU worker starts with its own."""
    return environment.variables().get("CUDA_VISIBLE_DEVICES") if devices else None


def _actor_reads(s: JobSettings, source: Source, engine_name: str,
                 fanin: FanIn | None) -> tuple[Source, RowReader | None]:
    """ray_reads "actors": this process reads only the key column (KeysOnly) and each actor reads its records."""
    if s.ray_reads != "actors":
        return source, None
    wanted = option("ray_reads", "actors")
    if engine_name != "ray" or fanin is not None:
        raise ConfigError(f"{wanted} needs {option('engine', 'ray')} and no {option('split', None)} (fan-out "
                          "splits each record in this process)")
    if s.key is None:
        raise ConfigError(f"{wanted} needs {option('key', 'COLUMN')}: this process reads only the keys (with no "
                          "key column, an item's key is a hash of its whole record)")
    if not isinstance(source, FileSource):
        raise ConfigError(f"{wanted} needs input files (JSONL or Parquet) every node can read; "
                          f"{source.describe()} lives in this process")
    return KeysOnly(source, s.key), RowReader.for_source(source, columnar=s.batch_format == "columns")


def _gpu_devices(s: JobSettings) -> list[str]:
    """--gpus 0,1,2,3 means the processes engine with one worker per device: another engine or worker count is a
    contradiction, said in one line (workers=1, the Python default, is not one)."""
    devices = parse_gpus(s.gpus)
    if devices and s.engine not in (None, "processes"):
        hint = "; on Ray, reserve GPUs per actor with --gpus-per-worker" if s.engine == "ray" else ""
        raise ConfigError(f"--gpus {s.gpus} starts one process worker per GPU: use it with --engine processes (or "
                          f"no --engine), not --engine {s.engine}{hint}")
    if devices and s.workers not in (1, len(devices)):
        raise ConfigError(f"--gpus {s.gpus} starts {len(devices)} workers, one per GPU: drop --workers {s.workers} "
                          f"(or list {s.workers} GPUs)")
    return devices


def _run_batch_api(build: Any, source: Source, s: JobSettings, rd: RunDir, observers: list[Observer]) -> RunSummary:
    """--batch-api: the items go through the provider's Batch API instead of the engine loop."""
    from .batch_api.lines import Prices
    from .batch_api.provider import make_provider
    from .batch_api.runner import BatchJob, BatchRun

    if s.max_cost is not None and (s.price_input is None or s.price_output is None):
        raise ConfigError(f"{option('max_cost', None)} with {option('batch_api', None)} needs "
                          f"{option('price_input', None)} and {option('price_output', None)} (per million tokens)")
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
                                                                   s.max_cost, s.currency))


def retry_failed(run_dir: str | os.PathLike, error_type: str | None = None, quarantined: bool = False,
                 interrupted: bool = False) -> int:
    """Put failed items back so that the next run does them again (under the run lock); returns how many.
    quarantined / interrupted also put back those items (interrupted ones will be called again). Quarantined or
    interrupted items left out are named in a warning (logger "durabatch") saying how to include them."""
    count, left_out = put_back_failed(run_dir, error_type, quarantined, interrupted)
    if left_out:
        logging.getLogger("durabatch").warning(left_out)
    return count


def put_back_failed(run_dir: str | os.PathLike, error_type: str | None = None, quarantined: bool = False,
                    interrupted: bool = False) -> tuple[int, str | None]:
    """retry_failed's work: how many were put back, and a hint when quarantined or interrupted items stay out.
    A run split into ranks: every started rank."""
    from .store import ranks

    rank_dirs = [rd for _, rd in ranks.rank_dirs(run_dir) if rd.ledger.exists()] if ranks.ranks_of(run_dir) else []
    dirs = rank_dirs or [RunDir(run_dir)]
    if not dirs[0].ledger.exists():
        raise ConfigError(f"{run_dir}: no ledger here (not a durabatch run directory?)")
    states = (ItemState.FAILED,) + ((ItemState.QUARANTINED,) if quarantined else ()) + (
        (ItemState.INTERRUPTED,) if interrupted else ())
    count, stay = 0, {"quarantined": 0, "interrupted": 0}
    for rd in dirs:
        with run_lock(rd):
            ledger = Ledger.open(rd)
            try:
                count += ledger.put_back(states, error_type)
                stay["quarantined"] += 0 if quarantined else ledger.count_failures(ItemState.QUARANTINED)
                stay["interrupted"] += 0 if interrupted else ledger.count_failures(ItemState.INTERRUPTED)
            finally:
                ledger.close()
    stay = {name: n for name, n in stay.items() if n}
    if not stay:
        return count, None
    why = {"quarantined": "quarantined item(s) (they killed their worker or the runner repeatedly)",
           "interrupted": "interrupted item(s) (cut off mid-call at most once: they may have been called)"}
    include = command("retry-failed", run_dir, **({"error_type": error_type} if error_type else {}),
                      **{name: True for name in stay})
    return count, (f"{' and '.join(f'{n:,} {why[name]}' for name, n in stay.items())} stay out: `{include}` "
                   f"puts them back too (`{command('status', run_dir)}` lists them)")


def _missing_input() -> Any:
    raise ConfigError("no input: pass --input FILE (or source= in Python)")
