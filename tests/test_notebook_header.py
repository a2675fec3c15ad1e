"""The generated notebook header (scripts/notebook_header.py): Colab badge, setup cell, "Next" line.

The setup cell must do nothing and print nothing where `common` is importable (a clone, these tests), and, where
it is not (Colab), install `common` and the task's requirements.txt from the repository's one address.
"""

from __future__ import annotations

import copy
import importlib.util
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "scripts"))
import notebook_header  # noqa: E402

update_readme = notebook_header.update_readme
NOTEBOOKS = notebook_header.task_notebooks()
IDS = [p.parent.relative_to(REPO_ROOT).as_posix() for p in NOTEBOOKS]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=IDS)
def test_every_task_notebook_has_the_current_header(notebook: Path) -> None:
    nb = nbformat.read(notebook, as_version=4)
    folder = notebook.parent.relative_to(REPO_ROOT).as_posix()
    fresh = copy.deepcopy(nb)
    changed = notebook_header.apply_header(fresh, folder, notebook_header.read_meta(folder), notebook_header.read_meta)
    assert not changed, f"the header is missing or stale: run `python scripts/notebook_header.py {folder}/{notebook.name}`"
    first_code = next(c for c in nb.cells if c.cell_type == "code")
    assert first_code.source == notebook_header.setup_cell_source(folder), "the setup cell must be the first code cell"
    assert nb.cells[0].source.startswith(update_readme.colab_badge(f"{folder}/{notebook.name}"))


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=IDS)
def test_the_setup_cell_prints_nothing_where_common_is_importable(notebook: Path, tmp_path: Path) -> None:
    """Run as its own Python process (the repository's interpreter), outside the repository, like a kernel would."""
    source = notebook_header.setup_cell_source(notebook.parent.relative_to(REPO_ROOT).as_posix())
    assert importlib.util.find_spec("common") is not None, "this test needs the repository installed (pip install -e .)"
    result = subprocess.run([sys.executable, "-c", source], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def run_without_common(source: str, monkeypatch: pytest.MonkeyPatch, returncode: int = 0) -> list[list[str]]:
    """Execute `source` as if `common` were not installed, with pip replaced by a recorder; returns its commands."""
    real_find_spec, calls = importlib.util.find_spec, []
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "common" else real_find_spec(name, *a))

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, returncode, "", "ERROR: No matching distribution")

    monkeypatch.setattr(subprocess, "run", fake_run)
    exec(compile(source, "setup-cell", "exec"), {})
    return calls


def test_the_setup_cell_installs_common_and_the_task_requirements_where_common_is_missing(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    folder = "image_generation/vae"
    calls = run_without_common(notebook_header.setup_cell_source(folder), monkeypatch)
    printed = capsys.readouterr()
    repo = update_readme.repository_url()
    assert printed.err == "" and printed.out.count("\n") == 1 and f"{folder}/requirements.txt" in printed.out
    assert len(calls) == 1
    cmd = calls[0]
    assert cmd[:4] == [sys.executable, "-m", "pip", "install"] and f"git+{repo}" in cmd
    requirements = cmd[cmd.index("-r") + 1]
    base = f"https://raw.githubusercontent.com/{repo[len('https://github.com/'):]}/{update_readme.DEFAULT_BRANCH}/"
    assert requirements == f"{base}{folder}/requirements.txt" and (REPO_ROOT / folder / "requirements.txt").exists()
    with pytest.raises(RuntimeError, match="No matching distribution"):  # a failed install says why
        run_without_common(notebook_header.setup_cell_source(folder), monkeypatch, returncode=1)


def demo_notebook() -> nbformat.NotebookNode:
    sections = ["Overview", "Setup", "Config", "Data", "Model", "Objective", "Training", "Evaluation", "Samples"]
    cells = [nbformat.v4.new_markdown_cell("# Demo\n\nIntro.")]
    for name in sections:
        cells.append(nbformat.v4.new_markdown_cell(f"## {name}\n\nText."))
        if name != "Overview":  # markdown only, as in every notebook: the setup cell is the first code cell
            cells.append(nbformat.v4.new_code_cell(f"x = '{name}'", outputs=[nbformat.v4.new_output("stream", text=name)]))
    cells.append(nbformat.v4.new_markdown_cell("## Takeaways and exercises\n\n- one\n"))
    return nbformat.v4.new_notebook(cells=cells)


def test_apply_header_is_idempotent_keeps_outputs_and_the_skeleton(monkeypatch: pytest.MonkeyPatch) -> None:
    metas = {"image_generation/demo": {"notebook": "demo.ipynb", "title": "Demo", "next": ["image_generation/two"],
                                       "coming": ["DDPM"]},
             "image_generation/two": {"notebook": "two.ipynb", "title": "Two"}}
    nb = demo_notebook()
    outputs = [c.outputs for c in nb.cells if c.cell_type == "code"]
    assert notebook_header.apply_header(nb, "image_generation/demo", metas["image_generation/demo"], metas.__getitem__)
    once = copy.deepcopy(nb)
    assert not notebook_header.apply_header(nb, "image_generation/demo", metas["image_generation/demo"], metas.__getitem__)
    assert nb == once
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code[0].source == notebook_header.setup_cell_source("image_generation/demo") and code[0].outputs == []
    assert [c.outputs for c in code[1:]] == outputs
    assert nb.cells[2].source.startswith("## Setup") and nb.cells[3] is code[0]  # first code cell of Setup
    headings = [line for c in nb.cells if c.cell_type == "markdown" for line in c.source.splitlines()
                if line.startswith("## ")]
    assert headings == [c.source.splitlines()[0] for c in demo_notebook().cells[1:] if c.cell_type == "markdown"]
    assert nb.cells[0].source.startswith("[![Open In Colab]") and nb.cells[0].source.endswith("# Demo\n\nIntro.")
    next_line = nb.cells[-1].source.splitlines()[-1]
    assert next_line.startswith("**Next:** [Two](../two/two.ipynb)") and "DDPM" in next_line

    # A new address (a fork) and a new `next` replace the badge, the cell and the line: nothing is duplicated.
    monkeypatch.setattr(update_readme, "repository_url", lambda root=None: "https://github.com/fork/repo")
    metas["image_generation/demo"]["next"] = []
    assert notebook_header.apply_header(nb, "image_generation/demo", metas["image_generation/demo"], metas.__getitem__)
    assert nb.cells[0].source.count("Open In Colab") == 1 and "github/fork/repo/blob" in nb.cells[0].source
    assert sum(c.get("id") == notebook_header.SETUP_ID for c in nb.cells) == 1 and "fork/repo" in nb.cells[3].source
    assert nb.cells[-1].source.count("**Next:**") == 1 and "../two" not in nb.cells[-1].source


def test_a_misplaced_setup_cell_is_moved_back(monkeypatch: pytest.MonkeyPatch) -> None:
    metas = {"image_generation/demo": {"notebook": "demo.ipynb", "title": "Demo"}}
    nb = demo_notebook()
    notebook_header.apply_header(nb, "image_generation/demo", metas["image_generation/demo"], metas.__getitem__)
    nb.cells.append(nb.cells.pop(3))  # the setup cell dragged to the end
    assert notebook_header.apply_header(nb, "image_generation/demo", metas["image_generation/demo"], metas.__getitem__)
    assert nb.cells[3].get("id") == notebook_header.SETUP_ID and nb.cells[-1].cell_type == "markdown"
