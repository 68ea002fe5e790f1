"""Runs inside the sandboxed child, before the untrusted program: `python -I -S launch.py program.py CPU MB`.

Why a launcher rather than preexec_fn: the limits are set in the child itself, so nothing runs between fork and
exec in the (multi-threaded) runner. Why the nonce: a program may exit with code 0 before its tests ran
(os._exit(0)); only the launcher, after the whole program returned, prints the nonce that means "passed"."""

import os
import resource
import socket
import sys


def _no_network(*args, **kwargs):
    raise OSError("network access is disabled in the sandbox")


def main() -> None:
    program, cpu, megabytes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    nonce = os.environ.pop("CODE_EVAL_NONCE", "")
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))  # SIGXCPU at cpu s, SIGKILL a second later
    limit = megabytes * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))  # allocations beyond fail with MemoryError
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))  # output and files: 1 MiB each
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a segfault leaves no core file behind
    # Belt and braces: the runner also uses a network namespace without interfaces when `unshare -rn` works.
    socket.socket = socket.create_connection = socket.socketpair = _no_network  # type: ignore[assignment]
    with open(program, encoding="utf-8") as f:
        code = compile(f.read(), program, "exec")
    del sys.argv[1:]
    exec(code, {"__name__": "__main__", "__builtins__": __builtins__})  # noqa: S102 - running it is the point
    sys.stdout.flush()
    os.write(1, nonce.encode())


if __name__ == "__main__":
    main()
