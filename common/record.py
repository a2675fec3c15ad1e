"""Run records and the repository's one timing policy.

A record says what ran (task, preset, data, the code's version), where (device, CPU model, GPU
name, library versions), how long each part took on the wall clock, how much memory it used at
peak, and the task's metrics. Records go to `DL_RUNS_DIR` (default `runs/`, git-ignored); records
worth publishing are copied into `results/<task>/` and committed, and `scripts/update_readme.py`
builds the README's table from them.

The timing policy (`TIMING_POLICY`, stored in every record as `timing`):

- `train_seconds` is the wall clock of the optimisation steps only: forward, backward, optimiser
  step and on-device batching, summed over the "train" spans of a `RunClock`.
- Evaluation, sampling, plotting, checkpoint writes and side experiments run in other named spans
  (`eval`, `sample`, `checkpoint`, ...) and are recorded separately under `timings`: a checkpoint
  write inside the training loop is `with clock.span("checkpoint"): save_checkpoint(...)`.
- The first step of a `torch.compile`d model (which compiles it) is timed as `compile`.
- On CUDA and Apple MPS the clock synchronises only where a span starts or stops, never inside a span, so
  timing does not slow training down.
- `notebook_seconds` is the wall clock from the first `import common` to the record.

Memory: `peak_memory_bytes` is the whole notebook's peak (allocated GPU memory on CUDA, the process's
peak resident set size elsewhere; None where the platform cannot say: Windows has no `resource` module).
On CUDA the clock also measures each span's peak, allocated and reserved (`peak_memory_by_span`), and
`train_peak_memory` is that of the `train` and `compile` spans: the number a claim such as "the full
preset fits a 24 GB card" rests on (reserved is what the card must hold).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import math
import os
import platform
import subprocess
import sys
import time
import weakref
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch

from common.checkpoint import atomic_write
from common.paths import REPO_ROOT, runs_dir
from common.device import describe_device, synchronize
from common.fid_classifier import scored_classifiers
from common.precision import compile_report, gpu_rehearsal, precision_ran

TIMING_POLICY = "steps-only/v1"
TIMING_POLICY_TEXT = ("train_seconds = optimisation steps only (forward, backward, optimiser, on-device batching); "
                      "evaluation, sampling, plotting, checkpoints and side experiments timed separately; "
                      "torch.compile warm-up (the first compiled step) as compile; CUDA synchronised only at span edges")
_IMPORTED_AT = time.perf_counter()  # the notebook's first `import common`: the start of `notebook_seconds`


def notebook_seconds() -> float:
    """Wall-clock seconds since the notebook's first `import common` (the record's `timings.notebook`)."""
    return time.perf_counter() - _IMPORTED_AT


class RunClock:
    """Wall-clock seconds per named span (`train`, `compile`, `eval`, ...); at most one span runs at a time.

    In a training loop call `clock.start("train")` at the top of every step: it does nothing while
    `train` is already running, so consecutive steps form one span and the GPU is never synchronised
    between them. `with clock.span("eval"): ...` stops the running span (one synchronisation), times
    the block, and stops again; the next step's `clock.start("train")` opens a new train span.
    Checkpoint writes go in their own span: `with clock.span("checkpoint"): save_checkpoint(...)`.

    On CUDA each span also measures its peak GPU memory, allocated and reserved: the peak statistics are
    reset where the span starts and read where it stops (both at the synchronisation the clock makes
    anyway), and `peak_memory[name]` keeps the maximum over all spans of that name. So the training peak
    is measured apart from evaluation and sampling. Elsewhere this costs nothing and `peak_memory` stays
    empty.
    """

    def __init__(self, device: torch.device | None = None) -> None:
        self.device = device
        self.seconds: dict[str, float] = {}
        self.current: str | None = None
        self._start = 0.0
        self.peak_memory: dict[str, dict[str, int]] = {}  # span -> {"allocated_bytes": .., "reserved_bytes": ..}
        self._span_peak = (0, 0)  # (allocated, reserved) peak of the running span before a reset by another clock

    @property
    def _cuda(self) -> bool:
        return self.device is not None and torch.device(self.device).type == "cuda"

    def _sync(self) -> None:
        """Wait for the device's queued work (CUDA and MPS run asynchronously), so that a span times the work."""
        synchronize(self.device)

    def start(self, name: str) -> None:
        """Make `name` the running span (a no-op if it already is; otherwise stops the running one first)."""
        if self.current == name:
            return
        self.stop()
        self._sync()
        if self._cuda:
            _reset_peak_memory(self.device)
            _RUNNING.add(self)
        self.current, self._start, self._span_peak = name, time.perf_counter(), (0, 0)

    def stop(self) -> None:
        """Stop the running span, if any, adding its time to `seconds` (and on CUDA its peak to `peak_memory`)."""
        if self.current is None:
            return
        self._sync()
        self.seconds[self.current] = self.seconds.get(self.current, 0.0) + time.perf_counter() - self._start
        if self._cuda:
            self.peak_memory[self.current] = max_peak(self.peak_memory.get(self.current), self._running_peak())
            _RUNNING.discard(self)
        self.current = None

    @contextlib.contextmanager
    def span(self, name: str) -> Iterator["RunClock"]:
        """Time the block as `name`; whatever span was running is stopped first and stays stopped."""
        self.start(name)
        try:
            yield self
        finally:
            self.stop()

    def add(self, name: str, seconds: float) -> None:
        """Add `seconds` measured elsewhere to the span `name`: the time of a side run that an earlier slice of the
        run finished and this one keeps (`SideRuns`), so the record counts it once, as if the run had not stopped."""
        if seconds < 0:
            raise ValueError(f"{name}: {seconds} s: a span cannot lose time")
        self.seconds[name] = self.seconds.get(name, 0.0) + float(seconds)

    def __getitem__(self, name: str) -> float:
        """Seconds spent in `name` so far (0.0 if never started), including a span still running."""
        running = time.perf_counter() - self._start if self.current == name else 0.0
        return self.seconds.get(name, 0.0) + running

    def state_dict(self) -> dict[str, float]:
        """The finished spans' seconds, to store in a checkpoint so a resumed run keeps its earlier time."""
        return dict(self.seconds)

    def load_state_dict(self, state: Mapping[str, float]) -> None:
        self.seconds = {str(k): float(v) for k, v in state.items()}

    def peak_memory_so_far(self) -> dict[str, dict[str, int]]:
        """`peak_memory` with the running span's peak so far folded in, without stopping it (read it after a
        synchronisation): what a slice that stops mid-span hands to the next, whose process starts from zero."""
        peaks = {name: dict(peak) for name, peak in self.peak_memory.items()}
        if self._cuda and self.current is not None:
            peaks[self.current] = max_peak(peaks.get(self.current), self._running_peak())
        return peaks

    def _running_peak(self) -> dict[str, int]:
        """The running span's peak so far (CUDA), its part from before another clock's reset included."""
        return dict(zip(PEAK_KEYS, _fold(self._span_peak, _peak_since_reset(self.device))))

    def train_peak_memory(self) -> dict[str, int] | None:
        """The peak GPU memory of training, {"allocated_bytes", "reserved_bytes"}: the maximum over the `train`
        and `compile` spans (the compiling first step is a training step). None if not measured (not CUDA)."""
        return train_peak(self.peak_memory)


TRAIN_SPANS = ("train", "compile")  # the spans whose memory peak is the training peak
PEAK_KEYS = ("allocated_bytes", "reserved_bytes")  # a span's peak GPU memory, in bytes


def max_peak(a: Mapping[str, int] | None, b: Mapping[str, int]) -> dict[str, int]:
    """The larger of two peaks, {"allocated_bytes", "reserved_bytes"}, key by key; `a` None: no peak yet."""
    return {key: max(int(a[key]) if a else 0, int(b[key])) for key in PEAK_KEYS}


def train_peak(by_span: Mapping[str, Mapping[str, int]]) -> dict[str, int] | None:
    """The training peak among per-span peaks: the maximum over the `train` and `compile` spans (the compiling first
    step is a training step); None if neither has one."""
    spans = [by_span[name] for name in TRAIN_SPANS if name in by_span]
    return {key: max(int(s[key]) for s in spans) for key in PEAK_KEYS} if spans else None
_RUNNING: "weakref.WeakSet[RunClock]" = weakref.WeakSet()  # clocks with a span running on CUDA
_PROCESS_PEAK: dict[str, tuple[int, int]] = {}  # device -> (allocated, reserved) peaks before the latest reset


def _fold(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
    return max(a[0], b[0]), max(a[1], b[1])


def _cuda_key(device: torch.device | str) -> str:
    """One name per GPU: "cuda" (the current device) and "cuda:0" are the same card when 0 is current, and a tensor's
    `.device` always carries the index while `get_device()` may not."""
    device = torch.device(device)
    if device.index is not None:
        return f"cuda:{device.index}"
    return f"cuda:{torch.cuda.current_device() if torch.cuda.is_initialized() else 0}"  # before CUDA starts: GPU 0


def _peak_since_reset(device: torch.device) -> tuple[int, int]:
    return int(torch.cuda.max_memory_allocated(device)), int(torch.cuda.max_memory_reserved(device))


def _reset_peak_memory(device: torch.device) -> None:
    """Reset CUDA's peak memory statistics, first handing the peak so far to every span that is running on
    `device` (several clocks may be) and to the process-wide peak, so that no measurement loses its part."""
    peak, key = _peak_since_reset(device), _cuda_key(device)
    for clock in list(_RUNNING):
        if clock.current is not None and _cuda_key(clock.device) == key:
            clock._span_peak = _fold(clock._span_peak, peak)
    _PROCESS_PEAK[key] = _fold(_PROCESS_PEAK.get(key, (0, 0)), peak)
    torch.cuda.reset_peak_memory_stats(device)


def peak_memory_bytes(device: torch.device) -> int | None:
    """Peak memory of the whole process so far: allocated GPU memory on CUDA (across the clocks' resets of
    the peak statistics), else the process's peak resident set size; None (unknown) where the platform has no
    `resource` module (Windows)."""
    if device.type == "cuda":
        before = _PROCESS_PEAK.get(_cuda_key(device), (0, 0))
        return _fold(before, _peak_since_reset(device))[0]
    try:
        import resource  # POSIX only: imported here so that `import common` works on Windows
    except ImportError:
        return None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)  # Linux reports KiB, macOS bytes


def cpu_model() -> str:
    """The CPU's model name, e.g. 'AMD EPYC 7B13', or the platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# Environment variables that cap the instruction set of PyTorch's, MKL's or oneDNN's kernels below what the CPU has
KERNEL_ENV_VARS = ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")


def cpu_kernels() -> dict[str, Any]:
    """What decides the CPU's floating-point results besides the code: the instruction set PyTorch's kernels use
    (`AVX2`, `AVX512`, ...; MKL and oneDNN pick their kernels by it, and two kinds give other roundings), the
    CPU's family, model and stepping from /proc/cpuinfo (a virtual machine may hide the model's name, not these),
    and, under `env`, those of `KERNEL_ENV_VARS` that are set (a run that capped its kernels says so).
    Two CPU runs of the same code and seed agree to the last digit only where these agree."""
    ids: dict[str, Any] = {"capability": torch.backends.cpu.get_cpu_capability()}
    overrides = {name: os.environ[name] for name in KERNEL_ENV_VARS if name in os.environ}
    if overrides:
        ids["env"] = overrides
    try:
        first_block = Path("/proc/cpuinfo").read_text().split("\n\n", 1)[0]  # the first processor's lines
        for line in first_block.splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("cpu family", "model", "stepping"):
                ids[key.strip().replace(" ", "_")] = value.strip()
    except OSError:
        pass
    return ids


def code_version(task: str) -> dict[str, Any]:
    """What code ran: the git commit and whether the tree was dirty (when in a git checkout), and the
    SHA-256 of the task notebook's code cells (outputs excluded, so it identifies the code that ran).

    `DL_GIT_COMMIT`, when set, names the commit instead: a copy of the tree sent to another machine (the GPU check)
    may carry a stale or no `.git`, so the sender names what it sent, and `DL_GIT_DIRTY` ("true" or "false") whether
    its tracked files differed from that commit (scripts/loan.sh sets both). Without `DL_GIT_DIRTY` the dirtiness is
    unknown (None), unless this checkout's own git is at that very commit, which then tells it (a local run that set
    the variable)."""
    named = os.environ.get("DL_GIT_COMMIT") or None
    sent_dirty = {"true": True, "false": False}.get(os.environ.get("DL_GIT_DIRTY", "").strip().lower())
    info: dict[str, Any] = {"git_commit": named, "git_dirty": sent_dirty if named else None,
                            "notebook_code_sha256": None}
    try:
        def git(*args: str) -> str:
            return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10,
                                  check=True).stdout.strip()
        head = git("rev-parse", "HEAD")
        if named in (None, head):
            info["git_commit"] = head
            info["git_dirty"] = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        pass
    notebooks = sorted((REPO_ROOT / task).glob("*.ipynb"))
    if len(notebooks) == 1:
        info["notebook_code_sha256"] = notebook_code_sha256(notebooks[0])
    return info


def notebook_code(notebook_json: str) -> str:
    """A notebook's code cells (from the text of its .ipynb file) joined by blank lines: outputs and markdown left out."""
    cells = json.loads(notebook_json).get("cells", [])
    return "\n\n".join("".join(c["source"]) if isinstance(c["source"], list) else c["source"]
                       for c in cells if c.get("cell_type") == "code")


def notebook_code_sha256(path: Path) -> str:
    """The SHA-256 of `notebook_code` of the notebook at `path`: what the run record names as `notebook_code_sha256`,
    and what scripts/campaign.py and scripts/code_aliases.py compare against it."""
    return hashlib.sha256(notebook_code(path.read_text()).encode()).hexdigest()


def device_slug(device: torch.device) -> str:
    """A file-name-safe device name: 'cpu', 'nvidia-geforce-rtx-4090', 'nvidia-h100-80gb-hbm3'."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-").replace("--", "-")


def _clean(value: Any) -> Any:
    """`value` as JSON can hold it: tensors and numpy arrays as numbers or lists, numpy scalars as Python numbers,
    a NaN or infinity (which JSON has no spelling for) as the string "nan", "inf" or "-inf"."""
    if isinstance(value, (torch.Tensor, np.ndarray)):
        size = value.numel() if isinstance(value, torch.Tensor) else value.size
        value = value.item() if size == 1 else value.tolist()
    elif isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def _peak_text(peak: int | None) -> str:
    return "peak memory unknown" if peak is None else f"peak memory {peak / 2**20:.0f} MiB"


def _train_peak_text(record: Mapping[str, Any]) -> str:
    peak = record.get("train_peak_memory")
    if not peak:
        return ""
    return (f"; training peak {peak['allocated_bytes'] / 2**20:.0f} MiB allocated, "
            f"{peak['reserved_bytes'] / 2**20:.0f} MiB reserved")


def write_run_record(task: str, preset: str, device: torch.device, clock: RunClock,
                     metrics: Mapping[str, Any], data: str, config: Mapping[str, Any] | None = None,
                     precision: str | None = None) -> Path:
    """Write the record of a finished run to `runs_dir()` and return its path.

    Args:
        task: the task's folder, e.g. 'image_generation/vae'.
        preset: 'smoke', 'quick' or 'full'.
        device: the training device.
        clock: the run's `RunClock`; its `train` span becomes `train_seconds`, every span goes to `timings`.
        metrics: the task's metrics, by the names its README row and issue use.
        data: the data the numbers were measured on, e.g. `ImageData.describe()`.
        config: the run's configuration (e.g. `dataclasses.asdict(cfg)`).
        precision: what the training's forward passes ran in, where they ran in other processes (the ranks of a
            `torchrun` launch): their `common.precision_ran()`. Default: this process's own.
    """
    clock.stop()
    now = dt.datetime.now(dt.timezone.utc)
    timings = {name: round(seconds, 2) for name, seconds in sorted(clock.seconds.items())}
    timings["notebook"] = round(notebook_seconds(), 2)
    record = {
        "task": task,
        "preset": preset,
        "device": describe_device(device),
        "device_type": device.type,
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "cpu": cpu_model(),
        "cpu_kernels": cpu_kernels(),  # two CPU runs agree to the last digit only where these agree
        "data": data,
        # what the forward passes ran in: the dtype common.autocast ran in (bf16, fp16 with loss scaling), else fp32
        "precision": precision if precision is not None else precision_ran(),
        "compile": compile_report(),  # compiled, or fell back to eager (and why), per maybe_compile'd model
        **({"gpu_rehearsal": True} if gpu_rehearsal(device) is not None else {}),  # no measurement
        "timing": TIMING_POLICY,
        "timing_policy": TIMING_POLICY_TEXT,
        "train_seconds": round(clock["train"], 2),
        "timings": timings,
        "peak_memory_bytes": peak_memory_bytes(device),  # the whole notebook's peak (allocated on CUDA); None: unknown
        # CUDA only (None elsewhere): the training peak, and every span's, allocated and reserved, in bytes
        "train_peak_memory": clock.train_peak_memory(),
        "peak_memory_by_span": dict(sorted(clock.peak_memory.items())) if device.type == "cuda" else None,
        "metrics": _clean(dict(metrics)),
        "code": code_version(task),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "cuda": torch.version.cuda if device.type == "cuda" else None},
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "finished_at": now.isoformat(timespec="seconds"),
        "config": _clean(dict(config or {})),
    }
    scored = scored_classifiers()  # the FID classifier files that scored samples in this process
    if scored:  # the yardstick of every fid number in the record: one SHA-256, or {file: SHA-256} if several
        record["fid_classifier_sha256"] = next(iter(scored.values())) if len(scored) == 1 else scored
    name = f"{task.replace('/', '__')}__{preset}__{device_slug(device)}__{now.strftime('%Y%m%dT%H%M%S%fZ')}.json"
    path = runs_dir() / name
    with atomic_write(path) as f:  # a run killed while writing leaves no half record in runs/
        f.write((json.dumps(record, indent=2) + "\n").encode())
    others = ", ".join(f"{k} {v:.1f} s" for k, v in timings.items() if k != "train")
    print(f"Run record written: {path.name} (train {record['train_seconds']:.1f} s; {others}; "
          f"{_peak_text(record['peak_memory_bytes'])}{_train_peak_text(record)})")
    return path
