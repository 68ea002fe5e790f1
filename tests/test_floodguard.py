"""100,000 identical log lines through the guard write a bounded number of lines and report the count."""

from __future__ import annotations

import io
import logging

from durabatch.observe.floodguard import guard_logs


def test_identical_lines_collapse_with_a_count():
    stream = io.StringIO()
    logger = logging.getLogger("flood-test")
    logger.propagate = False
    handler = logging.StreamHandler(stream)
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    warnings = io.StringIO()
    durabatch_log = logging.getLogger("durabatch")
    durabatch_log.addHandler(logging.StreamHandler(warnings))
    guard = guard_logs(max_lines_per_second=100, logger=logger)
    for _ in range(100_000):
        logger.debug("[DEBUG_BC_GPU] inflow_L: %s", 1.5)
    logger.info("training done")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert "99,999 more lines like the previous one collapsed" in lines[1] and "training done" in lines[1]
    assert guard.suppressed == 99_999
    assert "log flood" in warnings.getvalue()
    different = [logger.info("step %d", i) for i in range(5)]  # different arguments, same format: collapsed too
    assert len(stream.getvalue().splitlines()) == 3 and len(different) == 5
