"""Finding the user's function from its reference: "package.module:name", "package.module.name" or
"path/to/file.py:name"."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

from ..errors import ConfigError, option


def resolve(ref: str) -> Any:
    """Import "package.module:name" (also "package.module.name", or "path/to/file.py:name")."""
    module_name, sep, attr = ref.rpartition(":") if ref.count(":") == 1 or ".py:" in ref else ref.partition(":")
    if not sep:
        module_name, _, attr = ref.rpartition(".")
    if not module_name or not attr:
        raise ConfigError(f"fn '{ref}': expected package.module:callable or path/to/file.py:callable")
    if module_name.endswith(".py"):
        module_name = _from_file(ref, module_name)
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")  # like `python -m`: the current directory's modules are importable
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"fn '{ref}': cannot import module '{module_name}': {_next_step(module_name, attr, exc)}") \
            from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(f"fn '{ref}': module '{module_name}' has no attribute '{attr}'") from None
    if not callable(obj):
        raise ConfigError(f"fn '{ref}' is not callable")
    return obj


def _from_file(ref: str, path_text: str) -> str:
    """A function in a file: its folder joins sys.path (spawned workers inherit it) and the file is imported
    by its name, so worker processes can import it again."""
    path = Path(path_text).expanduser().resolve()
    if not path.is_file():
        raise ConfigError(f"fn '{ref}': no such file {path_text}")
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    return path.stem


def _next_step(module_name: str, attr: str, exc: ImportError) -> str:
    """What the user can do: the module itself not found (where Python looked), one it imports not installed, or
    an error inside its own imports."""
    missing = exc.name if isinstance(exc, ModuleNotFoundError) else None
    top = module_name.split(".")[0]
    if missing == top:
        file = option("fn", f"path/to/{top}.py:{attr}")
        return (f"Python finds no '{top}' in the current directory ({Path.cwd()}) nor on its path (PYTHONPATH, "
                f"installed packages). Run from the directory that holds {top}.py (or the package folder {top}/), "
                f"add that directory to PYTHONPATH, or name the file: {file}")
    if missing is not None and (module_name + ".").startswith(missing + "."):
        package, _, last = missing.rpartition(".")
        return f"package '{package}' has no module '{last}' (check the name)"
    if missing is not None:
        return (f"it imports '{missing}', which is not installed for this Python ({sys.executable}): install it "
                "there, or run durabatch with the Python that has it")
    return f"{exc} (an import inside '{module_name}' fails: `python -c 'import {module_name}'` shows where)"
