"""Presets: how big a run is. `smoke` for tests (seconds), `quick` for a laptop CPU
(minutes, still a meaningful result), `full` for an RTX 4090.

The preset is read from the environment variable `DL_PRESET`. Without it, the default is
`full` when a CUDA GPU is present, else `quick`.
"""

from __future__ import annotations

import os
from typing import TypeVar

import torch

PRESETS: tuple[str, ...] = ("smoke", "quick", "full")

T = TypeVar("T")


class PresetError(ValueError):
    """DL_PRESET holds something that is not a preset."""


def get_preset() -> str:
    """The active preset: `DL_PRESET` if set, else `full` on CUDA and `quick` elsewhere."""
    value = os.environ.get("DL_PRESET", "").strip().lower()
    if not value:
        return "full" if torch.cuda.is_available() else "quick"
    if value not in PRESETS:
        raise PresetError(
            f"DL_PRESET={os.environ['DL_PRESET']!r} is not a preset; "
            f"set DL_PRESET to one of: {', '.join(PRESETS)} (or unset it for the default)."
        )
    return value


def pick(smoke: T, quick: T, full: T, preset: str | None = None) -> T:
    """Choose a value per preset in one readable line: `steps = pick(smoke=20, quick=2_000, full=10_000)`."""
    preset = preset if preset is not None else get_preset()
    if preset not in PRESETS:
        raise PresetError(f"preset {preset!r} is not one of: {', '.join(PRESETS)}")
    return {"smoke": smoke, "quick": quick, "full": full}[preset]
