"""Each run is recorded with what was finished before it (the report's and dashboard's "done before")."""

from __future__ import annotations

import durabatch
from durabatch.store.ledger import Ledger
from durabatch.store.rundir import RunDir


def fails_on_sevens(record: dict) -> dict:
    if record["id"] % 7 == 0:
        raise ValueError("seven")
    return {"v": record["id"]}


def test_a_run_records_the_items_finished_before_it(tmp_path):
    records = [{"id": i} for i in range(100)]
    durabatch.run(fails_on_sevens, records, key="id", run_dir=tmp_path / "run", limit=50, progress="off")
    durabatch.run(fails_on_sevens, records, key="id", run_dir=tmp_path / "run", progress="off")
    ledger = Ledger.open_readonly(RunDir(tmp_path / "run"))
    try:
        runs = ledger.runs()
    finally:
        ledger.close()
    assert [r["already_done"] for r in runs] == [0, 50]  # 42 done + 8 failed for good in the first 50
    assert [r["done"] for r in runs] == [42, 43]
