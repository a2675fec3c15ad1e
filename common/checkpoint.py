"""Checkpoints that survive a crash mid-write and load without unpickling arbitrary code."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Save `state` (state_dicts, step counters, plain numbers and strings) atomically.

    The file is written to a temporary name in the same folder and then renamed, so a run
    killed mid-save leaves the previous checkpoint intact, never a half-written one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load_checkpoint(path: str | Path, map_location: torch.device | str = "cpu") -> dict[str, Any] | None:
    """Load a checkpoint saved by `save_checkpoint`, or return None if there is none (a fresh start).

    Uses `weights_only=True`: only tensors, numbers, strings and containers of them load,
    so a checkpoint from an untrusted source cannot run code.
    """
    path = Path(path)
    if not path.exists():
        return None
    return torch.load(path, map_location=map_location, weights_only=True)
