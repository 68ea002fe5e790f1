"""The `durabatch run --help` page: the options in sections (config.settings.HELP_SECTIONS) with an example each,
human names for the values (FILE, N, SECONDS, rows|columns) and the environment variables durabatch reads.
Plain text that reads the same on a terminal and piped, within 80 columns."""

from __future__ import annotations

import re
from typing import Any

import typer
from typer.core import TyperCommand

from .config.settings import HELP_SECTIONS

# The base of every command-line parsing error: click's ClickException, or its copy inside newer typers.
UsageErrors: type[Exception] = next(k for k in typer.BadParameter.__mro__ if k.__name__ == "ClickException")

# What each value is, where the type alone says too little (str, float).
METAVARS = {
    "fn": "MODULE:FN", "split": "MODULE:FN", "combine": "MODULE:FN", "parse": "MODULE:FN", "input": "FILE",
    "key": "COLUMN", "run_dir": "DIR", "params": "KEY=VALUE", "gpus": "0,1,..", "ray_address": "ADDRESS",
    "retry_on": "ERROR", "fatal_on": "ERROR", "max_worker_memory": "SIZE", "max_memory": "SIZE",
    "max_gpu_memory": "SIZE", "limits": "YAML", "limit_by": "FIELD", "deadline": "DURATION", "deadline_at": "TIME",
    "currency": "CODE", "rpm": "N", "tpm": "N", "tokens_per_item": "N", "price_input": "PRICE",
    "price_output": "PRICE", "max_cost": "AMOUNT", "cpus_per_worker": "N", "gpus_per_worker": "N", "ray_env": "NAME",
}
SECONDS = ("commit_seconds", "backoff_base", "backoff_max", "grace_seconds", "item_timeout", "restart_delay",
           "log_every", "batch_poll")

EXAMPLES = {  # each fits 80 columns after "  e.g. durabatch run "
    "Input": ("-i data.jsonl --key id --limit 100     (a test run)",),
    "Function": ("--fn jobs.py:label --param model=small --batch-size 32",),
    "Engine": ("--engine processes --workers 8",),
    "Scale-out": ("--gpus 0,1,2,3", "--ranks 4 --rank $SLURM_ARRAY_TASK_ID"),
    "Limits and budgets": ("--rpm 500 --tpm 200000",
                           "--max-cost 20 --price-input 0.15 --price-output 0.6"),
    "Failures": ("--max-attempts 5 --retry-on ServerBusy --supervise",),
    "Output and the run directory": ("--run-dir runs/labels --format jsonl --commit-every 1000",),
    "Stopping": ("--deadline 11h30m --grace-seconds 60",),
}

ENVIRONMENT = [
    ("DURABATCH_<SETTING>", "Every setting above, named in capitals: DURABATCH_WORKERS=8, DURABATCH_RUN_DIR=runs/x. "
                            "Flags win over the environment, which wins over the job file."),
    ("SLURM_JOB_END_TIME", "Under Slurm, the job's end time is a deadline too (stop in time, exit 75)."),
    ("*KEY *TOKEN *SECRET *PASSWORD", "Values of variables so named are replaced by their names in stored errors."),
    ("OPENAI_API_KEY, OPENAI_BASE_URL", "--batch-api openai (read by the openai client)."),
    ("RAY_ADDRESS", "--engine ray: the cluster to join when --ray-address is not given."),
    ("CUDA_VISIBLE_DEVICES", "Set by --gpus in each worker to its device."),
]

EXIT_CODES = [("0", "all items done"), ("1", "finished with failed items (durabatch export RUN_DIR --failed)"),
              ("2", "usage, configuration or input error (one line says what and what to do)"),
              ("75", "stopped early (Ctrl-C, SIGTERM, deadline, budget): run the same command again to resume")]


def metavar(name: str, annotation: Any, choices: list[str]) -> str | None:
    """The value's human name in the help: FILE, N, SECONDS, rows|columns (None for an on/off flag)."""
    if annotation is bool:
        return None
    if choices:
        return "|".join(choices)
    if name in METAVARS:
        return METAVARS[name]
    if name in SECONDS:
        return "SECONDS"
    args = getattr(annotation, "__args__", ())
    return "N" if annotation is int or int in args else "NUMBER" if annotation is float or float in args else "TEXT"


TYPE_NAMES = {"path": "PATH", "int": "N", "float": "NUMBER", "str": "TEXT"}


def _plain(text: str) -> str:
    """typer's <path>, <int>, <list[str]> as PATH, N, TEXT."""
    return re.sub(r"<(?:list\[)?(\w+)\]?>", lambda m: TYPE_NAMES.get(m.group(1).lower(), m.group(1).upper()), text)


def _argument(param: Any) -> str:
    """RUN_DIR, RUN_DIRS... (several)."""
    return (param.metavar or param.name.upper()) + ("..." if param.nargs == -1 else "")


class PlainCommand(TyperCommand):
    """Human names for arguments and values: `status RUN_DIR`, `--to PATH`, not typer's {run_dir} and <path>."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name == "argument":
                pieces.append(_argument(param) if param.required else f"[{_argument(param)}]")
        return pieces

    def help_record(self, ctx: Any, param: Any) -> tuple[str, str] | None:
        record = param.get_help_record(ctx)
        if record is None:
            return None
        return (_argument(param) if param.param_type_name == "argument" else _plain(record[0])), record[1]

    def format_options(self, ctx: Any, formatter: Any) -> None:
        for kind, title in (("argument", "Arguments"), ("option", "Options")):
            records = [r for p in self.get_params(ctx) if p.param_type_name == kind and (r := self.help_record(ctx, p))]
            if records:
                with formatter.section(title):
                    formatter.write_dl(records)


def plain_names(app: typer.Typer) -> None:
    """Every command of the app (and of its sub-apps) shows human names, unless it has its own class."""
    for info in app.registered_commands:
        if info.cls in (None, TyperCommand):
            info.cls = PlainCommand
    for group in app.registered_groups:
        if group.typer_instance is not None:
            plain_names(group.typer_instance)


class SectionedCommand(PlainCommand):
    """Options grouped by their section (their rich_help_panel), each with an example; then the environment."""

    def format_options(self, ctx: Any, formatter: Any) -> None:
        arguments, sections = [], {}
        for param in self.get_params(ctx):
            record = self.help_record(ctx, param)
            if record is None:
                continue
            if param.param_type_name == "argument":
                arguments.append(record)
            else:
                sections.setdefault(getattr(param, "rich_help_panel", None) or "Other", []).append(record)
        if arguments:
            with formatter.section("Arguments"):
                formatter.write_dl(arguments)
        order = list(HELP_SECTIONS)
        for title in sorted(sections, key=lambda t: order.index(t) if t in order else len(order)):
            with formatter.section(title):
                formatter.write_dl(sections[title])
                for example in EXAMPLES.get(title, ()):  # written as it is: never wrapped mid-flag
                    formatter.write(f"{'':>{formatter.current_indent}}e.g. durabatch run {example}\n")

    def format_epilog(self, ctx: Any, formatter: Any) -> None:
        with formatter.section("Environment"):
            formatter.write_dl(ENVIRONMENT)
        with formatter.section("Exit codes"):
            formatter.write_dl(EXIT_CODES)


def report_usage_error(exc: Any) -> int:
    """A usage error from the command-line parser (unknown option, bad value, missing argument) in one line with
    where to look next; `durabatch` alone still prints the help."""
    if type(exc).__name__ == "NoArgsIsHelpError":
        exc.show()
        return exc.exit_code
    message = exc.format_message().rstrip(".")
    ctx = getattr(exc, "ctx", None)
    where = f"{ctx.command_path} -h" if ctx is not None else "durabatch -h"
    typer.echo(f"durabatch: error: {message[:1].lower()}{message[1:]} (see `{where}`)", err=True)
    return exc.exit_code
