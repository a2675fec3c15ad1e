"""Where things live: the repository root, datasets, run records, checkpoints and caches.

The one place that decides it (data, records and checkpoints import it; it imports nothing of `common`):

| what | environment variable | default |
|---|---|---|
| datasets (read, and written when built) | `DL_DATA_DIR` | `data/` under `default_root()` |
| more datasets, read only | `DL_EXTRA_DATA_DIRS` (folders joined by `os.pathsep`) | none |
| run records | `DL_RUNS_DIR` | `runs/` under `default_root()` |
| checkpoints | `DL_CHECKPOINT_DIR` | `checkpoints/` under `default_root()` |
| verified downloads (archives) | `DL_CACHE_DIR` | `$XDG_CACHE_HOME/dl-4090-hours`, else `~/.cache/dl-4090-hours` |

`default_root()` is the repository root in a clone (an editable install: `common/` sits beside `pyproject.toml`),
else the current working folder (`common` installed from git into site-packages, as in Colab: `/content`).

The test suite points `DL_DATA_DIR`, `DL_RUNS_DIR` and `DL_CHECKPOINT_DIR` at a temporary sandbox and lists the
user's real data folder in `DL_EXTRA_DATA_DIRS`: datasets are read from it, never written to it. The download
cache is shared with the user on purpose: it holds only archives whose checksum was verified, so what one test
run downloads, the next run and the user's own notebooks reuse.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CACHE_NAME = "dl-4090-hours"  # the folder under the user's cache directory


def in_checkout() -> bool:
    """Whether `common` is imported from a clone of the repository (editable install or PYTHONPATH)."""
    return (REPO_ROOT / "pyproject.toml").is_file()


def default_root() -> Path:
    """The folder that holds `data/`, `runs/` and `checkpoints/` by default: the repository root in a clone,
    else the current working folder (`common` installed from git, as in Colab)."""
    return REPO_ROOT if in_checkout() else Path.cwd()


def _env_path(var: str) -> Path | None:
    value = os.environ.get(var)
    return Path(value).expanduser() if value else None


def data_dir() -> Path:
    """The writable data folder: `DL_DATA_DIR`, else `data/` under `default_root()` (git-ignored). Created."""
    path = _env_path("DL_DATA_DIR") or default_root() / "data"
    path.mkdir(parents=True, exist_ok=True)
    return path


def extra_data_dirs() -> list[Path]:
    """The read-only data folders of `DL_EXTRA_DATA_DIRS` (joined by `os.pathsep`), in order."""
    value = os.environ.get("DL_EXTRA_DATA_DIRS", "")
    return [Path(p).expanduser() for p in value.split(os.pathsep) if p]


def find_data_file(name: str) -> Path | None:
    """The first `name` in `data_dir()`, then in `extra_data_dirs()`; None when no folder has it."""
    for folder in [data_dir(), *extra_data_dirs()]:
        if (folder / name).is_file():
            return folder / name
    return None


def user_data_dir() -> Path:
    """The folder to name when a dataset is missing: where the user keeps data. That is the first read-only
    folder when there is one (under the tests, the user's real data folder rather than the sandbox), else
    `data_dir()`."""
    extra = extra_data_dirs()
    return extra[0] if extra else data_dir()


def runs_dir() -> Path:
    """Where run records are written: `DL_RUNS_DIR`, else `runs/` under `default_root()`. Created."""
    path = _env_path("DL_RUNS_DIR") or default_root() / "runs"
    path.mkdir(parents=True, exist_ok=True)
    return path


def checkpoint_dir() -> Path:
    """Where checkpoints go: `DL_CHECKPOINT_DIR`, else `checkpoints/` under `default_root()` (git-ignored)."""
    return _env_path("DL_CHECKPOINT_DIR") or default_root() / "checkpoints"


def cache_dir() -> Path:
    """Verified downloads: `DL_CACHE_DIR`, else `$XDG_CACHE_HOME/dl-4090-hours`, else `~/.cache/dl-4090-hours`.
    Created. Outside the repository, so a clone's working tree never changes when something is cached."""
    xdg = _env_path("XDG_CACHE_HOME")
    path = _env_path("DL_CACHE_DIR") or (xdg or Path.home() / ".cache") / CACHE_NAME
    path.mkdir(parents=True, exist_ok=True)
    return path
