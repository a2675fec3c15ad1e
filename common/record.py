"""Run records: one JSON file per finished run, the only source of numbers in the README.

A record says what ran (task, preset, data), where (device, library versions), how long
training took on the wall clock, how much memory it used at peak, and the task's metrics.
Records go to `DL_RUNS_DIR` (default `runs/`, git-ignored); records worth publishing are
copied into `results/<task>/` and committed, and `scripts/update_readme.py` builds the
README's table from them.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Any, Mapping

import torch

from common.data import REPO_ROOT
from common.device import describe_device


def runs_dir() -> Path:
    """Where run records are written: `DL_RUNS_DIR`, else `runs/` at the repository root."""
    path = Path(os.environ.get("DL_RUNS_DIR") or REPO_ROOT / "runs").expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


class RunTimer:
    """Wall-clock seconds spent in the parts of a run you choose to time.

    `with timer: ...` adds the time spent inside to `timer.seconds`, so time spent
    outside (plotting, evaluation you exclude) is not counted. On CUDA it synchronises
    before reading the clock so asynchronous kernels are counted.
    """

    def __init__(self, device: torch.device | None = None) -> None:
        self.device = device
        self.seconds = 0.0
        self._start: float | None = None

    def _sync(self) -> None:
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __enter__(self) -> "RunTimer":
        self._sync()
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self._sync()
        assert self._start is not None
        self.seconds += time.perf_counter() - self._start
        self._start = None


def peak_memory_bytes(device: torch.device) -> int:
    """Peak memory: allocated GPU memory on CUDA, else the process's peak resident set size."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)  # Linux reports KiB, macOS bytes


def _clean(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        value = value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return value.item()
    return value


def write_run_record(task: str, preset: str, device: torch.device, train_seconds: float,
                     metrics: Mapping[str, Any], data: str, config: Mapping[str, Any] | None = None) -> Path:
    """Write the record of a finished run to `runs_dir()` and return its path.

    Args:
        task: the task's folder, e.g. 'image_generation/vae'.
        preset: 'smoke', 'quick' or 'full'.
        device: the training device.
        train_seconds: wall-clock seconds of training (see `RunTimer`).
        metrics: the task's metrics, by the names its README row and issue use.
        data: the data the numbers were measured on, e.g. `ImageData.describe()`.
        config: the run's configuration (e.g. `dataclasses.asdict(cfg)`).
    """
    now = dt.datetime.now(dt.timezone.utc)
    record = {
        "task": task,
        "preset": preset,
        "device": describe_device(device),
        "device_type": device.type,
        "data": data,
        "train_seconds": round(float(train_seconds), 2),
        "peak_memory_bytes": peak_memory_bytes(device),
        "metrics": _clean(dict(metrics)),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "cuda": torch.version.cuda if device.type == "cuda" else None},
        "cpu_count": os.cpu_count(),
        "finished_at": now.isoformat(timespec="seconds"),
        "config": _clean(dict(config or {})),
    }
    name = f"{task.replace('/', '__')}__{preset}__{now.strftime('%Y%m%dT%H%M%S%fZ')}.json"
    path = runs_dir() / name
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"Run record written: {path.name} (train {record['train_seconds']:.1f} s, "
          f"peak memory {record['peak_memory_bytes'] / 2**20:.0f} MiB)")
    return path
