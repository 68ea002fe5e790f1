"""A job's fingerprint: function identity and code, result-affecting settings, source identity. (The diff shown
when a resume would mix two jobs is core/plan.py's: it compares what the ledger stored with this.)"""

from __future__ import annotations

import functools
import hashlib
import inspect
from typing import Any

from ..engines.user_fn import identity, takes_no_arguments
from ..errors import ConfigError
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
    """The job's identity; `params` at the top level so that a change reads `params.model: 'A' -> 'B'`."""
    return {
        "fn": identity(target),
        "fn_code": code_hash(target),
        "params": settings.params,
        "settings": settings.result_affecting(),
        "source": source_identity,
    }


def check_params(target: Any, params: dict[str, Any], batched: bool) -> None:
    """Refuse, before anything runs, params the function cannot take (instead of every item failing): a class
    takes them in its constructor, or in setup() when the constructor takes none; a function as keywords."""
    if not params:
        return
    where, fn = _params_taker(target)
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return  # a builtin or C callable: nothing to check against
    args = () if where != "the function" else ([],) if batched else ({},)
    try:
        signature.bind(*args, **params)
    except TypeError as exc:
        taken = ", ".join(n for n in signature.parameters if n != "self") or "none"
        raise ConfigError(f"params {', '.join(map(repr, params))}: {where} of {identity(target)} cannot take "
                          f"them ({exc}; its parameters: {taken})") from None


def _params_taker(target: Any) -> tuple[str, Any]:
    if not inspect.isclass(target):
        return "the function", target
    if takes_no_arguments(target.__init__):
        setup = getattr(target, "setup", None)
        if callable(setup):
            return "setup()", functools.partial(setup, None)
    return "the constructor", functools.partial(target.__init__, None)
