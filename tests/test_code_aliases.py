"""scripts/code_aliases.py: a record of code that differs from the notebook's now only in comments, docstrings and
layout counts as a record of the code now; any other difference does not, and every committed alias is proven."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scratch_git import git
from scripts_module import load_script

code_aliases = load_script("code_aliases")
update_readme = load_script("update_readme")
campaign = load_script("campaign")

BASE = '''import torch
if False:
    !pip install tqdm
%matplotlib inline


def mse(a, b):
    """Mean squared error."""
    return ((a - b) ** 2).mean()  # Eq. 3


x = torch.zeros(3)  # (3,)
'''


def test_comments_docstrings_and_layout_do_not_count() -> None:
    for same in (BASE.replace("# Eq. 3", "# Eq. 9"),
                 BASE.replace("Mean squared error.", "Mean squared error (Eq. 9), in the units of a."),
                 BASE.replace("x = torch.zeros(3)  # (3,)", "\n\nx = torch.zeros(3)\n"),
                 BASE.replace("((a - b) ** 2).mean()", "(\n        (a - b) ** 2\n    ).mean()")):
        assert code_aliases.same_but_comments(BASE, same)


def test_every_other_change_counts() -> None:
    reads_doc = BASE + "print(mse.__doc__)\n"
    for other in (BASE.replace("** 2", "** 3"),                      # a literal
                  BASE.replace("x = ", "y = "),                      # a name
                  BASE.replace("!pip install tqdm", "!pip install tqdm==4"),  # a shell line
                  BASE.replace("%matplotlib inline\n", ""),          # a magic line
                  BASE.replace("    \"\"\"Mean squared error.\"\"\"\n", "    print('Mean squared error.')\n")):
        assert not code_aliases.same_but_comments(BASE, other)
    # a docstring is code where the code reads it
    assert not code_aliases.same_but_comments(reads_doc, reads_doc.replace("Mean squared error.", "MSE."))


def notebook(code: str) -> str:
    cells = [{"cell_type": "markdown", "metadata": {}, "source": "# A task"},
             {"cell_type": "code", "metadata": {}, "source": code, "outputs": [], "execution_count": None}]
    return json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5})


def scratch_task(root: Path, code: str) -> tuple[Path, str]:
    """A task image_generation/vae under `root` whose notebook holds `code`, with one committed quick record of it."""
    folder = root / "image_generation" / "vae"
    folder.mkdir(parents=True)
    (folder / "task.toml").write_text('title = "VAE"\ncategory = "Image generation"\npaper = "P"\npaper_url = "u"\n'
                                      'notebook = "vae.ipynb"\nmetric = "nelbo"\nmetric_label = "nelbo"\n'
                                      'lower_is_better = true\nprerequisites = []\nnext = []\n')
    (folder / "vae.ipynb").write_text(notebook(code))
    sha = code_aliases.code_sha256(code_aliases.code_cells(notebook(code)))
    results = root / "results" / "image_generation" / "vae"
    results.mkdir(parents=True)
    (results / "image_generation__vae__quick__cpu__1.json").write_text(json.dumps({
        "task": "image_generation/vae", "preset": "quick", "device": "cpu", "device_type": "cpu", "data": "MNIST",
        "train_seconds": 60.0, "timing": "steps-only/v1", "metrics": {"nelbo": 100.0}, "finished_at": "2026-01-01",
        "code": {"notebook_code_sha256": sha}}))
    return folder / "vae.ipynb", sha


def test_history_proves_a_comment_change_and_refuses_a_code_change(tmp_path: Path) -> None:
    path, old = scratch_task(tmp_path, BASE)
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-q", "-m", "v1")
    path.write_text(notebook(BASE.replace("# Eq. 3", "# Eq. 9")))
    now = code_aliases.code_sha256(code_aliases.code_cells(path.read_text()))
    assert code_aliases.proven(tmp_path) == [{"task": "image_generation/vae", "from": old, "to": now}]
    git(tmp_path, "commit", "-q", "-am", "v2")

    path.write_text(notebook(BASE.replace("** 2", "** 3")))  # the control: a change of code proves nothing
    assert code_aliases.proven(tmp_path) == []
    git(tmp_path, "commit", "-q", "-am", "v3")
    v3 = code_aliases.code_sha256(code_aliases.code_cells(path.read_text()))
    true = {"task": "image_generation/vae", "from": old, "to": now}
    forged = {"task": "image_generation/vae", "from": old, "to": v3}
    assert code_aliases.check(tmp_path, [true]) == []
    problems = code_aliases.check(tmp_path, [true, forged, {**true, "from": "f" * 64}])
    assert len(problems) == 2 and "differs in more than comments" in problems[0] and "not found" in problems[1]


def test_the_readme_and_the_campaign_follow_an_alias_and_only_to_the_code_now(tmp_path: Path, monkeypatch) -> None:
    path, old = scratch_task(tmp_path, BASE)
    path.write_text(notebook(BASE.replace("# Eq. 3", "# Eq. 9")))
    now = code_aliases.code_sha256(code_aliases.code_cells(path.read_text()))

    def marked() -> bool:
        table = update_readme.render_table(update_readme.load_tasks(tmp_path), tmp_path)
        return next(line for line in table.splitlines() if "vae.ipynb" in line).endswith("‡ |")

    def has_record() -> bool:
        monkeypatch.setattr(campaign, "REPO_ROOT", tmp_path)
        return bool(campaign.full_record_devices("image_generation/vae", now, preset="quick"))
    assert marked() and not has_record()  # no alias yet: the record is of older code
    aliases = tmp_path / code_aliases.ALIASES
    aliases.write_text(json.dumps({"aliases": [{"task": "image_generation/vae", "from": old, "to": now}]}))
    assert not marked() and has_record()
    aliases.write_text(json.dumps({"aliases": [{"task": "image_generation/vae", "from": old, "to": "0" * 64}]}))
    assert marked() and not has_record()  # an alias to code that is no longer the notebook's counts for nothing


def test_the_committed_aliases_are_proven_by_git_history() -> None:
    root = code_aliases.REPO_ROOT
    aliases = code_aliases.load(root)
    assert all(set(a) == {"task", "from", "to"} for a in aliases)
    if code_aliases.shallow(root):
        pytest.skip("no full git history in this clone: the aliases cannot be proven here")
    assert code_aliases.check(root) == []
