"""The command line: each subcommand builds settings and calls the library. Settings from the environment are
read here only. Precedence: flags > DURABATCH_* environment > job file > defaults."""

from __future__ import annotations

import inspect
import json
import sys
import traceback
from pathlib import Path
from typing import Any, Optional

import typer

from . import cli_help, environment
from .api import run_job, start_fresh
from .config import settings as settings_mod
from .config.settings import JobSettings
from .errors import DurabatchError, ExitCode, cli_spelling
from .slurm_cli import app as slurm_app

app = typer.Typer(
    add_completion=False, no_args_is_help=True, rich_markup_mode=None, pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Run a function over a dataset as a durable job: kill it at any moment, run the same command again, "
         "and it continues; every input key ends up in the output exactly once.\n\n"
         "Exit codes: 0 all done; 1 finished with failed items; 2 usage, configuration or input error; "
         "75 stopped early (Ctrl-C, SIGTERM) and resumable.\n\n"
         "Every setting of `run` is also a job-file key and a DURABATCH_<SETTING> environment variable: "
         "`durabatch run -h` lists them by section, with examples.",
)

def _version(value: bool) -> None:
    if value:
        from . import __version__

        typer.echo(f"durabatch {__version__}")
        raise typer.Exit()


@app.callback()
def _main(ctx: typer.Context, version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                                           help="Print the version and exit.")) -> None:
    """The subcommands below; `durabatch COMMAND -h` for each."""
    ctx.call_on_close(cli_spelling(FLAG_NAMES))  # hints say `--allow-changed`, not Python's `allow_changed=True`


FLAG_NAMES = {"output_format": "--format", "input": "--input"}
SECTION_OF = {name: title for title, names in settings_mod.HELP_SECTIONS.items() for name in names}
SHORT = {"input": "-i"}


def _fail(message: str) -> None:
    typer.echo(f"durabatch: error: {message}", err=True)
    raise typer.Exit(ExitCode.USAGE)


def _settings_params() -> list[inspect.Parameter]:
    """One CLI option per JobSettings field, documented by the field's description."""
    params = []
    for name, field in JobSettings.model_fields.items():
        flag = FLAG_NAMES.get(name, "--" + name.replace("_", "-"))
        annotation: Any = field.annotation
        choices = getattr(annotation, "__args__", ())
        help_text = field.description or ""
        literal: list[str] = []  # a Literal's choices, shown as the value's name: rows|columns
        if name == "params":  # --param key=value, repeated; merged into the job file's params key by key
            kind, decls = Optional[list[str]], ["--param", "--params"]  # noqa: UP045
            help_text += " As --param key=value (the value read as JSON when it is JSON); repeat for several."
        elif annotation == list[str]:
            kind: Any = Optional[list[str]]  # noqa: UP045 - typer reads the annotation at run time
            decls = [flag, *([SHORT[name]] if name in SHORT else [])]
            help_text += " Repeat for several."
        elif annotation is bool:
            kind, decls = Optional[bool], [f"{flag}/--no-{flag[2:]}"]  # noqa: UP045
        elif int in choices or annotation is int:
            kind, decls = Optional[int], [flag]  # noqa: UP045
        elif float in choices or annotation is float:
            kind, decls = Optional[float], [flag]  # noqa: UP045
        else:
            literal = [c for c in getattr(choices[0], "__args__", ()) if isinstance(c, str)] if choices else []
            literal = literal or [c for c in choices if isinstance(c, str)]
            kind, decls = Optional[str], [flag]  # noqa: UP045
        default = field.default if isinstance(field.default, int | float | str) else None
        if default not in (None, [], False):
            help_text += f" (default: {default})"
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=kind,
                                        default=typer.Option(None, *decls, help=help_text,
                                                             metavar=cli_help.metavar(name, annotation, literal),
                                                             rich_help_panel=SECTION_OF.get(name))))
    return params


def run_command(job_file: Optional[Path] = None, **flags: Any) -> None:  # noqa: UP045
    layers: list[tuple[str, dict]] = []
    if job_file is not None:
        try:
            layers.append((str(job_file), settings_mod.read_job_file(job_file)))
        except DurabatchError as exc:
            _fail(str(exc))
    layers.append(("environment", settings_mod.read_env(environment.variables())))
    layers.append(("command line", {k: v for k, v in flags.items() if v is not None and v != []}))
    try:
        config = settings_mod.merge(*layers)
        if not config.fn:
            _fail("no function: pass --fn package.module:callable (or fn: in the job file)")
        if (config.supervise or config.restarts is not None) and not environment.supervised():
            from .supervise import supervise

            if config.run_dir is None:
                _fail("run_dir is required: pass --run-dir DIR (or run_dir: in the job file)")
            from .store.ranks import check_rank, own_dir

            check_rank(config.rank, config.ranks)  # a rank is supervised (judged finished) on its own directory
            own = str(own_dir(config.run_dir, config.rank, config.ranks).path)
            if config.fresh:  # once, here: the supervised children (restarts) resume what this run started
                start_fresh(config)
            raise typer.Exit(supervise(_ARGV[1:], own, config.restarts, config.restart_delay))
        summary = run_job(config.fn, None, config, [])
    except DurabatchError as exc:
        _fail(str(exc))
    except typer.Exit:  # our own exits (a usage error, the supervisor's verdict): a RuntimeError to click
        raise
    except Exception:  # noqa: BLE001 - a bug of ours: exit 1 keeps its one meaning (finished with failed items)
        traceback.print_exc()
        typer.echo("durabatch: internal error (above); nothing committed is lost: run the same command again "
                   "to resume, and please report the traceback", err=True)
        raise typer.Exit(ExitCode.INTERNAL) from None
    typer.echo(str(summary), err=True)
    raise typer.Exit(_believed(summary.exit_code, summary.run_dir))  # a rank's own directory


def _believed(code: int, run_dir: str) -> int:
    """Exit 0 only when the ledger says the job is finished; else 75 (resumable: run again)."""
    from .store.rundir import RunDir
    from .supervise import unfinished

    left = unfinished(RunDir(run_dir)) if code == ExitCode.DONE else None
    if left:
        typer.echo(f"durabatch: the ledger says {left:,} item(s) are not finished: run again to do them", err=True)
        return ExitCode.STOPPED
    return code


run_command.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
    [inspect.Parameter("job_file", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Optional[Path],  # noqa: UP045
                       default=typer.Argument(None, metavar="JOB_FILE",
                                              help="A YAML job file; flags override its settings."))]
    + _settings_params())
app.command(
    "run", cls=cli_help.SectionedCommand,
    help="Run (or resume) a job. The same command on the same run directory continues where it stopped.\n\n"
         "\b\ndurabatch run job.yaml          (a YAML file of the settings below)\n"
         "durabatch run --fn jobs.py:label -i data.jsonl --key id --run-dir runs/labels",
)(run_command)


@app.command("status")
def status_command(
    run_dir: Path = typer.Argument(..., help="The job's run directory."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON instead of text."),
) -> None:
    """Show a job's progress, from another terminal while it runs or after. Reads the ledger read-only."""
    from .observe.status import as_json, render, status

    try:
        info = status(run_dir)
    except DurabatchError as exc:
        _fail(str(exc))
    typer.echo(as_json(info) if json_out else render(info))


@app.command("report")
def report_command(
    run_dir: Path = typer.Argument(..., help="The run directory: a job's (ledger) or a checkpointed loop's."),
    to: Optional[Path] = typer.Option(None, "--to", help="Where to write the HTML file "  # noqa: UP045
                                      "(default: RUN_DIR/report.html)."),
    json_out: bool = typer.Option(False, "--json", help="Print the report's series and tables as JSON instead "
                                  "of the text summary."),
) -> None:
    """Write one self-contained HTML report with charts: items done and items/s, failures by type and runs for a
    job; each recorded metric by step and steps/s for a loop. Reads the ledger read-only, safe while it runs."""
    from .observe.report import as_json, render_text, write

    try:
        path, data = write(run_dir, to)
    except (DurabatchError, OSError) as exc:
        _fail(str(exc))
    ranked = data.get("ranks")  # a run split into ranks: merged, naming the unfinished ones
    lines = f"\nranks:     {ranked['count']}, unfinished: {', '.join(map(str, ranked['unfinished'])) or 'none'}" \
        if ranked else ""
    typer.echo(as_json(data) if json_out else f"wrote {path}\n{render_text(data)}{lines}")


@app.command("dashboard")
def dashboard_command(
    run_dirs: list[Path] = typer.Argument(..., help="One or more run directories (ranks, or many jobs)."),
    port: int = typer.Option(8765, "--port", help="The local port (0: any free port)."),
) -> None:
    """A live local web page (127.0.0.1) over run directories: progress, rate and ETA, throughput, failures and
    their tracebacks, sample rows, resources, API counters, loop metrics, what was run; JSON at /api/. Reads the
    ledgers read-only, safe while the jobs run."""
    from .observe.dashboard import serve
    from .store.ranks import rank_dirs

    # A run split into ranks shows as its ranks' directories (those started).
    run_dirs = [p for d in run_dirs for p in [rd.path for _, rd in rank_dirs(d) if rd.path.is_dir()] or [d]]
    try:
        serve(run_dirs, port)
    except (DurabatchError, OSError) as exc:
        _fail(str(exc))


@app.command("export")
def export_command(
    run_dir: Path = typer.Argument(..., help="The job's run directory."),
    to: Path = typer.Option(..., "--to", help="Output file: .parquet or .jsonl."),
    failed: bool = typer.Option(False, "--failed", help="Write the failed items (key, error, attempts) instead."),
    partial: bool = typer.Option(False, "--partial", help="Export what is done of a job that is not finished "
                                 "(without it, such an export exits 2 saying how many of how many are done)."),
    include_failed: bool = typer.Option(False, "--include-failed", help="One file for a dataset: the done rows "
                                        "plus the failed, quarantined and interrupted items, with the columns "
                                        "_status (done, failed, ...) and _error."),
) -> None:
    """Merge the committed results into one file, in source order, with the key column. A run split into ranks
    is merged into one file (every key once); a job that is not finished is refused unless --partial."""
    from .store.export import export

    if to.suffix not in (".parquet", ".jsonl", ".ndjson", ".json"):
        _fail(f"{to}: export writes .parquet or .jsonl")
    try:
        rows = export(run_dir, to, failed=failed, partial=partial, include_failed=include_failed)
    except DurabatchError as exc:
        _fail(str(exc))
    typer.echo(f"wrote {rows:,} {'failed items' if failed else 'rows'} to {to}", err=True)


@app.command("retry-failed")
def retry_failed_command(
    run_dir: Path = typer.Argument(..., help="The job's run directory."),
    error_type: Optional[str] = typer.Option(None, "--error-type", help="Only failures of this type."),  # noqa: UP045
    quarantined: bool = typer.Option(False, "--quarantined", help="Also put quarantined items back."),
    interrupted: bool = typer.Option(False, "--interrupted", help="Also put back items interrupted mid-call in "
                                     "at-most-once mode (they will be called again)."),
) -> None:
    """Put failed items back so that the next `run` does them again. Earlier attempts stay in the history."""
    from .api import put_back_failed

    try:
        count, left_out = put_back_failed(run_dir, error_type, quarantined, interrupted)
    except DurabatchError as exc:
        _fail(str(exc))
    typer.echo(f"{count:,} item(s) put back" + ("; run the job again to retry them" if count else ""), err=True)
    if left_out:  # e.g. quarantined items, which only --quarantined puts back
        typer.echo(left_out, err=True)


_ARGV: list[str] = []


@app.command("verify")
def verify_command(
    run_dir: Path = typer.Argument(..., help="The job's run directory."),
    repair: bool = typer.Option(False, "--repair", help="Put the items of lost or corrupt shards back to pending, "
                                "remove crash leftovers, rebuild an unreadable ledger from the shards."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON instead of text."),
) -> None:
    """Check every shard against the ledger: present, intact, row counts, positions, keys unique; name orphans
    and an unreadable ledger. Exit 0 healthy (or repaired), 1 problems found, 2 usage error (or --repair while
    a job runs)."""
    from .store.verify import verify

    try:
        report = verify(run_dir, repair=repair)
    except (DurabatchError, OSError) as exc:
        _fail(str(exc))
    typer.echo(json.dumps(report.as_dict(), indent=2) if json_out else report.render())
    raise typer.Exit(0 if report.ok else 1)


app.add_typer(slurm_app, name="slurm")


def main(argv: list[str] | None = None) -> None:
    _ARGV[:] = sys.argv[1:] if argv is None else argv
    if argv is None:  # the process ends after this command: skip collecting a large heap at exit (~0.5-1 s)
        import atexit
        import gc

        atexit.register(gc.freeze)
    cli_help.plain_names(app)
    try:
        code = app(args=argv, prog_name="durabatch", standalone_mode=False)
    except cli_help.UsageErrors as exc:  # click would print usage, a hint and the error in four lines
        code = cli_help.report_usage_error(exc)
    except typer.Abort:
        typer.echo("Aborted!", err=True)
        code = 1
    code = code if isinstance(code, int) else 0
    if argv is None or code:
        raise SystemExit(code)
