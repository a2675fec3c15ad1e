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
