"""Finding the user's function from its reference: "package.module:name", "package.module.name" or
"path/to/file.py:name"."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

from ..errors import ConfigError


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
        raise ConfigError(f"fn '{ref}': cannot import module '{module_name}': {exc}") from None
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
