"""`make run`: embed the standard library's docstrings with MiniLM as a durable durabatch job.

    python -m examples.embed_docstrings                 # the first 5,000 paragraphs (about a minute on 2 cores)
    python -m examples.embed_docstrings --full          # all 16,102 (about 3 minutes on 2 cores)
    python -m examples.embed_docstrings --limit 8000    # any other slice; extra flags go to `durabatch run`

Interrupt it (Ctrl-C, or kill -9) and run the same command again: it continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from durabatch.cli import main as durabatch_main

from .corpus import build

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "data" / "stdlib_docstrings.jsonl"
DEFAULT_LIMIT = 5000
RUN_DIR = "runs/embed_docstrings"
QUERY_ID = "base64:b64encode/0"  # the demo's query when it is in the slice done


def run_job(run_dir: str, limit: int | None, extra: list[str]) -> int:
    args = ["run", "--input", str(CORPUS), "--key", "id", "--fn", "examples.embed_docstrings.job:Embedder",
            "--batch-size", "32", "--run-dir", run_dir, *(["--limit", str(limit)] if limit else []), *extra]
    print("$ durabatch " + " ".join(args), file=sys.stderr, flush=True)
    try:
        durabatch_main(args)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    return 0


def nearest_neighbours(run_dir: str, k: int = 3) -> None:
    """A taste of the result: the docstrings closest (cosine) to one of them, read back from the exported Parquet."""
    import numpy as np
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    import durabatch

    out = Path(run_dir) / "embeddings.parquet"
    rows = durabatch.export(run_dir, to=out)
    if not rows:
        return
    table = pq.read_table(out, columns=["id", "embedding"])
    ids = table.column("id").to_pylist()
    column = table.column("embedding").combine_chunks()
    vectors = pc.list_flatten(column).to_numpy().astype(np.float32).reshape(len(ids), -1)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)  # already unit length; cosine either way
    print(f"\n{rows:,} embeddings of {vectors.shape[1]} dimensions in {out}")
    query = ids.index(QUERY_ID) if QUERY_ID in ids else len(ids) // 2
    wanted = {ids[query]}
    scores = vectors @ vectors[query]
    best = [int(i) for i in np.argsort(-scores, kind="stable") if i != query][:k]
    wanted.update(ids[i] for i in best)
    texts = {}
    with open(CORPUS, encoding="utf-8") as f:
        for line in f:
            item = json.loads(line)
            if item["id"] in wanted:
                texts[item["id"]] = " ".join(item["text"].split())
    print(f"closest to {ids[query]}  {_clip(texts.get(ids[query], ''))!r}:")
    for i in best:
        print(f"  {scores[i]:.3f}  {ids[i]}  {_clip(texts.get(ids[i], ''))!r}")


def _commands() -> tuple[str, str]:
    """How to spell this interpreter and the durabatch command for the user: .venv/bin/... when run from there."""
    python = Path(sys.executable)
    cli = python.parent / "durabatch"
    try:
        python = python.relative_to(Path.cwd())
        cli = cli.relative_to(Path.cwd())
    except ValueError:
        return "python", "durabatch"
    return str(python), str(cli) if cli.exists() else "durabatch"


def _clip(text: str, width: int = 70) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.embed_docstrings", allow_abbrev=False,
                                     description="Embed the stdlib's docstrings with MiniLM as a durabatch job.",
                                     epilog="Other flags (--progress plain, --commit-every 32, ...) are passed to "
                                            "`durabatch run`.")
    parser.add_argument("--limit", type=int, default=DEFAULT_LIMIT,
                        help=f"embed the first N paragraphs (default {DEFAULT_LIMIT:,}; 0: all)")
    parser.add_argument("--full", action="store_true", help="embed the whole corpus (same as --limit 0)")
    parser.add_argument("--run-dir", default=RUN_DIR, help=f"default: {RUN_DIR}")
    args, extra = parser.parse_known_args(argv)
    if args.limit < 0:
        parser.error("--limit must be >= 0")
    count = build(CORPUS)
    limit = None if args.full or args.limit == 0 else min(args.limit, count)
    print(f"corpus: {count:,} docstring paragraphs of the Python standard library ({CORPUS})\n"
          f"embedding {limit or count:,} of them; Ctrl-C stops cleanly, the same command resumes", file=sys.stderr)
    code = run_job(args.run_dir, limit, extra)
    python, durabatch_cli = _commands()
    again = shlex.join([python, "-m", "examples.embed_docstrings", *(sys.argv[1:] if argv is None else argv)])
    if code in (0, 1):
        nearest_neighbours(args.run_dir)
        print(f"\nstatus, from any terminal: {durabatch_cli} status {args.run_dir}\n"
              f"interrupt (Ctrl-C) and resume: run the same command again: {again}")
        if limit and limit < count:
            rest = [python, "-m", "examples.embed_docstrings", "--full",
                    *([] if args.run_dir == RUN_DIR else ["--run-dir", args.run_dir])]
            print(f"the other {count - limit:,}, keeping what is done: {shlex.join(rest)}")
    elif code == 75:
        print(f"\nresume with: {again}", file=sys.stderr)
    return code


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except KeyboardInterrupt:  # only before the job starts (building the corpus): durabatch handles its own
        print("\ninterrupted", file=sys.stderr)
        raise SystemExit(130) from None
