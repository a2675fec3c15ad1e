"""Build a notebook from a percent-format script (the format Jupytext and VS Code use).

    python scripts/nb_from_py.py path/to/source.py path/to/notebook.ipynb

Cells start with `# %%` (code) or `# %% [markdown]` (markdown; every line starts with
`# `). Handy for writing a notebook in an editor; the notebook is what gets committed.
Outputs are empty: execute the notebook (`jupyter execute --inplace ...`) to fill them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat


def cells_from_percent(text: str) -> list[nbformat.NotebookNode]:
    """Split percent-format source into notebook cells."""
    cells: list[nbformat.NotebookNode] = []
    kind, lines = None, []

    def flush() -> None:
        if kind is None:
            return
        body = "\n".join(lines).strip("\n")
        if kind == "markdown":
            body = "\n".join(line[2:] if line.startswith("# ") else line.lstrip("#") for line in body.split("\n"))
            cells.append(nbformat.v4.new_markdown_cell(body))
        elif body.strip():
            cells.append(nbformat.v4.new_code_cell(body))

    for line in text.split("\n"):
        if line.startswith("# %%"):
            flush()
            kind, lines = ("markdown" if "[markdown]" in line else "code"), []
        elif kind is not None:
            lines.append(line)
    flush()
    return cells


def main(src: str, dst: str) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = cells_from_percent(Path(src).read_text(encoding="utf-8"))
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    nbformat.validate(nb)
    nbformat.write(nb, dst)
    print(f"wrote {dst}: {len(nb.cells)} cells")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
