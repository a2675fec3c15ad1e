"""Where things live (common/paths.py), how the suite sandboxes it (the root conftest.py), and how it runs notebooks."""

from __future__ import annotations

import ast
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

import common.paths as paths
from common import checkpoint_dir, data_dir, runs_dir

REPO_ROOT = Path(__file__).resolve().parent.parent
VARIABLES = ("DL_DATA_DIR", "DL_EXTRA_DATA_DIRS", "DL_RUNS_DIR", "DL_CHECKPOINT_DIR", "DL_CACHE_DIR", "XDG_CACHE_HOME")


@pytest.fixture
def no_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in VARIABLES:
        monkeypatch.delenv(var, raising=False)


def test_a_clone_keeps_everything_in_the_repository_and_caches_outside(no_variables, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(paths, "REPO_ROOT", tmp_path / "clone")
    (tmp_path / "clone").mkdir()
    (tmp_path / "clone" / "pyproject.toml").write_text("")
    assert paths.in_checkout() and paths.default_root() == tmp_path / "clone"
    assert (data_dir(), runs_dir(), checkpoint_dir()) == tuple(tmp_path / "clone" / n for n in
                                                               ("data", "runs", "checkpoints"))
    assert paths.cache_dir() == tmp_path / "home" / ".cache" / "dl-4090-hours"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert paths.cache_dir() == tmp_path / "xdg" / "dl-4090-hours"


def test_installed_from_git_everything_goes_under_the_working_folder(no_variables, tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "REPO_ROOT", tmp_path / "site-packages")  # as in Colab: no pyproject.toml beside it
    monkeypatch.chdir(tmp_path)
    assert not paths.in_checkout() and paths.default_root() == tmp_path
    assert data_dir() == tmp_path / "data" and checkpoint_dir() == tmp_path / "checkpoints"
    assert runs_dir() == tmp_path / "runs"


def test_variables_override_and_the_search_path_is_ordered(no_variables, tmp_path, monkeypatch):
    for var, name in (("DL_DATA_DIR", "d"), ("DL_RUNS_DIR", "r"), ("DL_CHECKPOINT_DIR", "c"), ("DL_CACHE_DIR", "k")):
        monkeypatch.setenv(var, str(tmp_path / name))
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    monkeypatch.setenv("DL_EXTRA_DATA_DIRS", os.pathsep.join([str(a), "", str(b)]))
    assert (data_dir(), runs_dir(), checkpoint_dir(), paths.cache_dir()) == tuple(tmp_path / n for n in "drck")
    assert paths.extra_data_dirs() == [a, b] and paths.user_data_dir() == a
    assert paths.find_data_file("x.npz") is None
    (b / "x.npz").write_text("b")
    assert paths.find_data_file("x.npz") == b / "x.npz"
    (a / "x.npz").write_text("a")
    assert paths.find_data_file("x.npz") == a / "x.npz"
    (tmp_path / "d" / "x.npz").write_text("d")
    assert paths.find_data_file("x.npz") == tmp_path / "d" / "x.npz"
    monkeypatch.delenv("DL_EXTRA_DATA_DIRS")
    assert paths.user_data_dir() == tmp_path / "d"


def test_data_records_and_checkpoints_take_the_policy_from_paths():
    """One module decides: data, records and checkpoints import it, and it imports nothing of `common`."""
    for module in ("data", "record", "checkpoint"):
        source = (REPO_ROOT / "common" / f"{module}.py").read_text()
        assert "from common.paths import" in source, module
    checkpoint_source = (REPO_ROOT / "common" / "checkpoint.py").read_text()
    assert "from common.data" not in checkpoint_source
    tree = ast.parse((REPO_ROOT / "common" / "paths.py").read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not any(m.split(".")[0] == "common" for m in imported if m), imported


def test_the_suite_reads_the_users_data_read_only_and_writes_into_its_sandbox():
    """The root conftest.py set these for this very run."""
    sandbox_data = Path(os.environ["DL_DATA_DIR"])
    assert sandbox_data.parent.name.startswith("dl_tests_")
    extra = paths.extra_data_dirs()
    assert extra and extra[0] != sandbox_data and not str(extra[0]).startswith(str(sandbox_data.parent))
    assert not any(p.parent.name.startswith("dl_tests_") for p in extra), "no sandbox, this one's or another's"
    assert paths.user_data_dir() == extra[0]
    assert not any(p.is_symlink() for p in sandbox_data.glob("*"))  # reads go to the real folder itself


def run_pytest(*args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    """pytest in a fresh process, from the repository root (so the root conftest.py and pyproject.toml apply)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_without_the_notebook_packages_pytest_says_in_one_line_what_to_install(monkeypatch):
    spec = importlib.util.spec_from_file_location("root_conftest", REPO_ROOT / "conftest.py")
    root_conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(root_conftest)
    assert root_conftest.missing_notebook_packages() == []  # installed here: tests/test_notebooks.py runs
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "nbclient" else real(name))
    assert root_conftest.missing_notebook_packages() == ["nbclient"]
    message = root_conftest.no_notebooks_message(["nbclient"])
    assert "\n" not in message and "nbclient" in message and "pip install -r requirements.txt" in message


def test_the_default_run_executes_each_notebook_once_and_nbval_is_there_when_asked():
    """No nbval items by default (tests/test_notebooks.py executes every notebook); `--nbval-lax` adds them."""
    default = run_pytest("--collect-only", "-q", "templates/task_template", "tests/test_notebooks.py")
    out = default.stdout + default.stderr
    assert default.returncode == 0, out[-3000:]
    assert "task_template.ipynb::Cell" not in out
    assert "test_notebook_writes_a_record_and_resumes_from_its_checkpoint[templates/task_template]" in out
    pytest.importorskip("nbval")
    asked = run_pytest("--collect-only", "-q", "--nbval-lax", "templates/task_template")
    out = asked.stdout + asked.stderr
    assert asked.returncode == 0, out[-3000:]
    assert "task_template.ipynb::Cell 0" in out
