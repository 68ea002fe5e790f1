"""The library's entry point: `run()` builds settings and a job, takes the run lock and executes the run loop."""

from __future__ import annotations

from typing import Any

from .errors import ConfigError
from .fanout import Combine, FanIn, Split, default_combine
from .ledger import Ledger, RunDir, run_lock
from .observe import Observer
from .runner import Run, RunSummary
from .settings import JobSettings, merge
from .sources import open_source
from .work import resolve


def run(fn: Any, source: Any = None, *, key: str | None = None, run_dir: str | None = None,
        batch_size: int | None = None, workers: int = 1, engine: str | None = None,
        split: Split | None = None, combine: Combine | None = None,
        observers: list[Observer] | None = None, **settings: Any) -> RunSummary:
    """Run fn over source as a durable job in run_dir; re-running the same call resumes.

    fn: a function (record -> dict), a batch function (with batch_size: records -> list; with also
    batch_format="columns": {field: values} -> {field: values}), a class (instantiated once per worker, setup()
    called) or "package.module:name". split(record) -> segments makes fn run on each
    segment, and combine(record, outputs) -> result groups them back (one committed row per input).
    Other settings: see JobSettings."""
    values = {"key": key, "run_dir": run_dir, "batch_size": batch_size, "workers": workers, "engine": engine,
              **settings}
    config = merge(("arguments", {k: v for k, v in values.items() if v is not None}))
    return run_job(fn, source, config, observers or [], split, combine)


def run_job(fn: Any, source: Any, settings: JobSettings, observers: list[Observer], split: Any = None,
            combine: Any = None) -> RunSummary:
    if settings.run_dir is None:
        raise ConfigError("run_dir is required: where the ledger and results of this job live")
    target = resolve(fn) if isinstance(fn, str) else fn
    if target is None:
        raise ConfigError("fn is required: package.module:callable")
    if settings.batch_format == "columns" and settings.batch_size is None:
        raise ConfigError("batch_format 'columns' needs batch_size: the function gets up to that many rows per call")
    split = split or (resolve(settings.split) if settings.split else None)
    if split and settings.batch_format == "columns":
        raise ConfigError("batch_format 'columns' cannot be combined with split (fan-out runs record by record)")
    combine = combine or (resolve(settings.combine) if settings.combine else None)
    fanin = FanIn(split, combine or default_combine) if split else None
    src = open_source(source if source is not None else settings.input or _missing_input())
    rd = RunDir(settings.run_dir)
    rd.create()
    with run_lock(rd):
        ledger = Ledger.open(rd)
        try:
            return Run(target, src, settings, rd, ledger, observers, fanin).execute()
        finally:
            ledger.close()


def _missing_input() -> Any:
    raise ConfigError("no input: pass --input FILE (or source= in Python)")


