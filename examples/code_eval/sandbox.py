"""Execute one program in a sandboxed subprocess and classify the outcome: passed, failed, timeout or crashed.

The child runs `python -I -S launch.py` (isolated: no PYTHON* variables, no user or site packages) in a fresh
temporary directory as its cwd and HOME, with a minimal environment (no proxies, no keys), CPU time, address
space and file size limits, sockets replaced, and, where `unshare -rn` works, in a network namespace without
interfaces. It runs in its own session so that a kill on timeout takes its children too. Whatever the child
does (hang, os._exit, segfault) is its result, never an exception in the runner."""

from __future__ import annotations

import functools
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

LAUNCHER = Path(__file__).resolve().parent / "launch.py"


@dataclass
class Outcome:
    status: str  # passed, failed, timeout, crashed
    reason: str
    seconds: float


@functools.cache
def network_isolation() -> str:
    """'netns' when an unprivileged network namespace can be made here, else 'socket-patch' (the launcher's)."""
    try:
        ok = subprocess.run(["unshare", "-rn", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    return "netns" if ok else "socket-patch"


def execute(program: str, cpu_seconds: int = 3, memory_mb: int = 1024, wall_seconds: float = 6.0) -> Outcome:
    with tempfile.TemporaryDirectory(prefix="code_eval-", ignore_cleanup_errors=True) as tmp:
        path = Path(tmp) / "solution.py"
        path.write_text(program, encoding="utf-8")
        nonce = secrets.token_hex(16)
        env = {"PATH": "/usr/bin:/bin", "HOME": tmp, "LANG": "C.UTF-8", "CODE_EVAL_NONCE": nonce}
        cmd = [sys.executable, "-I", "-S", str(LAUNCHER), str(path), str(cpu_seconds), str(memory_mb)]
        if network_isolation() == "netns":
            cmd = ["unshare", "-rn", *cmd]
        # Output to files, not pipes: a chatty program cannot block on a full pipe, and RLIMIT_FSIZE caps them.
        with open(Path(tmp) / "out", "w+b") as out, open(Path(tmp) / "err", "w+b") as err:
            start = time.monotonic()
            child = subprocess.Popen(cmd, cwd=tmp, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                     start_new_session=True)
            try:
                code = child.wait(timeout=wall_seconds)
            except subprocess.TimeoutExpired:
                _kill_group(child)
                return Outcome("timeout", f"wall-clock limit of {wall_seconds:g} s exceeded", time.monotonic() - start)
            seconds = time.monotonic() - start
            _kill_group(child)  # anything it left running in its session
            out.seek(0)
            err.seek(0)
            return classify(code, out.read(), err.read().decode(errors="replace"), nonce, cpu_seconds, seconds)


def _kill_group(child: subprocess.Popen) -> None:
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    child.wait()


def classify(code: int, stdout: bytes, stderr: str, nonce: str, cpu_seconds: int, seconds: float) -> Outcome:
    if code == 0 and stdout.endswith(nonce.encode()):
        return Outcome("passed", "", seconds)
    if code in (-signal.SIGXCPU, -signal.SIGKILL) and seconds >= cpu_seconds * 0.9:
        return Outcome("timeout", f"CPU time limit of {cpu_seconds} s exceeded", seconds)
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.valid_signals() else f"signal {-code}"
        return Outcome("crashed", f"killed by {name}", seconds)
    if code == 1 and "Traceback" in stderr:
        last = [line for line in stderr.strip().splitlines() if line.strip()][-1]
        return Outcome("failed", last[:300], seconds)
    return Outcome("crashed", f"exited with code {code} before the tests finished", seconds)
