"""pytest configuration for the whole repository, loaded wherever pytest is started in it.

Every notebook that the tests execute (tests/test_notebooks.py runs each one, from scratch and then resumed; nbval
does, cell by cell, when asked with `--nbval-lax`) runs in the `smoke` preset, whatever the machine: `pytest image_generation/vae` on a GPU machine still runs `smoke`,
never `full`. Run records, checkpoints and any file a notebook writes into the data directory go to a
temporary sandbox, so the suite never touches a user's checkpoints, records or data, and leaves the
working tree as it found it (tests/test_working_tree.py checks that, last).

Datasets are read from the user's real data folder (`DL_DATA_DIR`, else `data/`), which becomes a read-only
entry of `DL_EXTRA_DATA_DIRS` (see common/paths.py); a dataset built during the tests is written into the
sandbox. So do verified downloads (`DL_CACHE_DIR`): a notebook run by the tests on a machine that lacks a dataset
downloads it into the sandbox, not into the user's download cache (unit tests skip instead of downloading).

nbval is optional: the suite executes each notebook once from scratch (in tests/test_notebooks.py, which also checks
its run record and then resumes it), so nbval is not switched on by default, which used to run every notebook a
third time. `pytest --nbval-lax image_generation/ddpm` still reports a notebook cell by cell, with the options set
here. Without the packages that execute notebooks (nbclient, ipykernel), pytest still runs the unit tests and
says in one line what to install.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent
NOISE = ("__pycache__", ".pytest_cache", ".ipynb_checkpoints", ".venv", "venv", ".git")  # written by Python, pytest and Jupyter themselves
LAST_TEST = "test_the_suite_leaves_the_working_tree_clean"
SANDBOX_PREFIX = "dl_tests_"  # the temporary folder of one pytest process: DL_DATA_DIR, DL_RUNS_DIR, ... inside it


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


# nbval's options when it is asked for (`--nbval-lax`): in this interpreter, 10 min per cell
NBVAL_OPTIONS = {"nbval_current_env": True, "nbval_cell_timeout": 600}
NOTEBOOK_PACKAGES = ("nbclient", "nbformat", "ipykernel")  # what tests/test_notebooks.py needs to execute notebooks


def missing_notebook_packages() -> list[str]:
    """The packages that execute notebooks in the tests and are not installed here."""
    return [name for name in NOTEBOOK_PACKAGES if importlib.util.find_spec(name) is None]


def no_notebooks_message(missing: list[str]) -> str:
    return (f"{', '.join(missing)} not installed, so the notebooks are not run: install the test requirements with "
            "`pip install -r requirements.txt`")


def user_data_dir() -> Path:
    """The user's real data folder, as `common.paths.data_dir()` finds it outside the tests (not created)."""
    return Path(os.environ.get("DL_DATA_DIR") or REPO_ROOT / "data").expanduser()


def pytest_configure(config: pytest.Config) -> None:
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1 and "OMP_NUM_THREADS" not in os.environ:  # `pytest -n N`: share the cores, don't oversubscribe
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // workers))  # the notebook kernels inherit it
        import torch
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    sandbox = Path(tempfile.mkdtemp(prefix=SANDBOX_PREFIX))
    config.stash[SANDBOX] = sandbox
    config.stash[SNAPSHOT] = tree_snapshot()
    if user_data_dir().parent.name.startswith(SANDBOX_PREFIX):  # a worker of `pytest -n N`, or a pytest a test ran:
        extra = [os.environ.get("DL_EXTRA_DATA_DIRS", "")]  # the user's folders, as the process that made it found them
    else:
        extra = [str(user_data_dir().resolve()), os.environ.get("DL_EXTRA_DATA_DIRS", "")]
    os.environ["DL_PRESET"] = "smoke"
    for name in ("DL_REHEARSE_GPU", "DL_SEED"):  # a user's GPU rehearsal or second seed must not reach the tests
        os.environ.pop(name, None)
    os.environ["DL_RUNS_DIR"] = str(sandbox / "runs")
    os.environ["DL_CHECKPOINT_DIR"] = str(sandbox / "checkpoints")
    os.environ["DL_DATA_DIR"] = str(sandbox / "data")
    os.environ["DL_CACHE_DIR"] = str(sandbox / "cache")  # ~/.cache is a user's folder too
    os.environ["DL_EXTRA_DATA_DIRS"] = os.pathsep.join(filter(None, extra))
    os.environ["MPLBACKEND"] = "Agg"
    if config.pluginmanager.hasplugin("nbval"):
        given = " ".join(str(a) for a in config.invocation_params.args)
        for name, value in NBVAL_OPTIONS.items():
            if "--" + name.replace("_", "-") not in given:
                setattr(config.option, name, value)


def pytest_report_header(config: pytest.Config) -> str | None:
    missing = missing_notebook_packages()
    return no_notebooks_message(missing) if missing else None


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:  # noqa: ANN001
    missing = missing_notebook_packages()
    if missing:
        terminalreporter.write_line(no_notebooks_message(missing), yellow=True, bold=True)


def pytest_unconfigure(config: pytest.Config) -> None:
    sandbox = config.stash.get(SANDBOX, None)
    if sandbox is not None:
        shutil.rmtree(sandbox, ignore_errors=True)


SPREAD_FILES = ("test_notebooks.py",)  # under `pytest -n N` their tests go to any worker, one at a time
REUSES_RUN = "reuses_notebook_run"  # a test that compares with a notebook test's uninterrupted run (tests/conftest.py)


def notebook_run_task(item: pytest.Item) -> str | None:
    """The task whose notebook a tests/test_notebooks.py test runs ("image_classification/resnet"), else None."""
    path = getattr(item, "callspec", None) and item.callspec.params.get("path")
    return Path(path).parent.relative_to(REPO_ROOT).as_posix() if item.path.name in SPREAD_FILES and path else None


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own, which reads the `xdist_group` marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The working-tree check runs after every other test, notebooks included.

    Under the README's `pytest -n 2 --dist loadgroup --no-loadscope-reorder` (pytest-xdist, two processes): the
    notebook runs, the longest tests, come first and each goes to whichever worker is free; every other test file
    stays whole on one worker (its `xdist_group`), so that a module-scoped fixture (a torchrun launch, code extracted
    from a notebook) is built once, not once per worker; `--no-loadscope-reorder` keeps this order (by default xdist
    would start with the files that hold the most tests). A test marked `reuses_notebook_run(task)` (a slice test of
    tests/test_campaign.py) runs right after that task's notebook test, in the same worker (their own
    `xdist_group`), and compares with its uninterrupted run instead of running the notebook whole once more."""
    reusers: dict[str, list[pytest.Item]] = {}
    for item in items:
        marker = item.get_closest_marker(REUSES_RUN)
        if marker is not None:
            reusers.setdefault(marker.args[0], []).append(item)
    first = []
    for item in (item for item in items if item.path.name in SPREAD_FILES):
        task = notebook_run_task(item)
        pair = [item] + reusers.pop(task, []) if task else [item]
        if len(pair) > 1:
            for member in pair:
                member.add_marker(pytest.mark.xdist_group(f"notebook-run-{task}"))
        first += pair
    last = [item for item in items if item.name == LAST_TEST]
    rest = [item for item in items if item not in first and item not in last]
    for item in rest + last:
        item.add_marker(pytest.mark.xdist_group(item.path.name))
    items[:] = first + rest + last


def runs_tests_in_workers(config: pytest.Config) -> bool:
    """True in the process that hands tests to pytest-xdist's workers (`pytest -n 2`) and runs none itself."""
    return not hasattr(config, "workerinput") and bool(getattr(config.option, "numprocesses", None))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Under `pytest -n N` the working-tree test runs in one worker, perhaps while another still runs a notebook:
    the process that started the workers checks the checkout again once every worker has finished."""
    if not runs_tests_in_workers(session.config):
        return
    changed = changes_since_start(session.config)
    if changed:
        print(f"\nthe tests created, changed or deleted files in the repository: {changed[:20]}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def changes_since_start(config: pytest.Config) -> list[str] | None:
    """Paths created, changed or deleted in the checkout since pytest started (None outside a git checkout)."""
    return snapshot_changes(config.stash[SNAPSHOT], tree_snapshot())


def snapshot_changes(before: dict[str, tuple[str, int, int]] | None,
                     after: dict[str, tuple[str, int, int]] | None) -> list[str] | None:
    """The paths whose entry differs between two `tree_snapshot()`s (None if either is None)."""
    if before is None or after is None:
        return None
    return sorted(path for path in set(before) | set(after) if before.get(path) != after.get(path))


@pytest.fixture
def tree_changes(request: pytest.FixtureRequest) -> list[str] | None:
    """Paths created, changed or deleted in the checkout since pytest started (None outside a git checkout)."""
    return changes_since_start(request.config)


SANDBOX = pytest.StashKey[Path]()
SNAPSHOT = pytest.StashKey["dict[str, tuple[str, int, int]] | None"]()
