"""Checkpoints that survive a crash mid-write, load without unpickling arbitrary code, and fail safe.

- `checkpoint_path` names a checkpoint by task, preset and dataset, in `DL_CHECKPOINT_DIR`
  (default `checkpoints/` at the repository root, git-ignored), so a test or a `smoke` run never
  overwrites the checkpoint of a real run.
- `save_checkpoint` writes to a temporary file, flushes and fsyncs it, then renames it over the old
  one: a run killed mid-save leaves the previous checkpoint intact, never a half-written one.
- `load_checkpoint` loads with `weights_only=True` (only tensors, numbers, strings and containers of
  them) and turns every failure into a one-line `CheckpointError` that names the file and keeps the cause:
  objects that safe loading refuses, a device this machine lacks, a truncated or corrupt file. It refuses a
  checkpoint written by a different configuration, naming the fields that differ.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Iterator, Mapping

import torch

from common.paths import checkpoint_dir

# Config fields that may differ between the run that wrote a checkpoint and the run that resumes it.
RESUMABLE_FIELDS: tuple[str, ...] = ("resume", "compile", "stop_after_steps")  # may change between a run and its resume


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used: corrupt, truncated, or written by a different configuration."""


def checkpoint_path(task: str, preset: str, dataset: str, tag: str = "") -> Path:
    """The checkpoint file of one run: `<checkpoint_dir>/<task>__<preset>__<dataset>[__<tag>].pt`.

    E.g. `checkpoint_path("image_generation/vae", "quick", "mnist")` ->
    `checkpoints/image_generation__vae__quick__mnist.pt`. `tag` tells apart several models of one notebook.
    """
    parts = [task.replace("/", "__"), preset, dataset] + ([tag] if tag else [])
    return checkpoint_dir() / ("__".join(parts) + ".pt")


@contextlib.contextmanager
def atomic_write(path: Path) -> Iterator[BinaryIO]:
    """A binary file that becomes `path` only once fully written and synced: a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_checkpoint(path: str | Path, state: dict[str, Any], config: Mapping[str, Any] | None = None) -> Path:
    """Save `state` (state_dicts, step counters, plain numbers and strings) atomically and durably.

    `config` (e.g. `dataclasses.asdict(cfg)`) is stored beside the state, so that `load_checkpoint`
    can refuse to resume a run of a different configuration.
    """
    path = Path(path)
    if config is not None:
        state = {**state, "config": _plain(config)}
    with atomic_write(path) as f:
        torch.save(state, f)
    _fsync_dir(path.parent)
    return path


def load_checkpoint(path: str | Path, map_location: torch.device | str = "cpu",
                    config: Mapping[str, Any] | None = None,
                    ignore: Iterable[str] = RESUMABLE_FIELDS) -> dict[str, Any] | None:
    """Load a checkpoint saved by `save_checkpoint`, or return None if there is none (a fresh start).

    Raises `CheckpointError` (one line: the file and what to do) when the file is corrupt or truncated,
    and, when `config` is given, when the checkpoint's stored config differs in a field not in `ignore`.
    """
    path = Path(path)
    if not path.exists():
        return None
    # torch.load knows the CPU only as "cpu": the float64 guard's training CPU (`cpu:0`, common/float64_guard.py)
    # is loaded onto "cpu", then moved to it, which marks the tensors as being on the training device.
    onto = torch.device(map_location) if isinstance(map_location, (str, torch.device)) else None
    indexed_cpu = onto is not None and onto.type == "cpu" and onto.index is not None
    try:
        state = torch.load(path, map_location="cpu" if indexed_cpu else map_location, weights_only=True)
        if indexed_cpu:
            state = _to_device(state, onto)
    except Exception as e:  # any failure: garbage bytes can surface as IndexError or KeyError from the unpickler
        raise CheckpointError(load_failure(path, e, map_location)) from None  # torch's text is not chained: see below
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a checkpoint dict. "
                              f"Delete it, or set resume=False to start afresh.")
    _optimizer_steps_on_cpu(state)
    if config is not None and "config" in state:
        differing = config_differences(state["config"], config, ignore)
        if differing:
            raise CheckpointError(f"{path} was written by a different configuration ({'; '.join(differing)}). "
                                  f"Restore those Config fields, or set resume=False to start afresh.")
    return state


def _optimizer_steps_on_cpu(value: Any) -> None:
    """Move the `step` counters of every optimiser state dict in `value` (a dict with `state` and `param_groups`)
    to the CPU, in place, where torch's optimisers keep them: loaded onto a GPU they stay there
    (`Optimizer.load_state_dict` moves them only for fused or capturable optimisers), and Adam then reads each one
    back to the host at every step, a GPU synchronisation per parameter that slows a resumed run down. In place, so
    that every other object of the freshly loaded checkpoint stays as `torch.load` made it (a model state dict
    keeps its `_metadata`)."""
    if isinstance(value, dict):
        if "state" in value and "param_groups" in value and isinstance(value["state"], dict):
            for per_param in value["state"].values():
                if isinstance(per_param, dict) and isinstance(per_param.get("step"), torch.Tensor):
                    per_param["step"] = per_param["step"].cpu()
            return
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        for item in value:
            _optimizer_steps_on_cpu(item)


def _to_device(value: Any, device: torch.device) -> Any:
    """`value` with every tensor in it (in dicts, lists and tuples) moved to `device`."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        moved = type(value)((k, _to_device(v, device)) for k, v in value.items())
        if hasattr(value, "_metadata"):  # a model state dict's versions, which load_state_dict reads
            moved._metadata = value._metadata
        return moved
    if isinstance(value, (list, tuple)):
        return type(value)(_to_device(v, device) for v in value)
    return value


def load_failure(path: Path, error: BaseException, map_location: object = "cpu") -> str:
    """One line that says why `torch.load(path, weights_only=True)` raised `error`, and what to do.

    Torch's own message for a refused object advises `weights_only=False`, which would let the file run code:
    only its diagnosis ("Unsupported global: GLOBAL builtins.print") is kept."""
    text = " ".join(str(error).split())
    afresh = "Delete it, or set resume=False to start afresh."
    refused = re.search(r"Unsupported global: GLOBAL [\w.]+", text)
    if refused:
        return (f"{path} holds objects that safe loading refuses ({refused.group(0)}): it was not written by "
                f"save_checkpoint, or it holds more than tensors, numbers, strings and containers. {afresh}")
    if isinstance(error, TypeError) and "float64" in text:  # MPS (and the float64 guard) hold no float64
        return (f"{path} holds float64 tensors, which {map_location} cannot hold (Apple's MPS has no float64). The "
                f"file is fine: load it with map_location='cpu' and keep its float64 tensors on the CPU.")
    if isinstance(error, RuntimeError) and re.search(r"\b(CUDA|MPS|device)\b", text):
        cause = text.split(". ")[0]
        return (f"{path} cannot be loaded onto {map_location} ({cause}). The file may be fine: load it with "
                f"map_location set to a device this machine has (e.g. the notebook's `device`).")
    if isinstance(error, PermissionError) or getattr(error, "errno", None) in (errno.EACCES, errno.EPERM):
        return f"{path} cannot be read ({type(error).__name__}: {text}). Check its permissions."
    detail = f"{type(error).__name__}: {text[:160]}" if text else f"{type(error).__name__}: the file ends early"
    if "weights_only" in detail or "Weights only" in detail:  # the unpickler's diagnosis of garbage bytes
        found = re.search(r"WeightsUnpickler error: (.*?)(?: Check the documentation|$)", text)
        detail = f"unpickling failed: {found.group(1).strip()[:120]}" if found else "unpickling failed"
    return f"{path} is truncated or corrupt ({detail}), or not written by save_checkpoint. {afresh}"


def config_differences(saved: Mapping[str, Any], current: Mapping[str, Any],
                       ignore: Iterable[str] = RESUMABLE_FIELDS) -> list[str]:
    """`["width: checkpoint 64, now 32", ...]` for every field that differs, except those in `ignore`."""
    skip = set(ignore)
    current = _plain(current)
    out = []
    for key in sorted(set(saved) | set(current)):
        if key in skip:
            continue
        old, new = saved.get(key, "<absent>"), current.get(key, "<absent>")
        if old != new:
            out.append(f"{key}: checkpoint {old!r}, now {new!r}")
    return out


def _plain(value: Any) -> Any:
    """Config values as types `weights_only` loading accepts (tuples become lists, odd objects strings)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where directories cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
