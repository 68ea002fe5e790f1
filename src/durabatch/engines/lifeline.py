"""No orphans: a child process that dies with its parent, even when the parent is SIGKILLed (Linux).

prctl(PR_SET_PDEATHSIG) asks the kernel to send a signal to this process when its parent dies; a check of
getppid() afterwards closes the race of a parent that died before the request (the child was already
re-parented). The setting survives exec, so it can be made between fork and exec (the supervisor's child)."""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int, sig: int = signal.SIGKILL) -> None:
    """Ask for `sig` when the parent dies; exit at once if `parent_pid` is no longer the parent. Elsewhere than
    Linux, nothing (the pipes' EOF remains the only way a child learns that its parent is gone)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:
        os._exit(75)  # the parent died before the request took effect: stopped (never 1, "failed items")
