"""A job's fingerprint (function identity and code, result-affecting settings, source identity) and the readable
diff shown when a resume would mix two different jobs."""

from __future__ import annotations

import hashlib
import inspect
from typing import Any

from .settings import JobSettings
from .work import identity


def code_hash(target: Any) -> str:
    """Hash of the function's (or class's) source; bytecode when the source is not available."""
    obj = target if inspect.isfunction(target) or inspect.isclass(target) else type(target)
    try:
        text = inspect.getsource(obj).encode()
    except (OSError, TypeError):
        code = getattr(obj, "__code__", None)
        text = code.co_code if code is not None else repr(obj).encode()
    return hashlib.blake2b(text, digest_size=8).hexdigest()


def fingerprint(target: Any, settings: JobSettings, source_identity: dict) -> dict[str, Any]:
    return {
        "fn": identity(target),
        "fn_code": code_hash(target),
        "settings": settings.result_affecting(),
        "source": source_identity,
    }


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


def diff(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Lines like `fn_code: 1a2b... -> 3c4d...`, one per differing leaf."""
    old, new = _flatten(stored), _flatten(current)
    lines = []
    for name in sorted(old.keys() | new.keys()):
        if old.get(name) != new.get(name):
            lines.append(f"{name}: {old.get(name, '(absent)')!r} -> {new.get(name, '(absent)')!r}")
    return lines
