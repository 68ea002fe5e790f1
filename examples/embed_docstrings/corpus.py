"""A real corpus nobody here wrote: the docstrings of the Python standard library (modules, classes, functions,
its test suite included), found by parsing the stdlib's own source files with `ast` and split into paragraphs
(the unit a sentence-embedding model reads well): about 16,000 items on CPython 3.11. Deterministic for a given
Python build."""

from __future__ import annotations

import ast
import json
import re
import sysconfig
from collections.abc import Iterator
from pathlib import Path

SKIP_DIRS = {"site-packages", "__pycache__"}
MIN_CHARS = 40  # shorter paragraphs ("Args:", "Example::") carry too little meaning to embed


def stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(p for p in root.rglob("*.py") if not SKIP_DIRS & set(p.relative_to(root).parts[:-1]))


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def docstrings(path: Path, module: str) -> Iterator[dict]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return
    doc = ast.get_docstring(tree)
    if doc:
        yield {"id": f"{module}:", "module": module, "kind": "module", "text": doc}
    stack: list[tuple[ast.AST, str]] = [(tree, "")]
    while stack:
        node, prefix = stack.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                qualname = f"{prefix}{child.name}"
                doc = ast.get_docstring(child)
                if doc:
                    kind = "class" if isinstance(child, ast.ClassDef) else "function"
                    yield {"id": f"{module}:{qualname}", "module": module, "kind": kind, "text": doc}
                stack.append((child, f"{qualname}."))


def paragraphs(items: Iterator[dict]) -> Iterator[dict]:
    for item in items:
        parts = [p.strip() for p in re.split(r"\n\s*\n", item["text"]) if len(p.strip()) >= MIN_CHARS]
        for n, text in enumerate(parts):
            yield {**item, "id": f"{item['id']}/{n}", "text": text}


def build(out: Path) -> int:
    """Write the corpus as JSONL (once); return the number of items. Keys are module:qualname/paragraph, made
    unique by a #n suffix where a name is defined twice (e.g. under if/else)."""
    if out.exists():
        with open(out, "rb") as f:
            return sum(1 for _ in f)
    root = Path(sysconfig.get_paths()["stdlib"])
    out.parent.mkdir(parents=True, exist_ok=True)
    seen: dict[str, int] = {}
    tmp = out.with_suffix(".tmp")
    count = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for path in stdlib_files():
            for item in paragraphs(docstrings(path, _module_name(path, root))):
                n = seen[item["id"]] = seen.get(item["id"], 0) + 1
                if n > 1:
                    item["id"] = f"{item['id']}#{n}"
                f.write(json.dumps(item, ensure_ascii=False) + "\n")
                count += 1
    tmp.replace(out)
    return count
