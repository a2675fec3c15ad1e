"""The CI script (.ci/run) and workflow (.github/workflows/ci.yml), checked without running the suite they run."""

from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_ci_run_goes_on_when_no_shared_dataset_was_copied(tmp_path: Path) -> None:
    """With an empty (or missing) shared folder nothing is copied; the script must still reach the tests."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls.txt"
    for tool in ("python3", "sudo", "apt-get"):  # stand-ins: record the call, succeed, install nothing
        stub = bin_dir / tool
        stub.write_text(f'#!/usr/bin/env bash\necho "{tool} $*" >> "{calls}"\n')
        stub.chmod(stub.stat().st_mode | stat.S_IXUSR)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "SHARED_DATASETS": str(tmp_path / "no-datasets-here")}
    result = subprocess.run(["bash", str(REPO_ROOT / ".ci" / "run")], env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "running the tests" in result.stdout and "done" in result.stdout
    assert "python3 -m pytest" in calls.read_text()


def test_ci_installs_a_cpu_torch_within_the_constraints_before_the_requirements() -> None:
    workflow = (REPO_ROOT / ".github" / "workflows" / "ci.yml").read_text()
    runs = [line.split("run:", 1)[1].strip() for line in workflow.splitlines() if line.strip().startswith("run:")]
    cpu = next(i for i, r in enumerate(runs) if "download.pytorch.org/whl/cpu" in r)
    reqs = next(i for i, r in enumerate(runs) if "-r requirements.txt" in r)
    assert cpu < reqs and "-c constraints.txt" in runs[cpu] and "torch" in runs[cpu] and "torchvision" in runs[cpu]
    assert any("torch.version.cuda is None" in r for r in runs[reqs:])  # and checks nothing replaced it


def test_under_the_readmes_command_each_test_file_runs_as_one_xdist_group(request: pytest.FixtureRequest) -> None:
    """Under `pytest -n 2 --dist loadgroup` (the README's command) the root conftest.py marks every test of a file
    with the file's `xdist_group`, so that its module fixtures are built once. pytest-xdist reads those marks in its
    own collection hook and appends the group to the test's id; when that hook ran before the conftest's (as it did
    until 2026-11-28) the ids had no group, and a file's tests were spread over both workers. Elsewhere (one process,
    or another `--dist`) there are no groups to check."""
    if not hasattr(request.config, "workerinput") or not request.config.getvalue("loadgroup"):
        pytest.skip("no xdist groups outside `pytest -n N --dist loadgroup`")
    assert request.node.nodeid.endswith(f"@{Path(__file__).name}"), request.node.nodeid


def ci_seconds_range(readme: str, contributing: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """The range of clean-clone CI times the README states, and the range CONTRIBUTING's table of them holds."""
    stated = re.search(r"`\.ci/run` has taken (\d[\d,]*) to (\d[\d,]*) s", readme)
    assert stated, "the README no longer states the CI time range"
    rows = [int(cells[5]) for line in contributing.splitlines()
            if line.startswith("| 20") and len(cells := [c.strip() for c in line.split("|")]) > 6 and cells[5].isdigit()]
    assert rows, "CONTRIBUTING's table of CI times was not found"
    return (int(stated[1].replace(",", "")), int(stated[2].replace(",", ""))), (min(rows), max(rows))


def test_the_readmes_ci_time_range_is_contributings_table() -> None:
    """The README's 'has taken X to Y s' is the shortest and the longest clean-clone CI run that CONTRIBUTING records;
    the control: a README still saying 361 after a 359-s run is caught."""
    readme, contributing = (REPO_ROOT / "README.md").read_text(), (REPO_ROOT / "CONTRIBUTING.md").read_text()
    stated, recorded = ci_seconds_range(readme, contributing)
    assert stated == recorded, f"README says {stated[0]} to {stated[1]} s, CONTRIBUTING's table {recorded[0]} to {recorded[1]} s"
    stale = readme.replace(f"has taken {stated[0]} to", f"has taken {stated[0] + 2} to")
    assert ci_seconds_range(stale, contributing)[0] != recorded
