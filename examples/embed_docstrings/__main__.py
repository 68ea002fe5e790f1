"""`make run`: embed the standard library's docstrings with MiniLM as a durable durabatch job.

    python -m examples.embed_docstrings                 # the first 2,000 paragraphs (a few minutes on 2 cores)
    python -m examples.embed_docstrings --full          # all ~16,000 (about 17 minutes on 2 cores)
    python -m examples.embed_docstrings --limit 5000    # any other slice; extra flags go to `durabatch run`

Interrupt it (Ctrl-C, or kill -9) and run the same command again: it continues where it stopped.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from durabatch.cli import main as durabatch_main

from .corpus import build

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "data" / "stdlib_docstrings.jsonl"
DEFAULT_LIMIT = 2000


def run_job(run_dir: str, limit: int | None, extra: list[str]) -> int:
    args = ["run", "--input", str(CORPUS), "--key", "id", "--fn", "examples.embed_docstrings.job:Embedder",
            "--batch-size", "32", "--run-dir", run_dir, *(["--limit", str(limit)] if limit else []), *extra]
    print("$ durabatch " + " ".join(args), file=sys.stderr, flush=True)
    try:
        durabatch_main(args)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def nearest_neighbours(run_dir: str, query_id: str = "base64:b64encode/0", k: int = 3) -> None:
    """A taste of the result: the docstrings closest to one of them, read back from the exported Parquet."""
    import numpy as np
    import pyarrow.parquet as pq

    import durabatch

    out = Path(run_dir) / "embeddings.parquet"
    rows = durabatch.export(run_dir, to=out)
    table = pq.read_table(out, columns=["id", "embedding"])
    ids = table.column("id").to_pylist()
    vectors = np.asarray(table.column("embedding").to_pylist(), dtype=np.float32)
    print(f"\n{rows:,} embeddings of {vectors.shape[1]} dimensions in {out}")
    query = ids.index(query_id) if query_id in ids else 0
    scores = vectors @ vectors[query]
    best = [i for i in np.argsort(-scores) if i != query][:k]
    print(f"closest to {ids[query]!r}:")
    for i in best:
        print(f"  {scores[i]:.3f}  {ids[i]}")


def main() -> None:
    parser = argparse.ArgumentParser(description="Embed the stdlib's docstrings with MiniLM as a durabatch job.",
                                     epilog="Other flags are passed to `durabatch run`.")
    parser.add_argument("--limit", type=int, default=DEFAULT_LIMIT, help="items to embed (0: all)")
    parser.add_argument("--full", action="store_true", help="embed the whole corpus")
    parser.add_argument("--run-dir", default="runs/embed_docstrings")
    args, extra = parser.parse_known_args()
    count = build(CORPUS)
    limit = None if args.full or args.limit == 0 else args.limit
    print(f"corpus: {count:,} docstring paragraphs of the Python standard library ({CORPUS})", file=sys.stderr)
    code = run_job(args.run_dir, limit, extra)
    if code in (0, 1):
        nearest_neighbours(args.run_dir)
        print(f"\nstatus: durabatch status {args.run_dir}\nthe rest: python -m examples.embed_docstrings --full "
              "(resumes from what is done)")
    elif code == 75:
        print("\nstopped early; run the same command again to resume", file=sys.stderr)
    raise SystemExit(code)


if __name__ == "__main__":
    main()
