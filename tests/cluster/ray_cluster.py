"""A real two-node Ray cluster on loopback for tests and benchmarks, stopped by pid (never `ray stop`, which kills
every Ray process of the user).

Everything runs inside a private network namespace (`unshare -n`, then `lo` up): Ray would otherwise swap
127.0.0.1 for a routable address. The driver (`durabatch run --engine ray`) must run inside it too: `command()`
wraps a command line with `nsenter --net=...`. Token auth is off (it rejects the second node of a loopback
cluster), usage stats off, no dashboard, Ray's files under the caller's directory, and node deaths are detected in
~3 s instead of ~15 s. Each node's workers see DURABATCH_TEST_NODE (head / second) in their environment, so a
test function can leave evidence of where it ran. Needs root (or user namespaces) and the `unshare` and `nsenter`
commands (util-linux)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

RAY_ENV = {
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_health_check_period_ms": "500",
    "RAY_health_check_timeout_ms": "500",
    "RAY_health_check_failure_threshold": "4",
}
PORT = 6379
# `ip link set lo up` without iproute2: SIOCGIFFLAGS, then SIOCSIFFLAGS with IFF_UP.
LOOPBACK_UP = """
import fcntl, socket, struct
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
flags = struct.unpack("16sH", fcntl.ioctl(s, 0x8913, struct.pack("16sH", b"lo", 0)))[1]
fcntl.ioctl(s, 0x8914, struct.pack("16sH", b"lo", flags | 1))
"""
ADDRESS = f"127.0.0.1:{PORT}"


def available() -> str | None:
    """Why a cluster cannot be made here, or None."""
    if importlib_missing("ray"):
        return "ray is not installed (pip install 'durabatch[ray]')"
    for tool in ("unshare", "nsenter"):
        if shutil.which(tool) is None:
            return f"the {tool} command is missing"
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True)
    if probe.returncode != 0:
        return f"cannot make a network namespace: {probe.stderr.decode().strip()}"
    return None


def importlib_missing(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is None


class RayCluster:
    """A head and one more node, each a `ray start --block` in its own process group inside one namespace."""

    def __init__(self, root: Path, cpus_per_node: int = 2, pythonpath: list[str] | None = None):
        self.root = root
        self.cpus = cpus_per_node
        self.pythonpath = pythonpath or []
        self.holder: subprocess.Popen | None = None  # keeps the namespace alive
        self.nodes: dict[str, subprocess.Popen] = {}

    # -- the namespace -------------------------------------------------------------------------------------------
    def env(self, **extra: str) -> dict[str, str]:
        """The environment for Ray nodes and drivers: the settings above, Ray's files here, tests importable."""
        paths = self.pythonpath + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        return {**os.environ, **RAY_ENV, "RAY_TMPDIR": str(self.root / "tmp"), "PYTHONPATH": os.pathsep.join(paths),
                **extra}

    def driver_env(self, **extra: str) -> dict[str, str]:
        """For a driver (`durabatch run --engine ray`) run with `command()`: RAY_ADDRESS names this cluster."""
        return self.env(RAY_ADDRESS=ADDRESS, PYTHONFAULTHANDLER="1", **extra)  # a crash shows its stack

    def command(self, args: list[str]) -> list[str]:
        """A command line run inside the cluster's network namespace."""
        assert self.holder is not None
        return ["nsenter", f"--net=/proc/{self.holder.pid}/ns/net", *args]

    def start(self, timeout: float = 120.0) -> None:
        (self.root / "tmp").mkdir(parents=True, exist_ok=True)
        self.holder = subprocess.Popen(["unshare", "-n", "sleep", "infinity"], stdin=subprocess.DEVNULL)
        # The namespace's identity is the link's text (net:[inode]); the paths themselves always differ. Until
        # `unshare` has run, the holder is still in this namespace, and lo would be set up in the wrong one.
        _wait(lambda: os.readlink(f"/proc/{self.holder.pid}/ns/net") != os.readlink("/proc/self/ns/net"),
              30, "the network namespace")
        subprocess.run(self.command([sys.executable, "-c", LOOPBACK_UP]), check=True)
        self._start_node("head", ["--head", f"--port={PORT}", "--include-dashboard=false"])
        self._wait_nodes(1, timeout)
        self._start_node("second", [f"--address={ADDRESS}"])
        self._wait_nodes(2, timeout)

    def _start_node(self, name: str, args: list[str]) -> None:
        ray = str(Path(sys.executable).with_name("ray"))
        log = open(self.root / f"{name}.log", "ab")  # the node's output, for a failing test to show
        self.nodes[name] = subprocess.Popen(
            self.command([ray, "start", "--block", "--node-ip-address=127.0.0.1", f"--num-cpus={self.cpus}",
                          "--disable-usage-stats", *args]),
            env=self.env(DURABATCH_TEST_NODE=name), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            start_new_session=True)  # its own process group: raylet, workers and all are stopped together
        log.close()

    def alive_nodes(self) -> int:
        """How many nodes the cluster counts alive (asked from inside the namespace)."""
        code = "import ray; ray.init(logging_level='ERROR'); print(sum(n['Alive'] for n in ray.nodes()))"
        try:
            out = subprocess.run(self.command([sys.executable, "-c", code]), env=self.driver_env(),
                                 capture_output=True, text=True, timeout=120)
            return int(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else -1
        except (subprocess.TimeoutExpired, ValueError, IndexError):  # a slow or chatty start: ask again
            return -1

    def _wait_nodes(self, count: int, timeout: float) -> None:
        _wait(lambda: self.alive_nodes() == count, timeout, f"{count} Ray node(s) alive (logs in {self.root})")

    # -- stopping, by pid ----------------------------------------------------------------------------------------
    def kill_node(self, name: str) -> None:
        """SIGKILL a node's whole process group (its `ray start`, raylet, object store, workers)."""
        process = self.nodes.pop(name)
        _kill_group(process)

    def stop(self) -> None:
        # SIGKILL, group by group: a test cluster keeps nothing worth a graceful stop (which takes ~10 s).
        for name in list(self.nodes)[::-1]:
            _kill_group(self.nodes.pop(name))
        if self.holder is not None:
            self.holder.kill()
            self.holder.wait()
            self.holder = None


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.2)


def module_cluster(folder: Path, pythonpath: list[str]):
    """A test module's cluster (a pytest fixture's body: `yield from module_cluster(...)`): skipped with the reason
    where no namespace can be made, stopped by pid at the end. Each module gets its own, because a test may kill
    its second node."""
    import pytest

    why = available()
    if why is not None:
        pytest.skip(f"no local Ray cluster here: {why}")
    made = RayCluster(folder, cpus_per_node=2, pythonpath=pythonpath)
    try:
        made.start()
        yield made
    finally:
        made.stop()
