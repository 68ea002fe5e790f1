"""The merged report of a run split into ranks counts every rank's API calls, tokens and cost (not rank 0's), charts
them as one job, and merges the ranks' resource samples (highest RAM and GPU memory, CPU added up)."""

from __future__ import annotations

import math

import pytest

import durabatch
from durabatch.observe import report
from durabatch.observe.ranked import _merged_resources
from durabatch.store import ranks
from durabatch.testing import AskAsync, LLMServer, ServerConfig

pytest.importorskip("openai")
PRICES = {"price_input": 1000.0, "price_output": 1000.0, "currency": "EUR"}


def test_the_merged_report_counts_every_ranks_api_calls_and_cost(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-ranked-report")
    questions = [{"id": i, "question": f"Question {i}: which letter?"} for i in range(30)]
    with LLMServer(ServerConfig(latency_median=0.01)) as server:
        monkeypatch.setenv("LLM_BASE_URL", server.url)
        for rank in (0, 1):
            done = durabatch.run(AskAsync, questions, key="id", run_dir=tmp_path / "run", rank=rank, ranks=2,
                                 progress="off", concurrency=2, **PRICES)
            assert done.exit_code == 0
        served = server.log.ok
    per_rank = [report.collect(rd.path)["api"] for _, rd in ranks.rank_dirs(tmp_path / "run")]
    assert len(per_rank) == 2 and all(a["answered"] > 0 for a in per_rank)
    data = report.collect(tmp_path / "run")
    api = data["api"]
    assert api["answered"] - api["rate_limited"] == served == sum(a["answered"] - a["rate_limited"] for a in per_rank)
    assert api["cost"] == pytest.approx(sum(a["cost"] for a in per_rank)) and api["currency"] == "EUR"
    assert data["api_series"]["cost"][-1] == pytest.approx(api["cost"], rel=1e-3)  # the chart ends at the total
    assert data["api_series"]["cost"] == sorted(data["api_series"]["cost"])  # cumulative over both ranks
    body = report.body_html(data)
    assert "All ranks: RAM and GPU memory of the highest rank" in body
    status = durabatch.status(tmp_path / "run")  # `status` of the ranks merged says the same
    assert status["api"]["cost"] == pytest.approx(api["cost"]) and status["api"]["tokens"] == api["tokens"]
    from durabatch.observe.status import render

    assert f"cost {api['cost']:.4f} EUR" in render(status)


def test_resource_samples_of_ranks_merge_into_the_highest_memory_and_the_summed_cpu():
    nan = math.nan
    rank0 = {"t": [0.0, 10.0], "ram_mb": [100.0, 300.0], "gpu_mb": [nan, nan], "cpu_pct": [nan, 50.0]}
    rank1 = {"t": [0.0, 10.0], "ram_mb": [200.0, 250.0], "gpu_mb": [1000.0, 1200.0], "cpu_pct": [nan, 80.0]}
    merged = _merged_resources([(100.0, rank0), (100.0, rank1)], t0=100.0)
    assert merged["ram_mb"][0] == 200.0 and merged["ram_mb"][-1] == 300.0
    assert merged["gpu_mb"][0] == 1000.0 and merged["gpu_mb"][-1] == 1200.0
    assert math.isnan(merged["cpu_pct"][0]) and merged["cpu_pct"][-1] == 130.0
    # A rank that started later: its samples move to the merged start.
    later = _merged_resources([(100.0, rank0), (150.0, rank1)], t0=100.0)
    assert later["t"][0] < 5 and later["t"][-1] > 55


def test_no_rank_with_api_calls_leaves_the_api_out():
    from durabatch.observe.ranked import _merged_history, _summed_api

    assert _summed_api([None, None]) is None and _merged_history([None, []]) is None
