"""The chaos test, at suite size: a supervised job whose runner is SIGKILLed at random moments and whose
supervisor is SIGTERMed; every key exactly once, equal to a reference loop; re-runs within the promised bound.
`python bench/chaos.py` runs the full 50,000-item, 100-kill version."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import chaos  # noqa: E402


def test_supervised_job_survives_random_kills_exactly_once(tmp_path):
    result = chaos.chaos(items=20_000, kills=25, terms=2, workdir=tmp_path, item_ms=0.5, verbose=False)
    assert result["exactly_once"], result
    assert result["kills"] >= 20
    assert result["quarantined"] == 0  # external kills never make an innocent item guilty
    assert result["re_executions"] <= result["bound_total"], result
