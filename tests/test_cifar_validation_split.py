"""The CIFAR-10 notebooks refuse a training file too small for their validation split, at the Data cell.

ResNet, ViT and SimCLR hold out a fixed count of CIFAR-10's 50,000 training images (5,000 under `quick` and
`full`). The tests' data folder holds a 5,000-image subset of CIFAR-10: a `quick` run reading it would hold out every
image and train on none. SimCLR once did, and died three lines later with a ZeroDivisionError in `show_images`, as
ResNet would have; ViT would have trained on an empty set until `batch_at` divided by zero. Each notebook now stops
at its Data cell with one line naming the cause. These tests run each notebook's own Setup, Config and Data cells
in the smoke preset (n_val or val_size: 500) on random stand-in images in `common.data.ImageData`, the loader's own
class: `n_val` images are refused; the control, 100 more, leaves 100 to train on.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest

from common.data import ImageData
from tests.notebook_cells import cell_sources, run_sources, setup_and_config

REPO_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = {  # notebook: (its path, the Config field that sizes its validation split)
    "resnet": (REPO_ROOT / "image_classification" / "resnet" / "resnet.ipynb", "n_val"),
    "vit": (REPO_ROOT / "image_classification" / "vit" / "vit.ipynb", "val_size"),
    "simclr": (REPO_ROOT / "representation_learning" / "simclr" / "simclr.ipynb", "n_val"),
}


def stand_in_cifar(n_train: int) -> ImageData:
    """What `load_image_dataset("cifar10")` returns, holding `n_train` random 32x32 colour images (and 100 test)."""
    rng = np.random.default_rng(0)
    return ImageData("cifar10", rng.integers(0, 256, (n_train, 32, 32, 3), dtype=np.uint8), np.arange(n_train) % 10,
                     rng.integers(0, 256, (100, 32, 32, 3), dtype=np.uint8), np.arange(100) % 10)


@pytest.fixture(scope="module")
def after_setup_and_config() -> dict[str, dict]:
    """Each notebook's namespace after its Setup and Config cells, in the smoke preset."""
    namespaces = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DL_PRESET", "smoke")
        for name, (notebook, _) in NOTEBOOKS.items():
            namespaces[name] = run_sources(setup_and_config(notebook), notebook)
    return namespaces


def run_data_cell(name: str, base: dict, n_train: int) -> dict:
    """The notebook's Data cell on `n_train` stand-in training images, in a copy of its Setup and Config namespace."""
    notebook = NOTEBOOKS[name][0]
    [data] = cell_sources(notebook, select=lambda s: s.startswith("data = load_image_dataset("))
    try:
        return run_sources([data], notebook, {**base, "load_image_dataset": lambda dataset: stand_in_cifar(n_train)})
    finally:
        plt.close("all")


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_a_training_file_too_small_for_the_validation_split_is_refused(name: str,
                                                                       after_setup_and_config: dict[str, dict]) -> None:
    field = NOTEBOOKS[name][1]
    held_out = getattr(after_setup_and_config[name]["cfg"], field)
    assert len(run_data_cell(name, after_setup_and_config[name], held_out + 100)["x_train"]) == 100  # the control
    with pytest.raises(ValueError, match=f"{held_out:,} training images cannot spare a validation split of {field}"):
        run_data_cell(name, after_setup_and_config[name], held_out)
