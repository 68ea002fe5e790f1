"""The processes engine spawns its workers, and a spawned worker first re-imports the main script (as
`__mp_main__`) so that the script's functions exist there. A script that calls durabatch.run at module level
without `if __name__ == "__main__":` runs the job again in every worker. The worker side stops quietly
(`reimporting_main`); the runner side names the line to guard (`unguarded_call`)."""

from __future__ import annotations

import ast
import os
import sys
from pathlib import Path
from types import FrameType


def _module_frame(name: str) -> FrameType | None:
    """The frame running the top level of the module called `name`, if it is on the stack."""
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "<module>" and frame.f_globals.get("__name__") == name:
            return frame
        frame = frame.f_back
    return None


def reimporting_main() -> bool:
    """Whether this call comes from the top level of a main script that a spawned worker is re-importing (code
    under the guard never runs there: it is unguarded)."""
    return _module_frame("__mp_main__") is not None


def unguarded_call() -> str | None:
    """'script.py:6' when this call comes from a top-level statement of the main script that is not an
    `if __name__ == "__main__":` block; None otherwise (guarded, the CLI, a notebook, an unreadable file)."""
    frame = _module_frame("__main__")
    path = frame.f_globals.get("__file__") if frame is not None else None
    if frame is None or not path:
        return None
    try:
        tree = ast.parse(Path(path).read_text(), path)
    except (OSError, SyntaxError, ValueError):
        return None
    line = frame.f_lineno
    for statement in tree.body:
        if statement.lineno <= line <= (statement.end_lineno or statement.lineno):
            if isinstance(statement, ast.If) and "__name__" in ast.unparse(statement.test):
                return None
            shown = os.path.relpath(path)
            return f"{path if shown.startswith('..') else shown}:{line}"
    return None
