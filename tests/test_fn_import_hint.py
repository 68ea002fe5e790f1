"""A function that cannot be imported: the message says where Python looked and what to do next (the CLI as a
user runs it, a real job file, real modules on disk)."""

from __future__ import annotations

import os

import yaml
from conftest import cli_env, durabatch_cli


def job_file(tmp_path, records_file, fn: str):
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({"fn": fn, "input": str(records_file(5)), "key": "id", "run_dir": "runs/x",
                                   "progress": "off"}))
    return job


def test_a_module_python_cannot_find_names_the_directory_and_the_ways_to_point_at_it(tmp_path, records_file):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "scoring.py").write_text("def score(r):\n    return {'x': r['id']}\n")
    job = job_file(tmp_path, records_file, "scoring:score")
    result = durabatch_cli("run", job, cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    said = " ".join(result.stderr.split())
    assert "cannot import module 'scoring'" in said
    assert f"no 'scoring' in the current directory ({tmp_path})" in said
    assert "Run from the directory that holds scoring.py" in said and "PYTHONPATH" in said
    assert "--fn path/to/scoring.py:score" in said  # the CLI's spelling of the setting
    assert "Traceback" not in result.stderr

    # each way the message offers works: PYTHONPATH, and naming the file
    python_path = os.pathsep.join([str(tmp_path / "elsewhere"), cli_env()["PYTHONPATH"]])
    via_path = durabatch_cli("run", job, cwd=tmp_path, env={"PYTHONPATH": python_path})
    assert via_path.returncode == 0, via_path.stderr
    by_file = durabatch_cli("run", job, "--fn", "elsewhere/scoring.py:score", "--run-dir", "runs/y", cwd=tmp_path)
    assert by_file.returncode == 0, by_file.stderr


def test_a_module_whose_own_import_is_missing_names_that_one_and_this_python(tmp_path, records_file):
    (tmp_path / "needs_more.py").write_text("import surely_not_installed_xyz\n\ndef f(r):\n    return r\n")
    job = job_file(tmp_path, records_file, "needs_more:f")
    result = durabatch_cli("run", job, cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    said = " ".join(result.stderr.split())
    assert "cannot import module 'needs_more': it imports 'surely_not_installed_xyz', which is not installed" in said
    assert "for this Python (" in said and "install it there" in said


def test_a_package_without_that_module_says_so(tmp_path, records_file):
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text("")
    job = job_file(tmp_path, records_file, "mypkg.nothere:f")
    result = durabatch_cli("run", job, cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "package 'mypkg' has no module 'nothere'" in " ".join(result.stderr.split())
