"""Shared test fixtures. Tests never write into the repository: runs go to a temp folder."""

from __future__ import annotations

import random
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch

matplotlib.use("Agg")

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def default_matmul_precision():
    """Every test starts and ends with PyTorch's default TF32 settings.

    Tests that execute notebook cells in-process (test_bpe, test_mlp_backprop, ...) run the notebook's
    `enable_tf32()`; left behind, it made a later test's `torch.get_float32_matmul_precision()` fail on a mix of
    TF32 settings, depending on the order in which the tests ran.
    """
    def reset() -> None:
        torch.set_float32_matmul_precision("highest")
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = True

    reset()
    yield
    reset()


def _keep_global_random_state():
    """Save Python's, NumPy's and torch's CPU generators, yield, and put them back."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):  # the CPU generator; the tests seed no CUDA generator they read later
        yield
    random.setstate(python_state)
    np.random.set_state(numpy_state)


@pytest.fixture(autouse=True, scope="module")
def module_random_state():
    """A module's fixtures (set up before its tests' own) leave the global random generators as they found them."""
    yield from _keep_global_random_state()


@pytest.fixture(autouse=True)
def global_random_state():
    """Every test leaves Python's, NumPy's and torch's global random generators as it found them.

    Tests seed them (torch.manual_seed, and the notebooks' `seed_everything` that unit tests call); left behind, a
    later test's unseeded draws would depend on which tests ran before it. Module fixtures are covered by
    `module_random_state`; a session fixture that seeds must restore what it changes itself.
    """
    yield from _keep_global_random_state()


@pytest.fixture(scope="session")
def uninterrupted_runs() -> dict[str, dict]:
    """Run records of uninterrupted `smoke` runs made in this test process, by task ("image_classification/resnet"):
    tests/test_notebooks.py puts each notebook's first run here, and the slice tests of tests/test_campaign.py compare
    their sliced runs with it instead of running the notebook whole once more (the root conftest.py keeps each pair in
    one process, the notebook's test first); a slice test that finds no record runs the notebook whole itself."""
    return {}


@pytest.fixture
def runs_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point DL_RUNS_DIR at an empty temporary folder."""
    path = tmp_path / "runs"
    monkeypatch.setenv("DL_RUNS_DIR", str(path))
    return path


@pytest.fixture
def data_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point DL_DATA_DIR at an empty temporary folder, with no read-only data folders and an empty download cache."""
    path = tmp_path / "data"
    path.mkdir()
    monkeypatch.setenv("DL_DATA_DIR", str(path))
    monkeypatch.delenv("DL_EXTRA_DATA_DIRS", raising=False)
    monkeypatch.setenv("DL_CACHE_DIR", str(tmp_path / "cache"))
    return path
