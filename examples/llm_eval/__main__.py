"""Multiple-choice evaluation through an OpenAI-compatible API, as a durable durabatch job.

    python -m examples.llm_eval --local            # against the bundled local server (no key, no network)
    OPENAI_BASE_URL=... OPENAI_API_KEY=... python -m examples.llm_eval --questions 10000
Extra flags go to `durabatch run` and override the job file (examples/llm_eval/job.yaml)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pyarrow.parquet as pq

from durabatch.cli import main as durabatch_main

from ..local_api import local_api
from .questions import write

HERE = Path(__file__).resolve().parent


def accuracy(run_dir: str) -> tuple[int, int]:
    import durabatch

    out = Path(run_dir) / "results.parquet"
    durabatch.export(run_dir, to=out)
    correct = pq.read_table(out, columns=["correct"]).column(0).to_pylist()
    return sum(bool(c) for c in correct), len(correct)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=500)
    parser.add_argument("--local", action="store_true", help="start the local test server and use it")
    parser.add_argument("--run-dir", default="runs/llm_eval")
    args, extra = parser.parse_known_args()
    write(HERE / "data" / "questions.jsonl", args.questions)
    with local_api(args.local):
        try:
            durabatch_main(["run", str(HERE / "job.yaml"), "--run-dir", args.run_dir, *extra])
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
    if code in (0, 1):
        right, total = accuracy(args.run_dir)
        print(f"accuracy: {right}/{total} = {right / max(1, total):.1%}")
    raise SystemExit(code)


if __name__ == "__main__":
    main()
