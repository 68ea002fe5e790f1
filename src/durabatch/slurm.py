"""Slurm, through its own commands: `durabatch slurm submit` writes a readable sbatch script (one array task per
rank) into RUN_DIR/slurm/ and submits it; `durabatch slurm resubmit` submits again only the ranks that are not
finished. The edge: this module calls sbatch and squeue; the script itself reads the SLURM_* variables.

Each array task runs `durabatch run JOB --rank $SLURM_ARRAY_TASK_ID --ranks N` in the background of the batch
shell. Slurm sends USR1 to that shell `grace` seconds before the time limit (`--signal=B:USR1@grace`); the shell
passes it on, durabatch stops warm (finish in flight, commit, exit 75), and the shell requeues only its own
element (`scontrol requeue ${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}`: requeueing $SLURM_JOB_ID would requeue
every task of the array), which later resumes where it stopped. A rank that stops early every time (each run
undone by the next time limit, or a function that always asks to stop) would requeue itself forever: after
`max_requeues` restarts (Slurm's SLURM_RESTART_COUNT) the script stops requeueing and says how to go on."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import ConfigError
from .store import ranks as rank_store

SLURM_FOLDER = "slurm"
SUBMIT_FILE = "submit.json"
MAX_REQUEUES = 20  # default cap on a rank's own requeues (SLURM_RESTART_COUNT), per submission


@dataclass
class Submission:
    """What `slurm submit` was given (saved as RUN_DIR/slurm/submit.json, reused by `resubmit`)."""

    job_file: str  # absolute
    run_dir: str  # absolute
    ranks: int
    parallel: int
    time_limit: str | None = None  # --time, as sbatch takes it
    partition: str | None = None
    sbatch_args: list[str] = field(default_factory=list)
    grace: int = 120  # seconds before the time limit at which Slurm sends USR1
    max_requeues: int = MAX_REQUEUES  # a rank requeues itself at most this many times per submission
    job_name: str = "durabatch"
    workdir: str = ""  # where the job runs (relative paths in the job file are read from here)
    python: str = ""  # the interpreter that submitted: the job runs `python -m durabatch` with it
    submitted: list[dict] = field(default_factory=list)  # {"n", "job_id", "array", "script", "at"} per sbatch


def folder(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / SLURM_FOLDER


def load(run_dir: str | os.PathLike) -> Submission:
    path = folder(run_dir) / SUBMIT_FILE
    try:
        return Submission(**json.loads(path.read_text()))
    except FileNotFoundError:
        raise ConfigError(f"{run_dir}: no Slurm submission here ({path} is missing); submit first with "
                          "`durabatch slurm submit JOB.yaml --ranks N`") from None
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path}: unreadable ({exc}); it records what `durabatch slurm submit` was given") \
            from None


def save(sub: Submission) -> None:
    path = folder(sub.run_dir) / SUBMIT_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(sub), indent=2) + "\n")
    os.replace(tmp, path)


def array_spec(indices: list[int], parallel: int) -> str:
    """[0, 1, 2, 3, 7] and 16 -> '0-3,7%16' (Slurm's --array syntax; runs of indices become ranges)."""
    parts: list[str] = []
    ordered = sorted(set(indices))
    start = prev = ordered[0]
    for k in [*ordered[1:], None]:
        if k is not None and k == prev + 1:
            prev = k
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if k is not None:
            start = prev = k
    return ",".join(parts) + f"%{min(parallel, len(ordered))}"


def script_text(sub: Submission, n: int, indices: list[int]) -> str:
    """The sbatch script of submission n: readable, commented, saved beside the ledgers it fills."""
    out = str(folder(sub.run_dir) / "rank-%a.out")
    directives = [f"--job-name={sub.job_name}", f"--array={array_spec(indices, sub.parallel)}",
                  "--requeue", f"--signal=B:USR1@{sub.grace}", "--open-mode=append", f"--output={out}",
                  f"--chdir={sub.workdir}"]
    directives += [f"--time={sub.time_limit}"] if sub.time_limit else []
    directives += [f"--partition={sub.partition}"] if sub.partition else []
    directives += sub.sbatch_args
    command = [sub.python, "-m", "durabatch", "run", sub.job_file, "--run-dir", sub.run_dir]
    run = " ".join(shlex.quote(c) for c in command) + f' --rank "$rank" --ranks {sub.ranks}'
    return _TEMPLATE.format(
        n=n, run_dir=sub.run_dir, ranks=sub.ranks, parallel=sub.parallel, grace=sub.grace,
        directives="\n".join(f"#SBATCH {d}" for d in directives), run=run, max_requeues=sub.max_requeues,
        resubmit=shlex.join(["durabatch", "slurm", "resubmit", sub.run_dir]),
        when=time.strftime("%Y-%m-%d %H:%M:%S %Z"))


_TEMPLATE = """\
#!/bin/bash
# durabatch on Slurm: submission {n} for the run directory {run_dir} (written {when}).
# One array task per rank: task K runs `durabatch run ... --rank K --ranks {ranks}` (its ledger in
# RUN_DIR/ranks/K-of-{ranks}), at most {parallel} at once. Output of rank K: RUN_DIR/slurm/rank-K.out (appended).
#
# {grace} s before the time limit Slurm sends USR1 to this shell; it is passed on to durabatch, which finishes what
# is in flight, commits and exits 75. Then this shell requeues only its own array element, which resumes where
# it stopped, at most {max_requeues} times (--max-requeues). Any other ending leaves the rank as it is:
# `durabatch slurm resubmit RUN_DIR` runs the ranks that are not finished.
{directives}

rank=$SLURM_ARRAY_TASK_ID
echo "durabatch: $(date '+%F %T') rank $rank of {ranks}, job ${{SLURM_ARRAY_JOB_ID}}_$rank \\
(Slurm job $SLURM_JOB_ID, restart ${{SLURM_RESTART_COUNT:-0}}) on $(hostname)"

# durabatch runs in the background: bash runs a trap only between commands, and `wait` is one it can interrupt.
{run} &
child=$!
warned=0  # USR1: the time limit is near
ended=0   # TERM: scancel or the time limit itself (Slurm signals every process of the job, durabatch too)
trap 'warned=1; echo "durabatch: USR1 (time limit near): stopping rank $rank warm"; kill -USR1 "$child"' USR1
trap 'ended=1' TERM
# A trapped signal ends `wait` early: wait again until durabatch itself has exited.
while :; do
    wait "$child"
    code=$?
    kill -0 "$child" 2>/dev/null || break
done
if [ "$warned" = 1 ] && [ "$code" = 138 ]; then
    code=75  # USR1 came before durabatch had set its handler (still starting): nothing done yet, resumable
fi
echo "durabatch: $(date '+%F %T') rank $rank exited $code"

# 75: stopped early and resumable. Requeue this element only (requeueing $SLURM_JOB_ID would requeue the whole
# array), unless the job is being cancelled or killed at its limit. At most {max_requeues} times: a rank that stops
# early every time would otherwise requeue itself forever (Slurm counts its restarts in SLURM_RESTART_COUNT).
max_requeues={max_requeues}
restarts=${{SLURM_RESTART_COUNT:-0}}
if [ "$code" = 75 ] && [ "$ended" = 0 ]; then
    if [ "$restarts" -lt "$max_requeues" ]; then
        echo "durabatch: requeueing ${{SLURM_ARRAY_JOB_ID}}_$rank (warned=$warned," \\
             "restart $((restarts + 1)) of at most $max_requeues)"
        scontrol requeue "${{SLURM_ARRAY_JOB_ID}}_$rank"
    else
        echo "durabatch: rank $rank stopped early and is not requeued: it has been requeued $restarts times" \\
             "(--max-requeues $max_requeues). Its ledger keeps what it did. See above why it stops early;" \\
             "to continue:" {resubmit}
    fi
fi
exit "$code"
"""


def submit(sub: Submission, indices: list[int]) -> tuple[str, Path]:
    """Write the next submit-<n>.sh for these ranks, sbatch it, record it in submit.json: (job id, script)."""
    here = folder(sub.run_dir)
    here.mkdir(parents=True, exist_ok=True)
    n = len(sub.submitted) + 1
    script = here / f"submit-{n}.sh"
    script.write_text(script_text(sub, n, indices))
    script.chmod(0o755)
    try:
        done = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise ConfigError("sbatch not found: run this on a Slurm login node (the script is saved in "
                          f"{script})") from None
    except subprocess.TimeoutExpired:
        raise ConfigError(f"sbatch did not answer within 120 s; the script is saved in {script}") from None
    if done.returncode != 0:
        reason = (done.stderr or done.stdout).strip().replace("\n", " ")
        raise ConfigError(f"sbatch refused {script}: {reason}")
    job_id = done.stdout.strip().split(";")[0]  # --parsable: "id" or "id;cluster"
    sub.submitted.append({"n": n, "job_id": job_id, "array": array_spec(indices, sub.parallel),
                          "script": script.name, "at": time.strftime("%Y-%m-%dT%H:%M:%S")})
    save(sub)
    return job_id, script


def new_submission(job_file: str, run_dir: str, ranks: int, parallel: int | None, limit: str | None,
                   partition: str | None, sbatch_args: list[str], grace: int, job_name: str | None,
                   max_requeues: int = MAX_REQUEUES) -> Submission:
    """Check what `slurm submit` was given; refuse a run directory already submitted or split otherwise."""
    if ranks < 1:
        raise ConfigError(f"--ranks {ranks}: need at least 1")
    if max_requeues < 0:
        raise ConfigError(f"--max-requeues {max_requeues}: need 0 or more (0: a rank never requeues itself)")
    if parallel is not None and parallel < 1:
        raise ConfigError(f"--parallel {parallel}: need at least 1 (how many ranks run at once)")
    if not Path(job_file).is_file():
        raise ConfigError(f"{job_file}: no such job file")
    run_path = Path(run_dir).resolve()
    if (folder(run_path) / SUBMIT_FILE).exists():
        raise ConfigError(f"{run_dir} was already submitted to Slurm ({folder(run_path) / SUBMIT_FILE}); to run "
                          f"the ranks that are not finished: durabatch slurm resubmit {run_dir}")
    recorded = rank_store.ranks_of(run_path)
    if recorded is not None and recorded != ranks:
        raise ConfigError(f"{run_dir} is split into {recorded} ranks (ranks.json): use --ranks {recorded}, or "
                          "another run directory")
    if (run_path / "ledger.sqlite").exists():
        raise ConfigError(f"{run_dir} holds a run that is not split into ranks; use another run directory")
    return Submission(job_file=str(Path(job_file).resolve()), run_dir=str(run_path), ranks=ranks,
                      parallel=parallel or ranks, time_limit=limit, partition=partition, sbatch_args=list(sbatch_args),
                      grace=grace, job_name=job_name or f"durabatch-{run_path.name}", workdir=os.getcwd(),
                      python=sys.executable, max_requeues=max_requeues)


def to_resubmit(sub: Submission) -> tuple[list[int], list[int]]:
    """(ranks to submit again, ranks left alone because an earlier submission still has them queued or running).
    Before any rank has started there is no ranks.json: every rank is unfinished."""
    started = rank_store.ranks_of(sub.run_dir) is not None
    unfinished = rank_store.unfinished_ranks(sub.run_dir) if started else list(range(sub.ranks))
    live = live_ranks([s["job_id"] for s in sub.submitted])
    return [k for k in unfinished if k not in live], [k for k in unfinished if k in live]


def live_ranks(job_ids: list[str]) -> set[int]:
    """Array indices still pending, running or completing in these jobs, per squeue (whose default listing is
    exactly the jobs not yet ended). A job Slurm has forgotten counts as nothing live; no answer is an error,
    since guessing could run a rank twice at once."""
    live: set[int] = set()
    for job_id in job_ids:
        try:
            done = subprocess.run(["squeue", "-h", "-r", "-j", job_id, "-o", "%K"], capture_output=True,
                                  text=True, timeout=60)
        except FileNotFoundError:
            raise ConfigError("squeue not found: run this on a Slurm login node") from None
        except subprocess.TimeoutExpired:
            raise ConfigError(f"squeue did not answer within 60 s about job {job_id}; try again") from None
        if done.returncode != 0 and "Invalid job id" not in done.stderr:
            raise ConfigError(f"squeue could not say whether job {job_id} still runs: {done.stderr.strip()}; "
                              "try again")
        live.update(int(word) for word in done.stdout.split() if word.isdigit())
    return live
