"""Ctrl-C in Python raises (issue 12 item 6): after the warm stop commits, `durabatch.run` raises
KeyboardInterrupt to the caller instead of returning, so a script does not run its next line."""

from __future__ import annotations

import os
import signal

import pytest

import durabatch


def interrupt_at_five(record: dict) -> dict:
    if record["id"] == 5:
        os.kill(os.getpid(), signal.SIGINT)  # a real signal, as a terminal's Ctrl-C sends
    return {"v": record["id"]}


def test_ctrl_c_commits_then_raises_keyboard_interrupt(tmp_path):
    records = [{"id": i} for i in range(50)]
    with pytest.raises(KeyboardInterrupt, match="stopped early"):
        durabatch.run(interrupt_at_five, records, key="id", run_dir=tmp_path / "run", progress="off")
    info = durabatch.status(tmp_path / "run")
    assert info["done"] >= 5  # what finished before the stop is committed
    summary = durabatch.run(interrupt_at_five, records[6:], key="id", run_dir=tmp_path / "run2", progress="off")
    assert summary.exit_code == 0
