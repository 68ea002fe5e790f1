"""The folders are the architecture: each layer imports only what it may (docs/architecture.md, the never-list).
An `ast` walk over src/durabatch fails on the first import that breaks a rule, naming the file and line."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "durabatch"
LEAVES = {"errors", "intervals", "columns"}
EDGE = {"cli", "api", "supervise", "environment", "__init__", "__main__", "testing"}
HOUSE = {p.stem if p.is_file() else p.name for p in SRC.iterdir() if p.suffix == ".py" or p.is_dir()} - {
    "__pycache__"}

# layer -> what it must never import (top-level names under durabatch)
NEVER = {
    "core": {"config", "cli", "api", "observe", "supervise", "testing", "environment"},
    "engines": {"core", "store", "config", "observe", "cli", "api"},
    "store": {"core", "config", "engines", "observe", "cli", "api"},
    "sources": {"core", "store", "engines", "config", "observe", "cli", "api"},
    "policies": HOUSE - {"errors", "policies"},
    "loops": {"core", "store", "engines", "sources", "config", "cli", "api"},
    "observe": {"cli", "api", "config", "engines"},
    "config": {"core", "store", "observe", "cli", "api", "loops"},
    "batch_api": {"cli", "api", "config", "observe", "supervise", "environment", "testing"},
}
for leaf in LEAVES:
    NEVER[leaf] = HOUSE - {leaf}
# Only the edge reads the environment (and so the settings model, through config/).
ENV_READERS = EDGE | {"config"}


def _layer(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imported(path: Path, tree: ast.AST) -> list[tuple[int, str]]:
    """(line, top-level durabatch name) for every import of the house in this file."""
    rel = path.relative_to(SRC)
    package = ["durabatch", *rel.parts[:-1]]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = [*base, *(node.module.split(".") if node.module else [])]
            else:
                target = node.module.split(".") if node.module else []
            if target[:1] != ["durabatch"]:
                continue
            if len(target) == 1:  # from . import x: each name is a module of the package
                found += [(node.lineno, alias.name) for alias in node.names]
            else:
                found.append((node.lineno, target[1]))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name.split(".")[1]) for a in node.names
                      if a.name.startswith("durabatch.")]
    return found


FILES = sorted(p for p in SRC.rglob("*.py") if "integrations" not in p.parts)


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(SRC)))
def test_layer_imports_only_what_it_may(path: Path) -> None:
    layer = _layer(path)
    tree = ast.parse(path.read_text(), str(path))
    bad = [f"{path.relative_to(SRC)}:{line} imports durabatch.{name}"
           for line, name in _imported(path, tree) if name in NEVER.get(layer, set())]
    assert not bad, f"layer '{layer}' must not import these (docs/architecture.md):\n" + "\n".join(bad)


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(SRC)))
def test_only_the_edge_reads_the_environment(path: Path) -> None:
    if _layer(path) in ENV_READERS:
        return
    tree = ast.parse(path.read_text(), str(path))
    reads = [node.lineno for node in ast.walk(tree)
             if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv")
             and isinstance(node.value, ast.Name) and node.value.id == "os"]
    assert not reads, f"{path.relative_to(SRC)} reads os.environ at line(s) {reads}: pass the value in from the edge"


def test_modules_stay_small() -> None:
    big = {str(p.relative_to(SRC)): n for p in FILES if (n := len(p.read_text().splitlines())) > 420}
    assert not big, f"modules over ~400 lines (split by job): {big}"


def test_the_rule_catches_a_bad_import(tmp_path: Path) -> None:
    """The walk itself works: a core module importing the CLI is found."""
    fake = SRC / "core" / "runner.py"
    tree = ast.parse("from ..cli import main\nfrom .. import api\n")
    names = [name for _, name in _imported(fake, tree)]
    assert names == ["cli", "api"]
    assert {"cli", "api"} <= NEVER["core"]
