"""Execute every notebook end to end with DL_PRESET=smoke and check it writes a run record.

Notebooks are found by globbing, so a new task is covered without editing this file.
"""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

REPO_ROOT = Path(__file__).resolve().parent.parent
FOLDERS = ("image_classification", "image_generation", "representation_learning", "text_generation", "templates")
NOTEBOOKS = sorted(p for folder in FOLDERS for p in (REPO_ROOT / folder).glob("**/*.ipynb")
                   if ".ipynb_checkpoints" not in p.parts)
IDS = [p.parent.relative_to(REPO_ROOT).as_posix() for p in NOTEBOOKS]


@pytest.fixture
def smoke_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The smoke preset, headless plots, and run records in a temporary folder (returned)."""
    runs = tmp_path / "runs"
    monkeypatch.setenv("DL_PRESET", "smoke")
    monkeypatch.setenv("DL_RUNS_DIR", str(runs))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    return runs


def execute(nb: nbformat.NotebookNode, cwd: Path) -> None:
    """Run every cell of `nb` in a fresh kernel whose working directory is `cwd`; a failing cell raises."""
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_runs_in_smoke_and_writes_a_record(path: Path, smoke_env: Path) -> None:
    execute(nbformat.read(path, as_version=4), path.parent)
    records = [json.loads(p.read_text()) for p in smoke_env.glob("*.json")]
    assert len(records) == 1, f"expected one run record, found {len(records)}"
    record = records[0]
    assert record["task"] == path.parent.relative_to(REPO_ROOT).as_posix()
    assert record["preset"] == "smoke"
    assert record["metrics"], "the run record has no metrics"


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_resumes_from_its_checkpoint(path: Path, tmp_path: Path, smoke_env: Path) -> None:
    """Run once in smoke, then again with `resume=True`: the second run must pick up the first run's checkpoint."""
    outputs = []
    for resume in (False, True):
        nb = nbformat.read(path, as_version=4)
        config_cells = [c for c in nb.cells if c.cell_type == "code" and "resume: bool = False" in c.source]
        assert len(config_cells) == 1, "the Config needs a `resume: bool = False` field"
        config_cells[0].source = config_cells[0].source.replace("resume: bool = False", f"resume: bool = {resume}")
        execute(nb, tmp_path)  # checkpoints land in tmp_path
        outputs.append(" ".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", [])))
    assert "resumed" not in outputs[0].lower()
    assert "resumed" in outputs[1].lower(), "the resumed run did not say it resumed"
    assert len(list(smoke_env.glob("*.json"))) == 2
