"""Concept extraction from documents, one LLM call per segment, grouped back per document.

Documents: the module docstrings of the Python standard library longer than 1,000 characters (a real corpus,
built from the stdlib's own sources). Endpoint and key from OPENAI_BASE_URL / OPENAI_API_KEY, or --local.

    python -m examples.doc_extract --local --rpm 3000
"""

from __future__ import annotations

import argparse
import ast
import json
import sysconfig
from pathlib import Path

from durabatch.cli import main as durabatch_main

from ..local_api import local_api

HERE = Path(__file__).resolve().parent


def build_documents(out: Path, limit: int) -> Path:
    root = Path(sysconfig.get_paths()["stdlib"])
    docs = []
    for path in sorted(root.glob("*.py")):
        try:
            text = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        if text and len(text) > 1000:
            docs.append({"id": path.stem, "title": text.splitlines()[0][:80], "text": text})
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(d) + "\n" for d in docs[:limit]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=40)
    parser.add_argument("--local", action="store_true", help="use the bundled local OpenAI-compatible server")
    parser.add_argument("--run-dir", default="runs/doc_extract")
    args, extra = parser.parse_known_args()
    data = build_documents(HERE / "data" / "documents.jsonl", args.documents)
    with local_api(args.local):
        try:
            durabatch_main(["run", "--input", str(data), "--key", "id",
                            "--fn", "examples.doc_extract.task:ExtractConcepts",
                            "--split", "examples.doc_extract.task:segments",
                            "--combine", "examples.doc_extract.task:per_document",
                            "--run-dir", args.run_dir, "--concurrency", "16", *extra])
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
    raise SystemExit(code)


if __name__ == "__main__":
    main()
