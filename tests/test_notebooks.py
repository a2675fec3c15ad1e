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


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.parent.relative_to(REPO_ROOT).as_posix() for p in NOTEBOOKS])
def test_notebook_runs_in_smoke_and_writes_a_record(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runs = tmp_path / "runs"
    monkeypatch.setenv("DL_PRESET", "smoke")
    monkeypatch.setenv("DL_RUNS_DIR", str(runs))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}})
    client.execute()
    records = [json.loads(p.read_text()) for p in runs.glob("*.json")]
    assert len(records) == 1, f"expected one run record, found {len(records)}"
    record = records[0]
    assert record["task"] == path.parent.relative_to(REPO_ROOT).as_posix()
    assert record["preset"] == "smoke"
    assert record["metrics"], "the run record has no metrics"


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.parent.relative_to(REPO_ROOT).as_posix() for p in NOTEBOOKS])
def test_notebook_resumes_from_its_checkpoint(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run once in smoke, then again with `resume=True`: the second run must pick up the first run's checkpoint."""
    monkeypatch.setenv("DL_PRESET", "smoke")
    monkeypatch.setenv("DL_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    outputs = []
    for resume in (False, True):
        nb = nbformat.read(path, as_version=4)
        config_cells = [c for c in nb.cells if c.cell_type == "code" and "resume: bool = False" in c.source]
        assert len(config_cells) == 1, "the Config needs a `resume: bool = False` field"
        config_cells[0].source = config_cells[0].source.replace("resume: bool = False", f"resume: bool = {resume}")
        client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
        client.execute()  # cwd is tmp_path, so checkpoints land there
        outputs.append(" ".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", [])))
    assert "resumed" not in outputs[0].lower()
    assert "resumed" in outputs[1].lower(), "the resumed run did not say it resumed"
    assert len(list((tmp_path / "runs").glob("*.json"))) == 2
