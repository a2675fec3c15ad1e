"""Execute a notebook top to bottom in its own folder and save it with its outputs.

    DL_PRESET=quick python scripts/run_notebook.py image_classification/resnet/resnet.ipynb
    DL_PRESET=smoke python scripts/run_notebook.py --no-save templates/task_template/task_template.ipynb

Like `jupyter execute --inplace`, but progress bars are collapsed to their final line
(carriage returns resolved), so committed notebooks stay small and readable, and figures are always captured:
the kernel runs without the caller's `MPLBACKEND` (a headless `Agg` set by a shell or CI would otherwise keep
every plot out of the saved notebook), so matplotlib uses Jupyter's inline backend.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient


def kernel_env() -> dict[str, str]:
    """The caller's environment less `MPLBACKEND`, so that the kernel's figures go into the notebook."""
    return {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}


def run(path: Path, timeout: int = 24 * 3600, save: bool = True) -> None:
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", coalesce_streams=True,
                            resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    try:
        client.execute(env=kernel_env())
    finally:
        if save:
            nbformat.write(nb, path)
        print(f"{path}: {time.perf_counter() - start:.0f} s" + (", outputs saved" if save else ", outputs not saved"))


if __name__ == "__main__":
    args = sys.argv[1:]
    save = "--no-save" not in args
    paths = [a for a in args if a != "--no-save"]
    if len(paths) != 1:
        sys.exit(__doc__)
    run(Path(paths[0]).resolve(), save=save)
