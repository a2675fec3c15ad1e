"""pytest configuration for the whole repository, loaded wherever pytest is started in it.

Every notebook that the tests execute (through nbval, or through tests/test_notebooks.py) runs in the
`smoke` preset, whatever the machine: `pytest image_generation/vae` on a GPU machine still runs `smoke`,
never `full`. Run records, checkpoints and any file a notebook writes into the data directory go to a
temporary sandbox, so the suite never touches a user's checkpoints, records or data, and leaves the
working tree as it found it (tests/test_working_tree.py checks that, last).

Datasets are read from the user's real data folder (`DL_DATA_DIR`, else `data/`), which becomes a read-only
entry of `DL_EXTRA_DATA_DIRS` (see common/paths.py); a dataset built during the tests is written into the
sandbox. Verified downloads go to the user's download cache (`DL_CACHE_DIR`, outside the repository), which
is not sandboxed: a download made by one test run is reused by the next and by the user's notebooks.

nbval (which runs every notebook) is configured here rather than in pyproject.toml's `addopts`, so that
without it pytest still runs the unit tests and says in one line what to install.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent
NOISE = ("__pycache__", ".pytest_cache", ".ipynb_checkpoints", ".venv", "venv", ".git")  # written by Python, pytest and Jupyter themselves
LAST_TEST = "test_the_suite_leaves_the_working_tree_clean"


def tree_snapshot() -> dict[str, tuple[str, int, int]] | None:
    """Every changed, untracked or git-ignored file in the checkout: path -> (git status, mtime_ns, size).

    Ignored files count too, so a test that overwrote a user's checkpoint under `checkpoints/` would
    show up as a changed modification time. None outside a git checkout.
    """
    try:
        out = subprocess.run(["git", "status", "--porcelain=v1", "-z", "--untracked-files=all", "--ignored=matching"],
                             cwd=REPO_ROOT, capture_output=True, text=True, check=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    snapshot = {}
    for entry in filter(None, out.split("\0")):
        status, path = entry[:2], entry[3:]
        full = REPO_ROOT / path
        # git names an ignored folder (`!! checkpoints/`) rather than its files: list them one by one
        files = [p for p in full.rglob("*") if p.is_file()] if full.is_dir() else [full]
        for file in files:
            rel = file.relative_to(REPO_ROOT)
            if any(p in NOISE or p.endswith(".egg-info") for p in rel.parts):
                continue
            stat = file.stat() if file.is_file() else None
            snapshot[rel.as_posix()] = (status, stat.st_mtime_ns if stat else 0, stat.st_size if stat else 0)
    return snapshot


# nbval's options for the whole suite: run every cell, compare no outputs, in this interpreter, 10 min per cell
NBVAL_OPTIONS = {"nbval_lax": True, "nbval_current_env": True, "nbval_cell_timeout": 600}
NO_NBVAL = ("nbval is not installed, so the notebooks are not run: install the test requirements with "
            "`pip install -r requirements.txt`")


def user_data_dir() -> Path:
    """The user's real data folder, as `common.paths.data_dir()` finds it outside the tests (not created)."""
    return Path(os.environ.get("DL_DATA_DIR") or REPO_ROOT / "data").expanduser()


def pytest_configure(config: pytest.Config) -> None:
    sandbox = Path(tempfile.mkdtemp(prefix="dl_tests_"))
    config.stash[SANDBOX] = sandbox
    config.stash[SNAPSHOT] = tree_snapshot()
    extra = [str(user_data_dir().resolve()), os.environ.get("DL_EXTRA_DATA_DIRS", "")]
    os.environ["DL_PRESET"] = "smoke"
    os.environ["DL_RUNS_DIR"] = str(sandbox / "runs")
    os.environ["DL_CHECKPOINT_DIR"] = str(sandbox / "checkpoints")
    os.environ["DL_DATA_DIR"] = str(sandbox / "data")
    os.environ["DL_EXTRA_DATA_DIRS"] = os.pathsep.join(filter(None, extra))
    os.environ["MPLBACKEND"] = "Agg"
    if config.pluginmanager.hasplugin("nbval"):
        given = " ".join(str(a) for a in config.invocation_params.args)
        for name, value in NBVAL_OPTIONS.items():
            flag = "--" + name.replace("_", "-")
            strict = name == "nbval_lax" and config.option.nbval  # `--nbval` asks to compare outputs
            if flag not in given and not strict:
                setattr(config.option, name, value)


def pytest_report_header(config: pytest.Config) -> str | None:
    return None if config.pluginmanager.hasplugin("nbval") else NO_NBVAL


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:  # noqa: ANN001
    if not config.pluginmanager.hasplugin("nbval"):
        terminalreporter.write_line(NO_NBVAL, yellow=True, bold=True)


def pytest_unconfigure(config: pytest.Config) -> None:
    sandbox = config.stash.get(SANDBOX, None)
    if sandbox is not None:
        shutil.rmtree(sandbox, ignore_errors=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The working-tree check runs after every other test, notebooks included."""
    last = [item for item in items if item.name == LAST_TEST]
    items[:] = [item for item in items if item.name != LAST_TEST] + last


@pytest.fixture
def tree_changes(request: pytest.FixtureRequest) -> list[str] | None:
    """Paths created, changed or deleted in the checkout since pytest started (None outside a git checkout)."""
    before, after = request.config.stash[SNAPSHOT], tree_snapshot()
    if before is None or after is None:
        return None
    return sorted(path for path in set(before) | set(after) if before.get(path) != after.get(path))


SANDBOX = pytest.StashKey[Path]()
SNAPSHOT = pytest.StashKey["dict[str, tuple[str, int, int]] | None"]()
