"""Issue 12 item 5, live progress in Jupyter: under a real IPython kernel (started with jupyter_client, as a
notebook server does), `durabatch.run` shows one display that updates in place (display_data, then
update_display_data with the same display_id: a progress bar and the counts), and its messages still print
below it; no plain progress lines flood the cell."""

from __future__ import annotations

import re

import pytest

pytest.importorskip("ipykernel")
jupyter_client = pytest.importorskip("jupyter_client")

CELL = """
import time, durabatch

def slow(record):
    time.sleep(0.01)  # 200 items: two seconds at least, several updates of the display
    return {"y": record["id"] * 2}

records = [{"id": i} for i in range(200)]
summary = durabatch.run(slow, records, key="id", run_dir="runs/nb")
durabatch.run(slow, records, key="id", run_dir="runs/nb")  # again: "nothing to do", a message under the display
print("exit", summary.exit_code)
"""


def run_cell(cwd, code: str) -> list[dict]:
    """Execute one cell in a fresh kernel; every iopub message it caused, in order."""
    manager = jupyter_client.KernelManager(kernel_name="python3")
    manager.start_kernel(cwd=str(cwd))
    client = manager.client()
    try:
        client.start_channels()
        client.wait_for_ready(timeout=120)
        msg_id = client.execute(code)
        messages = []
        while True:
            message = client.get_iopub_msg(timeout=300)
            if message["parent_header"].get("msg_id") != msg_id:
                continue
            messages.append(message)
            if message["msg_type"] == "status" and message["content"]["execution_state"] == "idle":
                return messages
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)


def test_a_run_in_a_notebook_cell_updates_one_display_in_place(tmp_path):
    messages = run_cell(tmp_path, CELL)
    errors = [m["content"] for m in messages if m["msg_type"] == "error"]
    assert not errors, errors
    shown = [m["content"] for m in messages if m["msg_type"] == "display_data"]
    updates = [m["content"] for m in messages if m["msg_type"] == "update_display_data"]
    assert len(shown) == 2  # one display per run
    first_id = shown[0]["transient"]["display_id"]
    assert shown[0]["data"]["text/plain"].startswith("durabatch 0/200 | 0.0%")
    assert '<progress value="0" max="200"' in shown[0]["data"]["text/html"]
    mine = [u for u in updates if u["transient"]["display_id"] == first_id]
    assert len(mine) >= 2  # progress while it runs, and the end
    counts = [int(re.match(r"durabatch (\d+)/200", u["data"]["text/plain"]).group(1)) for u in mine]
    assert counts == sorted(counts) and 0 < counts[0] and counts[-1] == 200
    assert "200/200 | 100.0%" in mine[-1]["data"]["text/plain"] and "items/s" in mine[-1]["data"]["text/plain"]
    assert '<progress value="200" max="200"' in mine[-1]["data"]["text/html"]
    streams = "".join(m["content"]["text"] for m in messages if m["msg_type"] == "stream")
    assert "nothing to do: all 200 items are already finished" in streams  # messages still show
    assert not re.search(r"\] \d+/200 \|", streams)  # no plain progress lines beside the display
    assert "exit 0" in streams
