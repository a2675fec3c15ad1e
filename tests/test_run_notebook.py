"""scripts/run_notebook.py saves a notebook's figures even when the caller's shell sets a headless backend."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from scripts_module import load_script

REPO_ROOT = Path(__file__).resolve().parent.parent
run_notebook = load_script("run_notebook")


@pytest.mark.notebook
def test_figures_are_saved_even_when_the_caller_sets_agg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MPLBACKEND", "Agg")  # what CI and the root conftest.py set
    path = tmp_path / "plot.ipynb"
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("import matplotlib.pyplot as plt\nplt.plot([0, 1], [1, 0])\nplt.show()")]
    nbformat.write(nb, path)
    run_notebook.run(path)
    outputs = nbformat.read(path, as_version=4).cells[0].outputs
    assert any("image/png" in o.get("data", {}) for o in outputs), f"no figure saved: {outputs}"


def test_the_kernel_environment_drops_only_mplbackend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("DL_PRESET", "quick")
    env = run_notebook.kernel_env()
    assert "MPLBACKEND" not in env and env["DL_PRESET"] == "quick"
