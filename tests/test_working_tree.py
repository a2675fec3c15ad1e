"""The suite leaves the checkout as it found it: no new, changed or deleted file, ignored files included.

The root conftest.py snapshots the checkout when pytest starts and moves this test to the end of the run,
after the notebooks have executed (tests/test_notebooks.py). Under `pytest -n 2` (xdist) the same check runs in the
controller once both workers have finished (conftest.py's `pytest_sessionfinish`), and this test skips in the workers.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_the_suite_leaves_the_working_tree_clean(tree_changes: list[str] | None) -> None:
    if tree_changes is None:
        pytest.skip("not a git checkout, or an xdist worker (the controller checks the tree after all workers)")
    assert not tree_changes, f"the tests created, changed or deleted files in the repository: {tree_changes[:20]}"


def _root_conftest():
    """The repository's root conftest.py as a module of its own (pytest has loaded it under another name)."""
    spec = importlib.util.spec_from_file_location("root_conftest_for_tree_check", REPO_ROOT / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Reporter:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def write_line(self, line: str, **markup: bool) -> None:
        self.lines.append(line)


def _session(root, workerinput: dict | None = None) -> SimpleNamespace:
    """A stand-in pytest session under `-n 2` whose start-of-run snapshot holds one file."""
    reporter = _Reporter()
    config = SimpleNamespace(option=SimpleNamespace(numprocesses=2), stash={root.SNAPSHOT: {"a.py": ("M ", 1, 10)}},
                             pluginmanager=SimpleNamespace(get_plugin=lambda name: reporter))
    if workerinput is not None:
        config.workerinput = workerinput
    return SimpleNamespace(config=config, exitstatus=pytest.ExitCode.OK, reporter=reporter)


def test_under_xdist_the_controller_fails_the_run_when_the_tree_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    root = _root_conftest()
    monkeypatch.setattr(root, "tree_snapshot", lambda: {"a.py": ("M ", 2, 10), "new.pt": ("??", 3, 5)})
    session = _session(root)
    root.pytest_sessionfinish(session, 0)
    assert session.exitstatus == pytest.ExitCode.TESTS_FAILED
    assert "a.py" in session.reporter.lines[0] and "new.pt" in session.reporter.lines[0]

    unchanged = _session(root)  # the same tree as at the start: the run's status stays as it was
    monkeypatch.setattr(root, "tree_snapshot", lambda: {"a.py": ("M ", 1, 10)})
    root.pytest_sessionfinish(unchanged, 0)
    assert unchanged.exitstatus == pytest.ExitCode.OK and not unchanged.reporter.lines

    worker = _session(root, workerinput={"workercount": 2})  # a worker leaves the check to the controller
    monkeypatch.setattr(root, "tree_snapshot", lambda: {})
    root.pytest_sessionfinish(worker, 0)
    assert worker.exitstatus == pytest.ExitCode.OK and not worker.reporter.lines


def test_each_xdist_worker_gets_its_share_of_the_cores(request: pytest.FixtureRequest) -> None:
    root = _root_conftest()
    assert [root.threads_per_worker(c, w) for c, w in ((2, 2), (16, 2), (3, 2), (1, 2), (8, 0))] == [1, 8, 1, 1, 8]
    workerinput = getattr(request.config, "workerinput", None)
    if workerinput is not None:  # under `pytest -n 2`: this very worker's kernels run with the share (or the user's)
        assert int(os.environ["OMP_NUM_THREADS"]) >= 1
        user_data = os.environ["DL_TESTS_USER_DATA_DIR"]  # the user's folder, not the controller's sandbox
        assert user_data == os.environ["DL_EXTRA_DATA_DIRS"].split(os.pathsep)[0]
        assert not user_data.startswith(os.path.dirname(os.environ["DL_DATA_DIR"]))
