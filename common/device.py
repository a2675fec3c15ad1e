"""Pick the best available device: CUDA, then Apple MPS, then the CPU."""

from __future__ import annotations

import os
import platform

import torch


def describe_device(device: torch.device) -> str:
    """A human-readable name for `device`, e.g. 'NVIDIA GeForce RTX 4090' or 'cpu (2 threads, x86_64)'."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return f"Apple MPS ({platform.machine()})"
    return f"cpu ({torch.get_num_threads()} threads, {platform.machine()})"


def get_device(verbose: bool = True) -> torch.device:
    """Return CUDA if available, else MPS, else CPU, and print one line saying which.

    `DL_DEVICE` (e.g. `cpu`) overrides the choice, which is handy for comparing devices.
    """
    forced = os.environ.get("DL_DEVICE")
    if forced:
        device = torch.device(forced)
    elif torch.cuda.is_available():
        device = torch.device("cuda")
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        device = torch.device("mps")
    else:
        device = torch.device("cpu")
    if verbose:
        name = describe_device(device)  # the CPU's description already starts with "cpu"
        print(f"Using device: {name}" if device.type == "cpu" else f"Using device: {device.type} ({name})")
    return device
