"""Presets: how big a run is. `smoke` for tests (seconds), `quick` for a laptop CPU
(minutes, still a meaningful result), `full` for an RTX 4090.

The preset is read from the environment variable `DL_PRESET`. Without it, the default follows the device the
notebook will use (`common.device.choose_device`, which honours `DL_DEVICE`): `full` on a CUDA GPU with native
bf16 (compute capability 8.0 or newer) and at least `FULL_MIN_MEMORY_GIB` of memory, else `quick`; the first use of
the default prints one line saying which and why (`default_preset` returns both).
"""

from __future__ import annotations

import os
from typing import TypeVar

import torch

from common.device import choose_device, describe_device

PRESETS: tuple[str, ...] = ("smoke", "quick", "full")

T = TypeVar("T")

# The `full` presets are sized for an RTX 4090 (24 GiB, native bf16). Below this much GPU memory (a T4 or a laptop
# GPU: 16 GiB or less) the default is `quick`; no task states a memory need of its own.
FULL_MIN_MEMORY_GIB = 20
_announced = False


class PresetError(ValueError):
    """DL_PRESET holds something that is not a preset."""


def default_preset(device: torch.device | None = None) -> tuple[str, str]:
    """The preset to run without `DL_PRESET`, and one line saying why: `full` on a CUDA GPU with native bf16 and at
    least FULL_MIN_MEMORY_GIB of memory, else `quick`. `device` defaults to the one the notebook will use."""
    device = choose_device() if device is None else device
    how = "set DL_PRESET=smoke, quick or full to choose"
    if device.type != "cuda":
        return "quick", (f"DL_PRESET is not set and the device is {describe_device(device)}, not a CUDA GPU, while "
                         f"`full` is sized for an RTX 4090; {how}")
    name = describe_device(device)
    major, minor = torch.cuda.get_device_capability(device)
    gib = torch.cuda.get_device_properties(device).total_memory / 2**30
    if major < 8:
        return "quick", (f"DL_PRESET is not set and {name} (compute capability {major}.{minor}) has no native bf16: "
                         f"`full`, sized for an RTX 4090, would take hours there; {how}")
    if gib < FULL_MIN_MEMORY_GIB:
        return "quick", (f"DL_PRESET is not set and {name} has {gib:.0f} GiB, under the {FULL_MIN_MEMORY_GIB} GiB "
                         f"that `full` needs; {how}")
    return "full", f"DL_PRESET is not set and {name} has native bf16 and {gib:.0f} GiB; {how}"


def preset_and_reason() -> tuple[str, str]:
    """The active preset and one line saying why: `DL_PRESET` if set, else `default_preset()`."""
    if os.environ.get("DL_PRESET", "").strip():
        return get_preset(), "DL_PRESET is set"  # get_preset() checks the value
    return default_preset()


def announce_preset() -> str:
    """Print, once per process, one line naming the active preset and why (the Colab setup cell calls it; else the
    first `get_preset()` that falls back to the default does); returns the preset."""
    global _announced
    preset, reason = preset_and_reason()
    if not _announced:
        print(f"Preset: {preset} ({reason}).")
        _announced = True
    return preset


def get_preset() -> str:
    """The active preset: `DL_PRESET` if set, else `default_preset()`, whose reason is printed once per process."""
    from common.plot import note_run  # late: matplotlib is not needed to choose a preset
    value = os.environ.get("DL_PRESET", "").strip().lower()
    if not value:
        value = announce_preset()
    elif value not in PRESETS:
        raise PresetError(
            f"DL_PRESET={os.environ['DL_PRESET']!r} is not a preset; "
            f"set DL_PRESET to one of: {', '.join(PRESETS)} (or unset it for the default)."
        )
    note_run(preset=value)  # the footer of the figures made from now on names it
    return value


def pick(smoke: T, quick: T, full: T, preset: str | None = None) -> T:
    """Choose a value per preset in one readable line: `steps = pick(smoke=20, quick=2_000, full=10_000)`."""
    preset = preset if preset is not None else get_preset()
    if preset not in PRESETS:
        raise PresetError(f"preset {preset!r} is not one of: {', '.join(PRESETS)}")
    return {"smoke": smoke, "quick": quick, "full": full}[preset]
