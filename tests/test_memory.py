"""Memory pressure: a batch function out of memory carries on with smaller batches; the watch warns and pauses."""

from __future__ import annotations

import pyarrow.parquet as pq
import userfns

import durabatch
from durabatch.config.settings import parse_size
from durabatch.core.events import Observer
from durabatch.observe.resources import sample
from durabatch.policies.memory import Memory, MemoryWatch


class Messages(Observer):
    def __init__(self):
        self.lines = []

    def on_message(self, message):
        self.lines.append(message)


def test_out_of_memory_batches_are_halved_and_the_size_that_fits_is_kept(tmp_path):
    seen = Messages()
    summary = durabatch.run(userfns.ooms_above_8, [{"id": i} for i in range(200)], key="id", run_dir=tmp_path / "r",
                            batch_size=32, progress="off", observers=[seen])
    assert summary.exit_code == 0 and summary.done == 200
    durabatch.export(tmp_path / "r", to=tmp_path / "o.parquet")
    table = pq.read_table(tmp_path / "o.parquet")
    assert table.column("id").to_pylist() == list(range(200))
    assert set(table.column("batch").to_pylist()) == {8}
    assert any("ran out of memory on 32 records" in m and "batches of 16" in m for m in seen.lines)
    assert any("batches of 8" in m for m in seen.lines)


def test_watch_warns_pauses_and_resumes_with_an_injected_clock():
    now = [0.0]
    readings = iter([Memory(50, None), Memory(95, None), Memory(120, None), Memory(80, None)])
    watch = MemoryWatch(max_ram=100, max_gpu=None, every=2.0, sampler=lambda: next(readings), clock=lambda: now[0])
    assert watch.check() == [] and not watch.over
    assert watch.check() == []  # not sampled again within `every`
    now[0] = 2.0
    assert watch.check() == ["memory high: RAM 0.00 GB of 0.00 GB"]
    now[0] = 4.0
    assert "pausing dispatch" in watch.check()[0] and watch.over
    now[0] = 6.0
    assert "resumed" in watch.check()[0] and not watch.over


def test_real_sample_counts_this_process():
    assert sample().ram > 10 * 2**20


def test_run_with_a_memory_limit_still_finishes(tmp_path):
    seen = Messages()
    summary = durabatch.run(userfns.digest, [{"id": i} for i in range(50)], key="id", run_dir=tmp_path / "r",
                            max_memory="1MB", progress="off", observers=[seen])
    assert summary.exit_code == 0 and summary.done == 50  # over the limit from the start: goes on one at a time
    assert any("pausing dispatch" in m for m in seen.lines)


def test_parse_size():
    assert parse_size("400MB") == 400 * 2**20
    assert parse_size("4GB") == 4 * 2**30
    assert parse_size("1.5g") == int(1.5 * 2**30)
