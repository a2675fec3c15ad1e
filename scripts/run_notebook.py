"""Execute a notebook top to bottom in its own folder and save it with its outputs.

    DL_PRESET=quick python scripts/run_notebook.py image_classification/resnet/resnet.ipynb

Like `jupyter execute --inplace`, but progress bars are collapsed to their final line
(carriage returns resolved), so committed notebooks stay small and readable.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient


def run(path: Path, timeout: int = 24 * 3600) -> None:
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", coalesce_streams=True,
                            resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    try:
        client.execute()
    finally:
        nbformat.write(nb, path)
        print(f"{path}: {time.perf_counter() - start:.0f} s, outputs saved")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    run(Path(sys.argv[1]).resolve())
