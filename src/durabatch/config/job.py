"""A job's fingerprint: function identity and code, result-affecting settings, source identity. (The diff shown
when a resume would mix two jobs is core/plan.py's: it compares what the ledger stored with this.)"""

from __future__ import annotations

import hashlib
import inspect
from typing import Any

from ..engines.user_fn import identity
from .settings import JobSettings


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
