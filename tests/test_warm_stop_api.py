"""Issue 13 item 3: a warm stop of an asyncio job whose items wait for the rate limit (not in flight) ends as soon
as no call is in flight, not after the whole grace period."""

from __future__ import annotations

import signal
import time

from conftest import durabatch_popen, make_records, wait_until, write_jsonl

from durabatch.errors import ExitCode


def test_a_warm_stop_with_no_call_in_flight_does_not_wait_out_the_grace(tmp_path):
    data = write_jsonl(tmp_path / "in.jsonl", make_records(200))
    calls = tmp_path / "calls.txt"
    # 3 requests a minute: after the first call every item waits ~20 s per place in the queue, for minutes.
    proc = durabatch_popen("run", "-i", data, "--key", "id", "--fn", "fns_api_stop:noted", "--rpm", "3",
                           "--grace-seconds", "600", "--run-dir", tmp_path / "run", "--progress", "off",
                           cwd=tmp_path, env={"CALLS_FILE": str(calls)})
    try:
        wait_until(lambda: calls.exists() and calls.read_text().strip(), timeout=120, what="the first call")
        proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        code = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == ExitCode.STOPPED
    # Nothing was in flight after the first call: the stop must not have waited out the 600 s grace.
    assert time.monotonic() - t0 < 120
    done = len(calls.read_text().split())
    assert 1 <= done < 200
