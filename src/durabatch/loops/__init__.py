"""Optional integrations (torch, stable-baselines3). Each imports its library lazily and says how to install it."""

from __future__ import annotations

import importlib
from typing import Any


def require(module: str, extra: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"this needs {module}: pip install 'durabatch[{extra}]'") from None
