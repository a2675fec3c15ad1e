"""Write the parts of a task notebook that are generated from the repository's metadata, idempotently.

    python scripts/notebook_header.py --all                      # every task notebook and the template
    python scripts/notebook_header.py image_generation/vae/vae.ipynb ...
    python scripts/notebook_header.py --check --all              # exit 1 if a notebook is not current

Three parts, each rewritten in place (running it twice changes nothing; outputs of other cells are kept):

1. an "Open in Colab" badge, the first line of the first markdown cell;
2. the setup cell, the first code cell of the Setup section (cell id and tag `colab-setup`): opened on its own
   (e.g. in Colab), it installs the repository's `common` package from the branch the Colab badge opens, and the
   requirements of the task's requirements.txt (written into the cell); then it prints the commit it installed,
   the preset that will run and why, and how to keep checkpoints on Google Drive. It never installs torch (or
   torchvision, torchaudio) where it is already importable: Colab's own build is kept, pinned by a constraint.
   Where this repository's `common` is importable (a clone, the tests) it does nothing and prints nothing; where
   another package named `common` is, it stops with one line;
3. a "**Next:**" line at the end of the Takeaways cell, from `next` (and `coming`) in the task's task.toml.

Every address comes from `[project.urls] Repository` in pyproject.toml and the branch from `[tool.dl-4090-hours]
branch` there (see scripts/update_readme.py): a badge and the setup cell below it always name the same repository
and branch, so the notebook Colab opens runs with the `common` of the same branch (CONTRIBUTING.md, "Releasing").
"""

from __future__ import annotations

import os
import re
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


PACKAGE_ID = "dl-4090-hours-common"  # common.PACKAGE_ID: tells this repository's `common` from any other
KEPT = ("torch", "torchvision", "torchaudio")  # never reinstalled where importable (Colab ships its own CUDA build)


def install_ref(root: Path = REPO_ROOT) -> str:
    """The git ref the setup cells install `common` from: the branch the Colab badges open."""
    return update_readme.branch(root)


def task_requirements(folder: str, root: Path = REPO_ROOT) -> list[str]:
    """The requirement lines of `folder`/requirements.txt (comments and pip options dropped; [] if it has none)."""
    path = root / folder / "requirements.txt"
    lines = path.read_text().splitlines() if path.is_file() else []
    reqs = [line.split("#", 1)[0].strip() for line in lines]
    return [r for r in reqs if r and not r.startswith("-")]


def requirement_name(requirement: str) -> str:
    """'torch>=2.3' -> 'torch'."""
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].strip().lower()


def setup_cell_source(folder: str) -> str:
    """The setup cell of the task in `folder` (relative to the repository root)."""
    repo = update_readme.repository_url()[len("https://github.com/"):]  # owner/name
    needs = ", ".join(f'"{r}"' for r in task_requirements(folder))
    kept = ", ".join(f'"{name}"' for name in KEPT)
    return f'''# Opened on its own (e.g. in Colab)? This cell installs the repository's `common` package from the branch the
# "Open in Colab" badge opens, and this task's requirements; it keeps an installed torch (Colab's) as it is. Where
# this repository's `common` is already installed (a clone, the tests) it does nothing.
import importlib.metadata
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile

REPO, REF = "{repo}", "{install_ref()}"  # on GitHub; REF: the branch the badge opens
NEEDS = [{needs}]  # {folder}/requirements.txt
if importlib.util.find_spec("common") is None:
    kept = [name for name in ({kept}) if importlib.util.find_spec(name) is not None]
    wanted = [r for r in NEEDS if re.split(r"[<>=!~;\\[ ]", r, maxsplit=1)[0].strip().lower() not in kept]
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as pins:  # kept packages stay as they are
        pins.write("".join(f"{{name}}=={{importlib.metadata.version(name)}}\\n" for name in kept))
    print(f"`common` is not installed: installing it from github.com/{{REPO}} at {{REF}}, and {{', '.join(wanted)}}"
          + (f"; keeping the installed {{', '.join(kept)}}" if kept else ""))
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", f"git+https://github.com/{{REPO}}@{{REF}}",
                          *wanted, "-c", pins.name], capture_output=True, text=True)
    os.unlink(pins.name)
    if pip.returncode != 0:
        raise RuntimeError(f"pip could not install them:\\n{{pip.stderr[-2000:]}}")
    importlib.invalidate_caches()
    try:  # pip records the commit it cloned in the installed distribution's direct_url.json
        vcs = json.loads(importlib.metadata.distribution("{PACKAGE_ID}").read_text("direct_url.json") or "{{}}")
        commit = vcs.get("vcs_info", {{}}).get("commit_id") or "unknown"
    except (importlib.metadata.PackageNotFoundError, ValueError):
        commit = "unknown"
    from common.checkpoint import checkpoint_dir
    from common.preset import announce_preset
    print(f"Installed `common` at commit {{commit}} of {{REF}}.")
    announce_preset()  # the preset that will run, and why
    print(f"Checkpoints go to {{checkpoint_dir()}} (DL_CHECKPOINT_DIR); in Colab, /content vanishes with the runtime. "
          "To keep them, mount Google Drive (from google.colab import drive; drive.mount('/content/drive')) and set "
          "os.environ['DL_CHECKPOINT_DIR'] = '/content/drive/MyDrive/dl-4090-hours/checkpoints' before the Config "
          "cell: a run with resume=True then continues from the checkpoint it finds there.")
else:
    import common
    if getattr(common, "PACKAGE_ID", None) != "{PACKAGE_ID}":
        raise RuntimeError(f"`import common` finds another package ({{common.__file__}}), not this repository's: "
                           "uninstall or rename it, then run this cell again")'''


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
