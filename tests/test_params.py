"""The function's parameters and its calling shape are part of the job: `params:` reaches the function and the
fingerprint, and resuming with other params, or with a batch function where a per-record one ran, is refused."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
from conftest import durabatch_cli, make_records, read_export, write_jsonl

import durabatch
from durabatch.errors import ChangedJobError, ConfigError

RECORDS = make_records(20)


def tag(record: dict, model: str = "none", temperature: float = 0.0) -> dict:
    return {"model": model, "temperature": temperature}


class Tagger:
    def __init__(self, model: str):
        self.model = model

    def __call__(self, record: dict) -> dict:
        return {"model": self.model}


class SetupTagger:
    def setup(self, model: str) -> None:
        self.model = model

    def __call__(self, record: dict) -> dict:
        return {"model": self.model}


def tag_batch(records: list, model: str) -> list:
    return [{"model": model} for _ in records]


async def tag_async(record: dict, model: str) -> dict:
    return {"model": model}


def exported(tmp_path):
    durabatch.export(tmp_path / "r", to=tmp_path / "o.parquet")
    return pq.read_table(tmp_path / "o.parquet").to_pylist()


@pytest.mark.parametrize("fn,extra", [(tag, {}), (Tagger, {}), (SetupTagger, {}), (tag_batch, {"batch_size": 4}),
                                      (tag_async, {}), (tag, {"engine": "processes", "workers": 2})])
def test_params_reach_the_function(tmp_path, fn, extra):
    summary = durabatch.run(fn, RECORDS, key="id", run_dir=tmp_path / "r", params={"model": "A"}, progress="off",
                            **extra)
    assert summary.exit_code == 0 and summary.done == 20
    assert {r["model"] for r in exported(tmp_path)} == {"A"}


def test_resuming_with_other_params_is_refused_with_the_diff(tmp_path):
    durabatch.run(tag, RECORDS, key="id", run_dir=tmp_path / "r", params={"model": "A"}, limit=10, progress="off")
    with pytest.raises(ChangedJobError) as err:
        durabatch.run(tag, RECORDS, key="id", run_dir=tmp_path / "r", params={"model": "B"}, progress="off")
    assert "params.model: 'A' -> 'B'" in str(err.value)
    summary = durabatch.run(tag, RECORDS, key="id", run_dir=tmp_path / "r", params={"model": "A"}, progress="off")
    assert summary.exit_code == 0 and summary.done == 10
    assert {r["model"] for r in exported(tmp_path)} == {"A"}


def test_a_parameter_the_function_does_not_take_is_a_configuration_error(tmp_path):
    with pytest.raises(ConfigError, match="'modle'"):
        durabatch.run(tag, RECORDS, key="id", run_dir=tmp_path / "r", params={"modle": "A"}, progress="off")
    with pytest.raises(ConfigError, match="'model'"):
        durabatch.run(lambda r: r, RECORDS, key="id", run_dir=tmp_path / "r2", params={"model": "A"},
                      progress="off")


def test_params_from_the_job_file_and_the_command_line(tmp_path):
    data = write_jsonl(tmp_path / "data.jsonl", RECORDS)
    (tmp_path / "fns.py").write_text("def tag(record, model, temperature=0.0):\n"
                                     "    return {'model': model, 'temperature': temperature}\n")
    (tmp_path / "job.yaml").write_text(f"fn: fns:tag\ninput: {data}\nkey: id\nrun_dir: r\n"
                                       "params:\n  model: A\n  temperature: 0.5\n")
    first = durabatch_cli("run", "job.yaml", "--limit", "5", "--progress", "off", cwd=tmp_path, extra_path=tmp_path)
    assert first.returncode == 0, first.stderr
    changed = durabatch_cli("run", "job.yaml", "--param", "model=B", "--progress", "off", cwd=tmp_path,
                            extra_path=tmp_path)
    assert changed.returncode == 2
    assert "params.model: 'A' -> 'B'" in changed.stderr and "temperature" not in changed.stderr
    same = durabatch_cli("run", "job.yaml", "--param", "temperature=0.5", "--progress", "off", cwd=tmp_path,
                         extra_path=tmp_path)
    assert same.returncode == 0, same.stderr
    rows = read_export(tmp_path / "r", tmp_path).to_pylist()
    assert len(rows) == 20 and {(r["model"], r["temperature"]) for r in rows} == {("A", 0.5)}


def test_a_bad_param_flag_is_a_usage_error(tmp_path):
    data = write_jsonl(tmp_path / "data.jsonl", RECORDS)
    result = durabatch_cli("run", "-i", data, "--key", "id", "--fn", "jobs:digest", "--run-dir", "r",
                           "--param", "model", cwd=tmp_path)
    assert result.returncode == 2 and "key=value" in result.stderr


# -- the calling shape ---------------------------------------------------------------------------------------------
def per_record(record: dict) -> dict:
    return {"double": record["id"] * 2}


def test_adding_batch_size_on_resume_is_refused_with_the_diff(tmp_path):
    durabatch.run(per_record, RECORDS, key="id", run_dir=tmp_path / "r", limit=10, progress="off")
    with pytest.raises(ChangedJobError) as err:
        durabatch.run(per_record, RECORDS, key="id", run_dir=tmp_path / "r", batch_size=8, progress="off")
    assert "settings.call: 'one record' -> 'batches of rows'" in str(err.value)
    summary = durabatch.run(per_record, RECORDS, key="id", run_dir=tmp_path / "r", progress="off")
    assert summary.exit_code == 0 and summary.done == 10


def test_the_batch_size_itself_may_change(tmp_path):
    durabatch.run(tag_batch, RECORDS, key="id", run_dir=tmp_path / "r", batch_size=4, params={"model": "A"},
                  limit=8, progress="off")
    summary = durabatch.run(tag_batch, RECORDS, key="id", run_dir=tmp_path / "r", batch_size=16,
                            params={"model": "A"}, progress="off")
    assert summary.exit_code == 0 and summary.done == 12


def test_the_llm_eval_example_takes_its_model_as_a_param():
    import sys
    from pathlib import Path

    from durabatch.config.job import check_params
    from durabatch.config.settings import read_job_file

    root = Path(__file__).resolve().parent.parent
    sys.path.insert(0, str(root))
    from examples.llm_eval.task import AskModel

    params = read_job_file(root / "examples" / "llm_eval" / "job.yaml")["params"]
    assert params["model"] == "gpt-4o-mini"
    check_params(AskModel, params, batched=False)  # the constructor takes them
    assert AskModel(**params).model == "gpt-4o-mini"


def test_a_run_directory_from_before_the_calling_shape_was_recorded_still_resumes(tmp_path):
    """An older durabatch stored no `settings.call`: resuming across the upgrade is not refused for it, while a
    real change (here the key) still is."""
    from durabatch.store.ledger import Ledger
    from durabatch.store.rundir import RunDir

    records = [{"id": i, "v": i} for i in range(10)]
    durabatch.run(per_record, records[:5], key="id", run_dir=tmp_path / "run")
    ledger = Ledger.open(RunDir(tmp_path / "run"))
    try:
        stored = ledger.get_meta("fingerprint")
        del stored["settings"]["call"]
        ledger.set_meta(fingerprint=stored)
    finally:
        ledger.close()
    summary = durabatch.run(per_record, records[:5], key="id", run_dir=tmp_path / "run")
    assert summary.exit_code == 0 and summary.already_done == 5
    with pytest.raises(ChangedJobError, match="settings.key"):
        durabatch.run(per_record, [{"k": r["id"], **r} for r in records[:5]], key="k", run_dir=tmp_path / "run")
