"""Write the parts of a task notebook that are generated from the repository's metadata, idempotently.

    python scripts/notebook_header.py --all                      # every task notebook and the template
    python scripts/notebook_header.py image_generation/vae/vae.ipynb ...
    python scripts/notebook_header.py --check --all              # exit 1 if a notebook is not current

Three parts, each rewritten in place (running it twice changes nothing; outputs of other cells are kept):

1. an "Open in Colab" badge, the first line of the first markdown cell;
2. the setup cell, the first code cell of the Setup section (cell id and tag `colab-setup`): opened on its own
   (e.g. in Colab), it installs the repository's `common` package and the task's requirements.txt from GitHub
   and says so in one line; where `common` is importable (a clone, the tests) it does nothing and prints nothing;
3. a "**Next:**" line at the end of the Takeaways cell, from `next` (and `coming`) in the task's task.toml.

Every address comes from `[project.urls] Repository` in pyproject.toml (see scripts/update_readme.py).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable

import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parent))
import update_readme  # noqa: E402  (the repository address, the Colab links, task.toml parsing)

REPO_ROOT = update_readme.REPO_ROOT
SETUP_ID = "colab-setup"  # the setup cell's id and tag
BADGE_PREFIX = "[![Open In Colab]"
NEXT_PREFIX = "**Next:**"


def setup_cell_source(folder: str) -> str:
    """The setup cell of the task in `folder` (relative to the repository root)."""
    repo = update_readme.repository_url()[len("https://github.com/"):]  # owner/name
    branch = update_readme.DEFAULT_BRANCH
    return f'''# Opened on its own (e.g. in Colab)? This cell installs the repository's `common` package and this task's
# requirements.txt from GitHub; where `common` is already installed (a clone, the tests) it does nothing.
import importlib.util
import subprocess
import sys

if importlib.util.find_spec("common") is None:
    REPO = "{repo}"  # on GitHub
    print(f"`common` is not installed: installing it and {folder}/requirements.txt from github.com/{{REPO}}")
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", f"git+https://github.com/{{REPO}}",
                          "-r", f"https://raw.githubusercontent.com/{{REPO}}/{branch}/{folder}/requirements.txt"],
                         capture_output=True, text=True)
    if pip.returncode != 0:
        raise RuntimeError(f"pip could not install them:\\n{{pip.stderr[-2000:]}}")'''


def next_line(folder: str, meta: dict, lookup: Callable[[str], dict]) -> str:
    """The "Next" paragraph: links (relative, and Colab) to the `next` tasks, then the `coming` ones."""
    links = []
    for other in meta.get("next", []):
        notebook = f"{other}/{lookup(other)['notebook']}"
        rel = os.path.relpath(notebook, folder).replace(os.sep, "/")
        links.append(f"[{lookup(other)['title']}]({rel}) ([open in Colab]({update_readme.colab_url(notebook)}))")
    path = f"the README's [learning path]({update_readme.repository_url()}#learning-path)"
    coming = " → ".join(meta.get("coming", []))
    if links:
        text = " or ".join(links) + "."
        if coming:
            text += f" Later on this path, not written yet: {coming}."
        return f"{NEXT_PREFIX} {text} The whole order is {path}."
    if coming:
        return f"{NEXT_PREFIX} on this path, {coming} are coming (not written yet); meanwhile, see {path}."
    return f"{NEXT_PREFIX} see {path} for the other notebooks and where each path starts."


def _headings(cell) -> list[str]:
    return [line[3:].strip() for line in cell.source.splitlines() if line.startswith("## ")] \
        if cell.cell_type == "markdown" else []


def _set_source(cell, source: str) -> bool:
    if cell.source == source:
        return False
    cell.source = source
    return True


def apply_header(nb, folder: str, meta: dict, lookup: Callable[[str], dict]) -> bool:
    """Write the badge, the setup cell and the Next line into `nb` (the notebook of the task in `folder`, whose
    task.toml is `meta`; `lookup(folder)` reads another task's). Returns whether anything changed."""
    changed = False
    markdown = [c for c in nb.cells if c.cell_type == "markdown"]
    if not markdown:
        raise ValueError(f"{folder}: the notebook has no markdown cell for the badge")
    # 1. the badge
    badge = update_readme.colab_badge(f"{folder}/{meta['notebook']}")
    lines = markdown[0].source.splitlines()
    if lines and lines[0].startswith(BADGE_PREFIX):
        lines = lines[1:]
        while lines and not lines[0].strip():
            lines = lines[1:]
    changed |= _set_source(markdown[0], "\n".join([badge, ""] + lines))
    # 2. the setup cell, right after the cell that opens the Setup section
    setup_at = [i for i, c in enumerate(nb.cells) if any(h.startswith("Setup") for h in _headings(c))]
    if not setup_at:
        raise ValueError(f"{folder}: the notebook has no '## Setup' heading")
    source = setup_cell_source(folder)
    old = [i for i, c in enumerate(nb.cells) if c.get("id") == SETUP_ID or SETUP_ID in c.metadata.get("tags", [])]
    if old == [setup_at[0] + 1] and nb.cells[old[0]].cell_type == "code":
        changed |= _set_source(nb.cells[old[0]], source)
    else:
        for i in reversed(old):
            del nb.cells[i]
        setup_at = [i for i, c in enumerate(nb.cells) if any(h.startswith("Setup") for h in _headings(c))]
        cell = nbformat.v4.new_code_cell(source, metadata={"tags": [SETUP_ID]})
        if nb.nbformat == 4 and nb.nbformat_minor >= 5:
            cell.id = SETUP_ID
        else:
            cell.pop("id", None)
        nb.cells.insert(setup_at[0] + 1, cell)
        changed = True
    # 3. the Next line, the last paragraph of the Takeaways cell
    takeaways = [c for c in nb.cells if any(h.startswith("Takeaways") for h in _headings(c))]
    if not takeaways:
        raise ValueError(f"{folder}: the notebook has no '## Takeaways' heading")
    lines = [line for line in takeaways[0].source.splitlines() if not line.startswith(NEXT_PREFIX)]
    while lines and not lines[-1].strip():
        lines.pop()
    changed |= _set_source(takeaways[0], "\n".join(lines + ["", next_line(folder, meta, lookup)]))
    return changed


def read_meta(folder: str, root: Path = REPO_ROOT) -> dict:
    return update_readme.tomllib.loads((root / folder / "task.toml").read_text())


def task_notebooks(root: Path = REPO_ROOT) -> list[Path]:
    """Every task notebook (named by a task.toml in a category folder) and the template's."""
    folders = [root / t.folder for t in update_readme.load_tasks(root)] + [root / "templates" / "task_template"]
    return [folder / read_meta(folder.relative_to(root).as_posix(), root)["notebook"] for folder in folders]


def update(path: Path, write: bool = True) -> bool:
    """Apply the header to the notebook at `path` (inside the repository); returns whether it changed."""
    path = path.resolve()
    folder = path.parent.relative_to(REPO_ROOT).as_posix()
    meta = read_meta(folder)
    if meta["notebook"] != path.name:
        raise ValueError(f"{folder}/task.toml names {meta['notebook']}, not {path.name}")
    nb = nbformat.read(path, as_version=4)
    changed = apply_header(nb, folder, meta, read_meta)
    if changed and write:
        nbformat.write(nb, path)
    return changed


def main(argv: list[str]) -> int:
    check = "--check" in argv
    paths = [Path(a) for a in argv if not a.startswith("--")]
    if "--all" in argv:
        paths += task_notebooks()
    if not paths:
        print(__doc__)
        return 2
    stale = []
    for path in paths:
        if update(path, write=not check):
            stale.append(path)
            print(f"{path}: {'not current' if check else 'header updated'}")
    if check and stale:
        print("run `python scripts/notebook_header.py --all`")
    return 1 if check and stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
