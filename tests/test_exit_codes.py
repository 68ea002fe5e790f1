"""Exit codes keep one meaning each: 1 is only "finished with failed items"; a bug of ours is 70 with the
traceback, so a wrapper (or the supervisor) never reads a crash as a job with failures."""

from __future__ import annotations

import pytest
from conftest import write_jsonl

import durabatch.cli as cli
from durabatch.errors import ExitCode


def test_an_internal_error_exits_70_with_the_traceback_not_1(tmp_path, monkeypatch, capsys):
    path = write_jsonl(tmp_path / "in.jsonl", [{"id": 1}])

    def broken(*args, **kwargs):
        raise RuntimeError("a bug inside durabatch")

    monkeypatch.setattr(cli, "run_job", broken)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["run", "-i", str(path), "--key", "id", "--fn", "json:dumps", "--run-dir", str(tmp_path / "run")])
    assert exit_info.value.code == ExitCode.INTERNAL == 70
    err = capsys.readouterr().err
    assert "RuntimeError: a bug inside durabatch" in err and "internal error" in err



def test_our_own_exits_pass_through_the_internal_error_guard(tmp_path, monkeypatch, capsys):
    """typer.Exit is a RuntimeError to click: the guard must not turn a usage error (2) or the supervisor's
    verdict into an internal error."""
    path = write_jsonl(tmp_path / "in.jsonl", [{"id": 1}])
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["run", "-i", str(path), "--key", "id", "--run-dir", str(tmp_path / "run")])  # no --fn
    assert exit_info.value.code == ExitCode.USAGE
    assert "internal error" not in capsys.readouterr().err
    monkeypatch.setattr("durabatch.supervise.supervise", lambda *args, **kwargs: ExitCode.STOPPED)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["run", "-i", str(path), "--key", "id", "--fn", "json:dumps", "--run-dir", str(tmp_path / "run"),
                  "--supervise"])
    assert exit_info.value.code == ExitCode.STOPPED
