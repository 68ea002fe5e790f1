"""`durabatch slurm submit | resubmit`: a job's ranks as a Slurm array (the work is in slurm.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from . import environment, slurm
from .config import settings as settings_mod
from .errors import DurabatchError, ExitCode

app = typer.Typer(
    add_completion=False, no_args_is_help=True, rich_markup_mode=None, pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Run a job on Slurm as an array of ranks: one array task per rank, each with its own ledger under "
         "RUN_DIR/ranks/. Near the time limit a rank stops warm (commit, exit 75) and requeues itself; "
         "`resubmit` runs again only the ranks that are not finished.",
)


def _fail(message: str) -> None:
    typer.echo(f"durabatch: error: {message}", err=True)
    raise typer.Exit(ExitCode.USAGE)


def _run_dir_of(job_file: Path) -> str | None:
    """The run directory the job file (or DURABATCH_RUN_DIR) names; the settings are checked on the way."""
    layers = [(str(job_file), settings_mod.read_job_file(job_file)),
              ("environment", settings_mod.read_env(environment.variables()))]
    return settings_mod.merge(*layers).run_dir


@app.command("submit")
def submit_command(
    job_file: Path = typer.Argument(..., help="The YAML job file (fn, input, settings), as for `durabatch run`."),
    ranks: int = typer.Option(..., "--ranks", help="How many ranks split the input: one array task each."),
    parallel: Optional[int] = typer.Option(None, "--parallel", help="At most this many ranks run at once "  # noqa: UP045
                                           "(--array=...%P; default: all)."),
    time_limit: Optional[str] = typer.Option(None, "--time", help="Each task's time limit, as sbatch takes "  # noqa: UP045
                                             "it (04:00:00, 1-00:00:00)."),
    partition: Optional[str] = typer.Option(None, "--partition", help="The Slurm partition."),  # noqa: UP045
    sbatch_args: Optional[list[str]] = typer.Option(None, "--sbatch-arg", metavar="OPTION",  # noqa: UP045
                                                    help="One more sbatch option, "
                                                    "e.g. --sbatch-arg=--mem=8G; repeat for several."),
    run_dir: Optional[str] = typer.Option(None, "--run-dir", help="The run directory (default: the job "  # noqa: UP045
                                          "file's run_dir)."),
    grace: int = typer.Option(120, "--grace", help="Seconds before the time limit at which Slurm sends USR1: "
                              "time enough to finish what is in flight and commit (see --grace-seconds of run)."),
    job_name: Optional[str] = typer.Option(None, "--job-name", help="Slurm job name (default: "  # noqa: UP045
                                           "durabatch-<run dir name>)."),
    max_requeues: int = typer.Option(slurm.MAX_REQUEUES, "--max-requeues", help="A rank that stopped early "
                                     "requeues itself at most this many times (then it says so in its output and "
                                     "`resubmit` goes on); 0: never."),
) -> None:
    """Write RUN_DIR/slurm/submit-1.sh (an sbatch array, one task per rank running `durabatch run --rank K
    --ranks N`) and submit it. Prints the Slurm job id and what to run next."""
    try:
        run_dir = run_dir or _run_dir_of(job_file)
        if not run_dir:
            _fail(f"{job_file}: no run_dir: set run_dir in the job file or pass --run-dir")
        sub = slurm.new_submission(str(job_file), run_dir, ranks, parallel, time_limit, partition,
                                   sbatch_args or [], grace, job_name, max_requeues)
        job_id, script = slurm.submit(sub, list(range(ranks)))
    except DurabatchError as exc:
        _fail(str(exc))
    _next_steps(sub, job_id, script)


@app.command("resubmit")
def resubmit_command(
    run_dir: Path = typer.Argument(..., help="The run directory given to `durabatch slurm submit`."),
) -> None:
    """Submit again only the ranks that are not finished (with the settings saved in RUN_DIR/slurm/submit.json),
    as RUN_DIR/slurm/submit-<n>.sh. Ranks still queued or running in an earlier submission are left alone."""
    try:
        sub = slurm.load(run_dir)
        todo, live = slurm.to_resubmit(sub)
        if live:
            typer.echo(f"ranks {_listed(live)} are still queued or running: left alone")
        if not todo:
            typer.echo("nothing to resubmit" + ("" if live else f": all {sub.ranks} ranks are finished; "
                       f"export with `durabatch export {run_dir} --to out.parquet`"))
            return
        job_id, script = slurm.submit(sub, todo)
    except DurabatchError as exc:
        _fail(str(exc))
    _next_steps(sub, job_id, script, todo)


def _listed(ranks: list[int]) -> str:
    return slurm.array_spec(ranks, len(ranks)).rsplit("%", 1)[0]


def _next_steps(sub: slurm.Submission, job_id: str, script: Path, todo: list[int] | None = None) -> None:
    which = f"ranks {_listed(todo)} of {sub.ranks}" if todo is not None else f"{sub.ranks} ranks"
    folder = slurm.folder(sub.run_dir)
    typer.echo(f"submitted Slurm job {job_id}: {which}, at most {sub.parallel} at once\n"
               f"  script: {script}\n"
               f"  output: {folder}/rank-K.out\n"
               f"  watch:  squeue -j {job_id}   durabatch status {sub.run_dir}\n"
               f"  then:   durabatch slurm resubmit {sub.run_dir}   (only the ranks not finished)\n"
               f"          durabatch export {sub.run_dir} --to out.parquet")
