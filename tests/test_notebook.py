"""The Python API's first day (issue 12 item 5): what a notebook shows for a run (RunSummary's repr and HTML), and
hints spelled for the caller: `allow_changed=True` from Python, `--allow-changed` from the command line."""

from __future__ import annotations

import pytest
import userfns
from conftest import durabatch_cli, make_records
from typer.testing import CliRunner

import durabatch
from durabatch.cli import FLAG_NAMES, app
from durabatch.core.summary import RunSummary
from durabatch.errors import ChangedJobError, ExitCode, InputError, cli_spelling

RECORDS = make_records(40)


def test_the_repr_of_a_finished_run_answers_how_it_went_and_where_the_results_are(tmp_path):
    run_dir = tmp_path / "r"
    summary = durabatch.run(userfns.digest, RECORDS, key="id", run_dir=run_dir, progress="off")
    text = repr(summary)
    assert text.startswith("RunSummary: finished, every item done (exit 0)"), text
    assert "40 items: 40 done in this run, 0 finished before, 0 failed in all" in text
    assert "items/s" in text and f"{run_dir}/shards/" in text
    assert f"durabatch.export('{run_dir}', to='results.parquet')" in text
    assert "--" not in text and "failed  " not in text  # nothing to do next, nothing in CLI spelling
    assert str(summary).startswith("finished: 40 done in this run")  # str() stays the CLI's one line


def test_the_repr_of_a_run_with_failures_says_what_to_do_next_in_python(tmp_path):
    run_dir = tmp_path / "r"
    summary = durabatch.run(userfns.fails_on_sevens, RECORDS, key="id", run_dir=run_dir, progress="off",
                            max_attempts=1)
    assert summary.exit_code == ExitCode.FAILED and summary.failed_total == 6  # 0, 7, 14, 21, 28, 35
    text = repr(summary)
    assert text.startswith("RunSummary: finished with failed items (exit 1)"), text
    assert f"durabatch.export('{run_dir}', failed=True, to='failed.jsonl')" in text
    assert f"durabatch.retry_failed('{run_dir}')" in text and "durabatch.run() again" in text
    assert "--failed" not in text and "--failed" not in str(summary)
    # the hint is real: the call it names works as written
    assert durabatch.export(run_dir, failed=True, to=tmp_path / "failed.jsonl") == 6
    assert durabatch.retry_failed(run_dir) == 6


def test_a_notebook_displays_the_summary_as_a_table(tmp_path):
    summary = durabatch.run(userfns.digest, RECORDS[:5], key="id", run_dir=tmp_path / "r", progress="off")
    page = summary._repr_html_()
    assert "<table>" in page and "finished, every item done" in page and "durabatch.export(&#x27;" in page
    formatter = pytest.importorskip("IPython.core.formatters")
    shown, _ = formatter.DisplayFormatter().format(summary)  # what Jupyter renders for the last expression
    assert shown["text/plain"] == repr(summary)
    assert shown["text/html"] == page


def test_a_stopped_run_says_how_to_resume_in_the_callers_spelling():
    summary = RunSummary(ExitCode.STOPPED, 100, 10, 20, 0, 0, "SIGTERM", 3.0, "runs/x")
    assert "stopped early (SIGTERM), resumable (exit 75)" in repr(summary)
    assert "call durabatch.run() again with the same run_dir" in repr(summary)
    restore = cli_spelling(FLAG_NAMES)
    try:
        assert "Run the same command again to resume" in str(summary)
        failed = RunSummary(ExitCode.FAILED, 100, 0, 98, 2, 2, None, 3.0, "runs/x")
        assert "durabatch export runs/x --failed --to failed.jsonl" in repr(failed)
        assert "durabatch retry-failed runs/x" in repr(failed)
    finally:
        restore()
    assert "durabatch.run() again" in str(summary)  # back to Python once the command is over


def test_a_changed_job_is_refused_from_python_with_allow_changed_true_and_the_diff(tmp_path):
    run_dir = tmp_path / "r"
    durabatch.run(userfns.digest, RECORDS, key="id", run_dir=run_dir, progress="off", limit=10)
    with pytest.raises(ChangedJobError) as refused:
        durabatch.run(userfns.fails_on_sevens, RECORDS, key="id", run_dir=run_dir, progress="off")
    message = str(refused.value)
    assert "fn: 'userfns:digest' -> 'userfns:fails_on_sevens'" in message and "fn_code" in message
    assert "allow_changed=True" in message and "fresh=True" in message
    assert "--allow-changed" not in message and "--run-dir" not in message
    summary = durabatch.run(userfns.fails_on_sevens, RECORDS, key="id", run_dir=run_dir, progress="off",
                            allow_changed=True, max_attempts=1)  # the hint, as written, carries on
    assert summary.already_done == 10 and summary.done == 26  # 30 left, 4 of them (14, 21, 28, 35) fail


def test_the_cli_spells_the_same_refusal_with_flags_and_python_after_it_again(tmp_path, records_file):
    data = records_file(20)
    args = ["run", "-i", str(data), "--key", "id", "--run-dir", str(tmp_path / "r"), "--progress", "off"]
    assert durabatch_cli(*args, "--fn", "userfns:digest", cwd=tmp_path).returncode == 0
    refused = durabatch_cli(*args, "--fn", "userfns:fails_on_sevens", cwd=tmp_path)
    assert refused.returncode == 2
    assert "--allow-changed" in refused.stderr and "--fresh" in refused.stderr and "fn_code" in refused.stderr
    assert "allow_changed=True" not in refused.stderr
    # In one process (a notebook calling the CLI app, or a test): the CLI's spelling ends with its command.
    in_process = CliRunner().invoke(app, [*args, "--fn", "userfns:fails_on_sevens"])
    assert in_process.exit_code == 2 and "--allow-changed" in in_process.output
    with pytest.raises(ChangedJobError, match="allow_changed=True"):
        durabatch.run(userfns.fails_on_sevens, str(data), key="id", run_dir=tmp_path / "r", progress="off")


def test_bad_input_hints_are_python_settings(tmp_path):
    with pytest.raises(InputError, match=r"[Pp]ass dedupe=True to keep the first occurrence"):
        durabatch.run(userfns.digest, [{"id": 1}, {"id": 1}], key="id", run_dir=tmp_path / "a", progress="off")
    with pytest.raises(InputError, match=r"pass skip_bad_rows=True to record it as a failure"):
        durabatch.run(userfns.digest, [{"id": 1}, {"text": "no key"}], key="id", run_dir=tmp_path / "b",
                      progress="off")
