"""Every category folder that holds a task (a `<category>/<task>/task.toml`) is named in the four lists that find
tasks: the notebook tests', the GPU check's, the README generator's and pytest's `testpaths`. A category missing
from one of them is silently skipped (its notebook never tested, or never listed in the README): this test fails
instead. Each new category (reinforcement_learning was the last) has to be added to all four.
"""

from __future__ import annotations

from pathlib import Path

import test_notebooks
from scripts_module import load_script

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

REPO_ROOT = Path(__file__).resolve().parent.parent


def task_categories(root: Path) -> set[str]:
    """The top-level folders of `root` that hold at least one task folder, templates aside."""
    return {p.parent.parent.name for p in root.glob("*/*/task.toml")} - {"templates"}


def unlisted(categories: set[str], lists: dict[str, tuple[str, ...] | list[str]]) -> dict[str, list[str]]:
    """Per list, the categories it lacks (only lists that lack some)."""
    gaps = {name: sorted(categories - set(listed)) for name, listed in lists.items()}
    return {name: gap for name, gap in gaps.items() if gap}


def finders() -> dict[str, tuple[str, ...] | list[str]]:
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    return {"tests/test_notebooks.py FOLDERS": test_notebooks.FOLDERS,
            "scripts/gpu_check.py FOLDERS": load_script("gpu_check").FOLDERS,
            "scripts/update_readme.py CATEGORIES": load_script("update_readme").CATEGORIES,
            "pyproject.toml testpaths": pyproject["tool"]["pytest"]["ini_options"]["testpaths"]}


def test_every_category_with_a_task_is_in_every_list_that_finds_tasks() -> None:
    categories = task_categories(REPO_ROOT)
    assert {"image_generation", "reinforcement_learning"} <= categories  # the glob finds real task folders
    assert not unlisted(categories, finders())


def test_a_list_without_a_category_is_reported(tmp_path: Path) -> None:
    """The control: a new category with a task that one list does not name."""
    (tmp_path / "robotics" / "arm").mkdir(parents=True)
    (tmp_path / "robotics" / "arm" / "task.toml").write_text('title = "arm"\n')
    (tmp_path / "templates" / "task_template").mkdir(parents=True)
    (tmp_path / "templates" / "task_template" / "task.toml").write_text('title = "t"\n')
    lists = {name: (*listed, "robotics") for name, listed in finders().items()}
    lists["scripts/gpu_check.py FOLDERS"] = tuple(c for c in lists["scripts/gpu_check.py FOLDERS"] if c != "robotics")
    assert task_categories(tmp_path) == {"robotics"}
    assert unlisted(task_categories(tmp_path), lists) == {"scripts/gpu_check.py FOLDERS": ["robotics"]}
