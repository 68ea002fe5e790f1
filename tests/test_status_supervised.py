"""A supervised job between two attempts is "restarting", not "died": the supervisor leaves a marker (its pid, its
start time, the next attempt) that `durabatch status` believes only while that very process lives, and removes it
when supervision ends. A stop signal during the wait ends supervision at once."""

from __future__ import annotations

import json
import signal
import subprocess

import psutil
from conftest import durabatch_cli, durabatch_popen, log_has, wait_until

from durabatch.store.rundir import RunDir


def status(run_dir, cwd) -> tuple[str, dict]:
    text = durabatch_cli("status", run_dir, cwd=cwd)
    assert text.returncode == 0, text.stderr
    info = durabatch_cli("status", run_dir, "--json", cwd=cwd)
    assert info.returncode == 0, info.stderr
    return text.stdout, json.loads(info.stdout)


def test_status_says_restarting_while_the_supervisor_waits_and_died_once_it_is_gone(tmp_path, records_file):
    run_dir = tmp_path / "r"
    marker = RunDir(run_dir).restart_marker
    # userfns:aborts_on_13 kills its own process (inline: the runner) at id 13; the restart is minutes away
    proc = durabatch_popen("run", "-i", records_file(200), "--key", "id", "--fn", "userfns:aborts_on_13",
                           "--run-dir", run_dir, "--supervise", "--restart-delay", "600", "--progress", "off",
                           cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sleeper = None
    try:
        log = run_dir / "logs" / "supervise.log"
        wait_until(lambda: log_has(log, "restarting in"), timeout=120, what="the supervisor to announce a restart")
        assert proc.poll() is None
        assert log_has(log, "killed by signal 6") and log_has(log, "restarting in 600.0s")  # progress: no backoff

        text, info = status(run_dir, tmp_path)
        assert info["state"] == "restarting", info
        assert info["pid"] is None
        supervisor = info["supervisor"]
        assert supervisor["pid"] == proc.pid and supervisor["attempt"] == 2, supervisor
        assert 0 < supervisor["restart_in_s"] <= 600, supervisor
        assert "SIGABRT" in supervisor["last_exit"]
        state_line = next(line for line in text.splitlines() if line.startswith("state:"))
        assert "restarting: died (killed by signal 6 (SIGABRT))" in state_line, text
        assert f"the supervisor (pid {proc.pid}) restarts it in ~" in state_line, text
        assert "(attempt 2)" in state_line, text
        saved = marker.read_text()

        # a marker whose pid now names another process (not that supervisor) is not believed
        sleeper = subprocess.Popen(["sleep", "600"])
        stranger = {**json.loads(saved), "pid": sleeper.pid}  # another process, another start time
        marker.write_text(json.dumps(stranger))
        assert status(run_dir, tmp_path)[1]["state"] == "died"
        stranger["created"] = psutil.Process(sleeper.pid).create_time()  # the same start time, not durabatch
        marker.write_text(json.dumps(stranger))
        assert status(run_dir, tmp_path)[1]["state"] == "died"
        marker.write_text(saved)
        assert status(run_dir, tmp_path)[1]["state"] == "restarting"

        proc.send_signal(signal.SIGTERM)  # between attempts: supervision ends now, not after the 600 s wait
        assert proc.wait(timeout=120) == 75
    finally:
        for p in (proc, sleeper):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    assert log_has(log, "stopped by SIGTERM between attempts")
    assert not marker.exists(), "the supervisor left its marker behind"
    text, info = status(run_dir, tmp_path)
    assert info["state"] == "died" and info["supervisor"] is None, info
    assert "died (not running" in text

    marker.write_text(saved)  # what a SIGKILLed supervisor leaves: its pid is gone, the marker is stale
    assert status(run_dir, tmp_path)[1]["state"] == "died"
