"""Run a measurement inside a notebook's own kernel and keep its result as a record (the measurement scripts'
shared plumbing: scripts/sampling_precision.py, scripts/gat_wh_dropout.py).

A measurement script takes the notebook's cells up to the point it needs, appends one cell that prints
`RESULT {json}`, and calls `run_in_kernel`: it executes them in a kernel started in the notebook's folder (with
matplotlib's Agg backend), reads that line, and adds the provenance a committed measurement must name (the git
commit and whether the tree was dirty, read before the run; wall seconds; Python; when it finished).
`write_record` stores it as `<out>/<name>__<preset>__<UTC time>.json`.
"""

from __future__ import annotations

import json
import platform
import subprocess
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from run_notebook import kernel_config, kernel_env

REPO_ROOT = Path(__file__).resolve().parent.parent


def git_commit() -> tuple[str | None, bool | None]:
    """(HEAD's commit, whether tracked files differ from it), or (None, None) where git cannot say."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                                    capture_output=True, text=True, check=True).stdout.strip())
        return commit, dirty
    except (OSError, subprocess.SubprocessError):
        return None, None


def run_in_kernel(nb: nbformat.NotebookNode, notebook: Path, task: str, what: str) -> tuple[dict, str]:
    """Execute `nb` (cells of `notebook`, the last printing `RESULT {json}`); returns that JSON with its task, what it
    measures and its provenance, and all the last cell printed."""
    env = kernel_env() | {"MPLBACKEND": "Agg"}
    client = NotebookClient(nb, timeout=24 * 3600, kernel_name="python3",
                            resources={"metadata": {"path": str(notebook.parent)}}, config=kernel_config())
    commit, dirty = git_commit()  # the code that runs: read before it runs
    start = time.perf_counter()
    client.execute(env=env)
    text = "".join(o.get("text", "") for o in nb.cells[-1].get("outputs", []))
    result = json.loads(next(line for line in text.splitlines() if line.startswith("RESULT "))[len("RESULT "):])
    result.update(task=task, what=what, wall_seconds=time.perf_counter() - start, git_commit=commit,
                  git_dirty=dirty, python=platform.python_version(),
                  finished_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    return result, text


def write_record(result: dict, out: Path, name: str) -> Path:
    """Write `result` to `<out>/<name>__<preset>__<UTC time>.json`; returns the path."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}__{result['preset']}__{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    return path
