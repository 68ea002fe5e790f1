"""The first-day command line (issue 12 item 7): `run --help` in sections with an example each, human names for
values, the environment variables; every usage error is one line that says where to look next, exit 2."""

from __future__ import annotations

import re

import pytest
from conftest import durabatch_cli, write_jsonl

import durabatch.cli as cli
from durabatch.config.settings import FIELDS, HELP_SECTIONS


def test_every_setting_is_in_exactly_one_help_section():
    placed = [name for names in HELP_SECTIONS.values() for name in names]
    missing = sorted(set(FIELDS) - set(placed))
    assert not missing, f"add these settings to a section of HELP_SECTIONS in config/settings.py: {missing}"
    assert len(placed) == len(set(placed)) and set(placed) == set(FIELDS)


def test_run_help_reads_like_a_man_page_piped_at_80_columns(tmp_path):
    result = durabatch_cli("run", "--help", cwd=tmp_path, env={"COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    page = result.stdout
    headers = [line[:-1] for line in page.splitlines() if line and not line[0].isspace() and line.endswith(":")]
    assert headers == ["Arguments", *HELP_SECTIONS, "Other", "Environment", "Exit codes"]
    for title in HELP_SECTIONS:  # an example in every section, before the next one starts
        section = page.split(f"\n{title}:\n", 1)[1].split("\n\n", 1)[0]
        assert "\n  e.g. durabatch run -" in section, title
    assert not re.search(r"<(str|int|float|list\[str\]|path)>", page)  # human names: FILE, N, SECONDS
    for shown in ("-i, --input FILE", "--workers N", "--grace-seconds SECONDS", "--batch-format rows|columns",
                  "--gpus 0,1,..", "--max-memory SIZE", "DURABATCH_<SETTING>", "SLURM_JOB_END_TIME"):
        assert shown in page, shown
    assert max(len(line) for line in page.splitlines()) <= 80


def _usage_error(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(list(argv))
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_usage_errors_are_one_line_with_the_next_step(tmp_path, capsys):
    data = str(write_jsonl(tmp_path / "in.jsonl", [{"id": 1}]))
    run = ["run", "-i", data, "--fn", "json:dumps", "--run-dir", str(tmp_path / "run")]
    assert "--wrkers" in _usage_error(capsys, "run", "--wrkers", "3") and "`durabatch run -h`" in (
        _usage_error(capsys, "run", "--wrkers", "3"))
    assert "'--workers'" in _usage_error(capsys, *run, "--workers", "many")
    assert "workers = 0 (from command line)" in _usage_error(capsys, *run, "--workers", "0")
    assert "`durabatch -h`" in _usage_error(capsys, "frobnicate")
    assert "missing argument" in _usage_error(capsys, "export")
    assert "pass --run-dir DIR" in _usage_error(capsys, "run", "-i", data, "--fn", "json:dumps")
    assert "pass it as `--input" in _usage_error(capsys, "run", data, "--fn", "json:dumps")
    assert "no ledger here" in _usage_error(capsys, "status", str(tmp_path / "nowhere"))
    assert "'x' is not a GPU" in _usage_error(capsys, *run, "--gpus", "0,x")
    (tmp_path / "broken.yaml").write_text("fn: json:dumps\ninput: [a\nworkers: 2\n")
    assert "broken.yaml:3:8: not valid YAML" in _usage_error(capsys, "run", str(tmp_path / "broken.yaml"))
    (tmp_path / "typo.yaml").write_text("wrkers: 2\n")
    assert "Did you mean 'workers'?" in _usage_error(capsys, "run", str(tmp_path / "typo.yaml"))


@pytest.mark.parametrize("command, shown", [
    ("export", ["Usage: durabatch export [OPTIONS] RUN_DIR", "--to PATH"]),
    ("dashboard", ["Usage: durabatch dashboard [OPTIONS] RUN_DIRS...", "--port N"]),
])
def test_every_command_names_its_values_for_humans(capsys, command, shown):
    cli.main([command, "-h"])
    page = capsys.readouterr().out
    assert all(text in page for text in shown), page
    assert not re.search(r"<\w+(\[\w+\])?>|\{\w+\}", page), page
