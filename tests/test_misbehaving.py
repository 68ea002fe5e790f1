"""A misbehaving function is that item's failure (RELIABILITY #17, issue 10): os._exit(0), SystemExit,
KeyboardInterrupt, BaseException, results that cannot be stored, swallowed timeouts, secrets in error messages,
on every engine. Only that item fails; never exit 0 with items missing; never a run that cannot finish.

Every run is a real `durabatch run` subprocess: a function that ends the process must not take pytest with it."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from conftest import durabatch_cli, ledger_query, write_jsonl

import durabatch
from durabatch import errors

N = 20
BAD = 3
ENGINES = {"inline": ("--engine", "inline"), "threads": ("--engine", "threads", "--workers", "3"),
           "processes": ("--engine", "processes", "--workers", "2"), "asyncio": ("--engine", "asyncio")}


def _data(tmp_path, how: str | dict[int, str], bad: tuple[int, ...] = (BAD,)):
    hows = how if isinstance(how, dict) else dict.fromkeys(bad, how)
    return write_jsonl(tmp_path / "d.jsonl", [{"id": i, "how": hows.get(i, "")} for i in range(N)])


def _run(tmp_path, how: str | dict, engine: str, *extra, env=None, timeout=180, batched=False):
    fn = "fns_misbehaving:amisbehaves" if engine == "asyncio" else \
        "fns_misbehaving:misbehaves_batch" if batched else "fns_misbehaving:misbehaves"
    if not (tmp_path / "d.jsonl").exists():
        _data(tmp_path, how)
    return durabatch_cli("run", "-i", tmp_path / "d.jsonl", "--key", "id", "--fn", fn, "--run-dir", tmp_path / "r",
                         *ENGINES[engine], *(["--batch-size", "5"] if batched else []), "--progress", "off",
                         *extra, cwd=tmp_path, env=env, timeout=timeout)


def _exported(tmp_path, failed: bool = False) -> list[dict]:
    out = tmp_path / ("failed.parquet" if failed else "out.parquet")
    durabatch.export(tmp_path / "r", to=out, failed=failed)
    return pq.read_table(out).to_pylist()


def _failed(tmp_path) -> list[dict]:
    return _exported(tmp_path, failed=True)


def _assert_only_these_failed(tmp_path, result, expected: dict[int, str]) -> dict[int, dict]:
    """Exit 1, no traceback, every other item done, these failed with these error types."""
    assert result.returncode == 1, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    done = sorted(row["id"] for row in _exported(tmp_path))
    assert done == [i for i in range(N) if i not in expected]
    failed = {int(f["key"]): f for f in _failed(tmp_path)}
    assert {k: f["error_type"] for k, f in failed.items()} == expected, failed
    return failed


def _assert_only_the_bad_item_failed(tmp_path, result, error_type: str) -> dict:
    return _assert_only_these_failed(tmp_path, result, {BAD: error_type})[BAD]


HOWS = {2: ("os_exit", "ProcessExit"), 4: ("sys_exit", "SystemExit"), 6: ("keyboard", "KeyboardInterrupt"),
        8: ("base", "BaseException"), 10: ("object", "UnstorableResult"), 12: ("generator", "UnstorableResult"),
        14: ("nested", "UnstorableResult"), 16: ("top_object", "UnstorableResult")}


@pytest.mark.parametrize("engine", list(ENGINES))
def test_misbehaving_items_fail_alone_on_every_engine(tmp_path, engine):
    _data(tmp_path, {i: how for i, (how, _) in HOWS.items()})
    result = _run(tmp_path, {}, engine)
    failed = _assert_only_these_failed(tmp_path, result, {i: kind for i, (_, kind) in HOWS.items()})
    assert "os._exit(0)" in failed[2]["message"]
    assert "object" in failed[10]["message"] and "generator" in failed[12]["message"], failed
    assert "set" in failed[14]["message"] and "object" in failed[16]["message"], failed
    again = _run(tmp_path, {}, engine)  # a rerun is quiet: the items are finished (failed), not a user stop
    assert again.returncode == 1 and "Traceback" not in again.stderr, again.stderr[-3000:]
    assert "nothing to do" in again.stderr


@pytest.mark.parametrize("engine", ["inline", "processes"])
def test_a_batch_function_that_misbehaves_on_one_record_fails_that_record(tmp_path, engine):
    hows = {2: ("sys_exit", "SystemExit"), 7: ("keyboard", "KeyboardInterrupt"), 12: ("os_exit", "ProcessExit"),
            17: ("object", "UnstorableResult")}  # one per batch of 5
    _data(tmp_path, {i: how for i, (how, _) in hows.items()})
    result = _run(tmp_path, {}, engine, batched=True)
    _assert_only_these_failed(tmp_path, result, {i: kind for i, (_, kind) in hows.items()})


@pytest.mark.parametrize("engine", ["inline", "processes", "asyncio"])
def test_a_timeout_cannot_be_swallowed(tmp_path, engine):
    _data(tmp_path, {3: "swallow", 9: "late"})
    result = _run(tmp_path, {}, engine, "--item-timeout", "0.5", "--max-attempts", "1")
    failed = _assert_only_these_failed(tmp_path, result, {3: "ItemTimeout", 9: "ItemTimeout"})
    assert all("--item-timeout" in f["message"] for f in failed.values()), failed


@pytest.mark.parametrize("engine", ["inline", "processes"])
def test_a_batch_function_cannot_swallow_its_timeout_and_only_the_slow_record_fails(tmp_path, engine):
    """The batch's deadline (records x --item-timeout) passes: every record of it runs alone, under its own."""
    _data(tmp_path, {3: "swallow"})
    result = _run(tmp_path, {}, engine, "--item-timeout", "0.5", "--max-attempts", "1", batched=True)
    _assert_only_these_failed(tmp_path, result, {3: "ItemTimeout"})


def test_the_timeout_interrupt_is_not_an_exception():
    assert not issubclass(errors.ItemTimeout, Exception)
    assert issubclass(errors.ItemTimeout, BaseException)


# -- a function that ends the process --------------------------------------------------------------------------
def test_exit_0_from_an_unguardable_exit_converges_and_status_says_unfinished(tmp_path):
    """posix._exit(0) cannot be intercepted in the runner (inline engine): the shell sees 0, but status says the
    job is not finished, and reruns converge: the item is pinned and quarantined after K deaths alone."""
    _data(tmp_path, "posix_exit")
    codes = []
    for _ in range(8):
        result = _run(tmp_path, "posix_exit", "inline", "--quarantine-after", "2")
        codes.append(result.returncode)
        if result.returncode != 0:
            break
        status = json.loads(durabatch_cli("status", tmp_path / "r", "--json", cwd=tmp_path).stdout)
        assert status["state"] != "finished" and status["remaining"] > 0, status
    assert codes[-1] == 1, (codes, result.stderr[-2000:])
    assert len(codes) <= 5, codes
    failed = _failed(tmp_path)
    assert [(f["key"], f["state"]) for f in failed] == [(str(BAD), "quarantined")]
    assert sorted(row["id"] for row in _exported(tmp_path)) == [i for i in range(N) if i != BAD]


def test_supervisor_judges_by_the_ledger_not_the_exit_code(tmp_path):
    _data(tmp_path, "posix_exit")
    result = _run(tmp_path, "posix_exit", "inline", "--supervise", "--restart-delay", "0.05",
                  "--quarantine-after", "2", timeout=300)
    assert result.returncode == 1, (result.returncode, result.stderr[-3000:])
    log = (tmp_path / "r" / "logs" / "supervise.log").read_text()
    assert "exited with code 0" in log and "not finished" in log, log
    failed = _failed(tmp_path)
    assert [(f["key"], f["state"]) for f in failed] == [(str(BAD), "quarantined")]


# -- only a real signal stops a run ------------------------------------------------------------------------------
def test_a_keyboard_interrupt_from_the_function_is_not_a_stop_in_process(tmp_path):
    import fns_misbehaving

    records = [{"id": i, "how": "keyboard" if i == BAD else ""} for i in range(N)]
    summary = durabatch.run(fns_misbehaving.misbehaves, records, key="id", run_dir=tmp_path / "r", progress="off")
    assert summary.exit_code == 1 and summary.stopped is None, summary
    assert summary.done == N - 1 and summary.failed == 1


def test_a_forked_child_of_the_function_still_exits_for_real(tmp_path):
    import fns_misbehaving

    summary = durabatch.run(fns_misbehaving.forks_a_child, [{"id": 1}], key="id", run_dir=tmp_path / "r",
                            progress="off")
    assert summary.exit_code == 0, summary
    assert [row["child_exit"] for row in _exported(tmp_path)] == [7]


# -- secrets ---------------------------------------------------------------------------------------------------
SECRET = "sk-test-5f3a9c1e7b2d"


@pytest.mark.parametrize("engine", ["inline", "processes", "asyncio"])
def test_a_secret_in_an_error_message_never_reaches_the_ledger(tmp_path, engine):
    _data(tmp_path, "secret")
    result = _run(tmp_path, "secret", engine, env={"DURABATCH_TEST_API_KEY": SECRET})
    failed = _assert_only_the_bad_item_failed(tmp_path, result, "RuntimeError")
    assert "DURABATCH_TEST_API_KEY" in failed["message"]
    rows = ledger_query(tmp_path / "r", "SELECT message, traceback FROM failures") + \
        ledger_query(tmp_path / "r", "SELECT message, '' FROM attempts")
    assert rows and not any(SECRET in (m or "") + (t or "") for m, t in rows), rows
    assert SECRET not in (tmp_path / "r" / "logs" / "run.log").read_text()


def test_redaction_replaces_each_value_with_its_name():
    with errors.redacting({"OPENAI_API_KEY": "sk-abcdef123456", "SHORT_TOKEN": "1"}):
        error = errors.ItemError.from_exception(RuntimeError("key sk-abcdef123456 rejected; 1 try"))
    assert "sk-abcdef123456" not in error.message + error.traceback
    assert "$OPENAI_API_KEY" in error.message and "1 try" in error.message
    assert "sk-abcdef123456" in errors.ItemError.from_exception(RuntimeError("sk-abcdef123456")).message
