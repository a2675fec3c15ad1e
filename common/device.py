"""Pick the best available device: CUDA, then Apple MPS, then the CPU; or the one `DL_DEVICE` names."""

from __future__ import annotations

import os
import platform
import re

import torch

from common import float64_guard

ALLOWED_DEVICES = "cpu, cuda, cuda:N, mps"


class DeviceError(ValueError):
    """`DL_DEVICE` names no device, or one this machine does not have. The message is one line."""


def describe_device(device: torch.device) -> str:
    """A human-readable name for `device`, e.g. 'NVIDIA GeForce RTX 4090' or 'cpu (2 threads, x86_64)'."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return f"Apple MPS ({platform.machine()})"
    threads = torch.get_num_threads()
    return f"cpu ({threads} thread{'' if threads == 1 else 's'}, {platform.machine()})"


def canonical_device_name(name: str) -> str:
    """`name` as `describe_device` writes it now: records written before this spelling (2026-11-29) say
    "cpu (1 threads, ...)" for a CPU run on one thread, where it now says "cpu (1 thread, ...)". Any other name comes
    back unchanged."""
    return re.sub(r"^cpu \(1 threads\b", "cpu (1 thread", name)


def synchronize(device: torch.device | str | None) -> None:
    """Wait for `device`'s queued work: CUDA and MPS run asynchronously, the CPU (and None) need no wait."""
    if device is None:
        return
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def host_to_device(t: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """`t`, a tensor on the CPU, on `device`, without making the host wait for the device's queued work.

    On CUDA a plain `t.to(device)` from ordinary (pageable) memory waits for every kernel queued before it, so a
    training loop that copies a batch, a permutation or random draws made on the CPU each step cannot run ahead of
    the GPU. Here `t` goes through pinned memory and is copied asynchronously, in stream order (PyTorch's caching
    host allocator keeps the pinned block until the copy has run). The values are the same; on any other device, or
    for a tensor not on the CPU, this is `t.to(device)`."""
    device = torch.device(device)
    if device.type != "cuda" or t.device.type != "cpu":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def parse_device(value: str) -> torch.device:
    """The device `value` names ('cpu', 'cuda', 'cuda:N' or 'mps', any case), checked against this machine.

    Raises `DeviceError` with one line naming the allowed values when `value` is none of them, or names a
    device that is not here (no CUDA, fewer GPUs than N+1, no MPS).
    """
    text = value.strip().lower()
    match = re.fullmatch(r"(cpu|mps|cuda)(?::(\d+))?", text)
    if match is None or (match[2] is not None and match[1] != "cuda"):
        raise DeviceError(f"DL_DEVICE={value!r} is not a device; allowed: {ALLOWED_DEVICES} "
                          f"(or leave DL_DEVICE unset to pick the best one available)")
    kind, index = match[1], match[2]
    missing = None
    if kind == "cuda" and not torch.cuda.is_available():
        missing = f"CUDA is not available here (torch {torch.__version__}, CUDA build {torch.version.cuda})"
    elif kind == "cuda" and index is not None and int(index) >= torch.cuda.device_count():
        missing = f"this machine has {torch.cuda.device_count()} CUDA device(s), numbered from 0"
    elif kind == "mps" and not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
        missing = "Apple MPS is not available here"
    if missing:
        raise DeviceError(f"DL_DEVICE={value!r}: {missing}; allowed: {ALLOWED_DEVICES} "
                          f"(or leave DL_DEVICE unset to pick the best one available)")
    return torch.device(text)


def choose_device() -> torch.device:
    """The device `get_device` returns, without printing or installing anything: `DL_DEVICE` if set, else CUDA if
    available, else MPS, else the CPU."""
    forced = os.environ.get("DL_DEVICE", "").strip()
    if forced:
        device = parse_device(forced)
    elif torch.cuda.is_available():
        device = torch.device("cuda")
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        device = torch.device("mps")
    else:
        device = torch.device("cpu")
    return device


def get_device(verbose: bool = True) -> torch.device:
    """Return CUDA if available, else MPS, else CPU, and print one line saying which.

    `DL_DEVICE` (cpu, cuda, cuda:N or mps) overrides the choice, which is handy for comparing devices; it is
    validated here, once, so a wrong value stops the notebook at its Setup cell with one clear line
    (`DeviceError`) instead of a raw torch error or a failure later on.

    With `DL_FORBID_DEVICE_FLOAT64=1` (the notebook tests set it) it also installs `common.float64_guard`, under
    which float64 on the returned device raises, as on Apple's MPS; the CPU is then returned as `cpu:0`.
    """
    device = choose_device()
    if float64_guard.enabled():
        device = float64_guard.install(device)
    from common.plot import note_run  # late: matplotlib is not needed to choose a device
    note_run(device=describe_device(device))
    if verbose:
        name = describe_device(device)  # the CPU's description already starts with "cpu"
        guard = f" (no float64 on it: {float64_guard.ENV} is set)" if float64_guard.enabled() else ""
        print((f"Using device: {name}" if device.type == "cpu" else f"Using device: {device.type} ({name})") + guard)
    return device
