"""Runs cut into slices of wall-clock time, for machines lent for minutes (and runtimes that get recycled).

A `full` run that takes longer than one loan of a machine runs as several *slices*: each slice trains until
its deadline, writes its checkpoint, and exits; the next slice, started with the same command, resumes from
that checkpoint. The slice runner (`scripts/campaign.py run`) sets the environment variables below; without
them every function here returns at once and does nothing, so a notebook run by hand is unaffected.

- `DL_SLICE_DEADLINE`: a Unix time in seconds by which the training loop must have stopped and checkpointed.
- `DL_SLICE_STEPS`: at most this many optimisation steps in one slice (a deterministic cut, for tests).
- `DL_SLICE_SIDE_RUNS`: at most this many side runs (`SideRuns`) in one slice (the same, for side runs).
- `DL_SLICE_TAIL_DEADLINE`: a Unix time by which the headline loop must have finished for the work after it (the
  tail: evaluation, sampling, side experiments) to fit in this slice. A loop that finishes later stops at its last
  step, checkpointed, and the next slice runs only the tail. Set for runs whose state can travel to another machine
  only once training is done (a finished checkpoint without the optimiser), so the tail may wait for the next loan.
- `DL_SLICE_MARKER`: the JSON file written when a slice stops part-way: `{"step", "of", "train_seconds",
  "loop_seconds", "device", "why"}`, which the runner reads to account for the slice. `train_seconds` is the
  clock's `train` span (the record's `train_seconds`: the headline model's steps); `loop_seconds` adds every span
  named `compile` or `*_train`, since a sliced loop may train several models in turn (the GAN trains its
  baseline before its headline, and a slice that stops inside the baseline has 0 s of `train`).

A notebook's headline training loop asks, at the end of every step (after its checkpointing decision is
made, before the checkpoint is written):

    stopping = step + 1 == cfg.stop_after_steps or slice_time_up(clock, step + 1, cfg.steps, start_step)

and then checkpoints and breaks exactly as for `stop_after_steps`. The runner inserts `exit_if_slice_over()`
between the notebook's cells, so once a slice has stopped nothing after the training cell runs.

Work after (or before) the headline loop, such as an ablation, a sweep or a side experiment, is made of *side
runs*: each trains or measures something on its own and ends in a result. `SideRuns` keeps every finished side
run's result in a folder beside the checkpoints, so that a slice that stops between two side runs loses none,
and the next slice skips those already done:

    side = SideRuns(TASK, PRESET, dataclasses.asdict(cfg), cfg.resume, clock, headline_steps=cfg.steps)
    for width in cfg.widths:
        if side.pending(f"width {width}"):  # not done in an earlier slice, and this slice has time for it
            side.save(f"width {width}", train_and_measure(width))
    exit_if_slice_over()  # the slice stopped before a side run: nothing below may use the missing results
    results = {width: side[f"width {width}"] for width in cfg.widths}

The margin before the deadline is three times the longest interval seen between two calls (one step, with the
evaluation or checkpoint that some steps carry, and on a GPU the queue of launched work behind the host, which
the loop drains whenever it reads its loss) plus `MARGIN_SECONDS` for writing the checkpoint and the rest of
the training cell.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = ["DEADLINE_ENV", "MARGIN_SECONDS", "MARKER_ENV", "SIDE_RUNS_ENV", "STEPS_ENV", "TAIL_DEADLINE_ENV",
           "SideRuns", "exit_if_slice_over", "slice_time_up", "training_span_seconds"]

DEADLINE_ENV = "DL_SLICE_DEADLINE"
STEPS_ENV = "DL_SLICE_STEPS"
SIDE_RUNS_ENV = "DL_SLICE_SIDE_RUNS"
TAIL_DEADLINE_ENV = "DL_SLICE_TAIL_DEADLINE"
MARKER_ENV = "DL_SLICE_MARKER"
MARGIN_SECONDS = 15.0  # the checkpoint write and the rest of the training cell, after the last step

_state: dict[str, Any] = {"first_done": None, "last_call": None, "longest": 0.0, "stopped": None}


def _reset() -> None:
    """Forget this process's slice (for tests)."""
    _state.update(first_done=None, last_call=None, longest=0.0, stopped=None)


def _env_float(name: str) -> float | None:
    value = os.environ.get(name, "").strip()
    return float(value) if value else None


def slice_time_up(clock: Any, done: int, total: int, start: int) -> bool:
    """True when this slice must stop after step `done` (of `total`): its step budget is spent, or its deadline
    is nearer than the margin. Never True without the slice runner's environment, nor at the last step (a run
    that can finish, finishes), unless the runner set a tail deadline and the loop finished after it: then the
    next slice runs what follows the loop. On True it writes the marker file and prints one line. `clock` is the
    loop's `RunClock` (its `train` seconds go into the marker; None is allowed); `start` is the step the loop
    started (or resumed) from: the first call in a process takes it as the slice's first step."""
    deadline, steps, tail_deadline = _env_float(DEADLINE_ENV), _env_float(STEPS_ENV), _env_float(TAIL_DEADLINE_ENV)
    if deadline is None and steps is None and tail_deadline is None:
        return False
    if _state["stopped"] is not None:  # this slice is over: any later loop stops at once, the marker stays
        return True
    now = time.time()
    if _state["first_done"] is None:
        _state["first_done"] = start  # the step this slice started from
    elif _state["last_call"] is not None:
        _state["longest"] = max(_state["longest"], now - _state["last_call"])
    _state["last_call"] = now
    if done >= total:
        if tail_deadline is not None and now >= tail_deadline:  # trained, but too late for the tail in this slice
            _stop(clock, done, total, "no time left for the tail")
            return True
        return False
    over_steps = steps is not None and done - _state["first_done"] >= steps
    over_time = deadline is not None and now + 3 * _state["longest"] + MARGIN_SECONDS >= deadline
    if not (over_steps or over_time):
        return False
    _stop(clock, done, total, "step budget" if over_steps else "deadline")
    return True


def training_span_seconds(seconds: Mapping[str, float]) -> float:
    """The seconds of the spans in which a sliced loop trains: `train`, `compile` and every `*_train` (a loop may
    train several models in turn). The marker's `loop_seconds`; scripts/campaign.py sums a record's timings alike."""
    return sum(float(v) for k, v in seconds.items() if k in ("train", "compile") or k.endswith("_train"))


def _stop(clock: Any, done: int, total: int, why: str, side_runs: int | None = None,
          device: torch.device | str | None = None) -> None:
    device = getattr(clock, "device", None) or device
    from common.device import synchronize  # late: keeps this module's import light
    synchronize(device)  # the running span's queued GPU work belongs to this slice's seconds and memory
    train = float(clock["train"]) if clock is not None else None
    loop = None
    if clock is not None:  # clock[name] includes a span still running, even one that has never stopped yet
        names = set(getattr(clock, "seconds", {})) | {"train", "compile"} | {getattr(clock, "current", None)} - {None}
        loop = training_span_seconds({n: clock[n] for n in names})
    name = None
    if device is not None:
        from common.device import describe_device  # late: keeps this module's import light
        name = describe_device(torch.device(device))
    _state["stopped"] = {"step": done, "of": total, "train_seconds": train, "loop_seconds": loop,
                        "device": name, "why": why}
    from common.precision import compile_report, precision_ran  # late: keeps this module's import light
    _state["stopped"].update(precision=precision_ran(), compile=compile_report())  # this process's: folded later
    peaks = clock.peak_memory_so_far() if hasattr(clock, "peak_memory_so_far") else {}
    if peaks:  # CUDA: this process's peaks, which the last slice's record cannot see (scripts/campaign.py folds them)
        from common.record import peak_memory_bytes  # late: common.record imports this module's package
        _state["stopped"].update(peak_memory=peaks, process_peak_bytes=peak_memory_bytes(torch.device(device)))
    if side_runs is not None:
        _state["stopped"]["side_runs"] = side_runs  # side runs finished in this slice
    marker = os.environ.get(MARKER_ENV)
    if marker:
        Path(marker).parent.mkdir(parents=True, exist_ok=True)
        Path(marker).write_text(json.dumps(_state["stopped"]) + "\n")
    where = f"step {done} of {total} with a checkpoint" if side_runs is None else \
        f"after {side_runs} side run(s) in this slice, their results kept"
    print(f"slice over ({why}): stopping at {where}")


def exit_if_slice_over() -> None:
    """Exit the process (status 0) if a slice stopped in this process: the slice runner puts this call between
    the notebook's cells, so that no cell after the stopped training loop runs on a half-trained model."""
    if _state["stopped"] is not None:
        s = _state["stopped"]
        side = f" and {s['side_runs']} side run(s)" if "side_runs" in s else ""
        print(f"stopped at step {s['step']} of {s['of']}{side}, resume with the same command")
        raise SystemExit(0)


class SideRuns:
    """Finished side runs of one run, kept in a folder so that a run cut into slices does each only once.

    The folder is `<checkpoint_dir>/<task>__<preset>__side_runs/`: one checkpoint file per side run (its result:
    numbers, lists, tensors, a model's state_dict) and `index.json` (the config, and each finished side run's file
    and seconds). A run with `resume=False` starts with an empty folder; one with `resume=True` keeps the results
    and refuses them if the config changed (as `load_checkpoint` does). Without the slice runner's environment
    `pending` is simply "not finished yet", so a notebook run by hand runs everything once.

    `clock` (the headline's `RunClock`; None for side runs before the headline loop), `headline_steps` (the headline's
    total) and `headline_done` (its steps done: 0 before the loop; default all of them) go into the marker file when
    a slice stops here. A notebook with side runs on both sides of its loop sets `headline_done` and `clock` once the
    loop has run (the ViT does).
    """

    def __init__(self, task: str, preset: str, config: Mapping[str, Any] | None, resume: bool, clock: Any = None,
                 headline_steps: int = 0, headline_done: int | None = None,
                 device: torch.device | str | None = None) -> None:
        from common.checkpoint import checkpoint_dir  # late: keeps this module's import light

        self.folder = checkpoint_dir() / f"{task.replace('/', '__')}__{preset}__side_runs"
        self.config, self.clock, self.headline_steps = config, clock, headline_steps
        self.headline_done = headline_steps if headline_done is None else headline_done
        device = device if device is not None else getattr(clock, "device", None)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.ran = 0  # side runs started in this process
        self._running: tuple[str, float] | None = None  # (key, perf_counter at its start)
        self._loaded: dict[str, Any] = {}  # results read back from their files: each file is read once
        if not resume and self.folder.exists():
            shutil.rmtree(self.folder)
        self.index = self._load_index()

    def _load_index(self) -> dict[str, Any]:
        from common.checkpoint import CheckpointError, _plain, config_differences

        path = self.folder / "index.json"
        if not path.is_file():
            return {"config": _plain(self.config) if self.config is not None else None, "runs": {}}
        index = json.loads(path.read_text())
        if self.config is not None and index.get("config") is not None:
            differing = config_differences(index["config"], self.config)
            if differing:
                raise CheckpointError(f"{self.folder}'s side runs come from another config ({'; '.join(differing)}): "
                                      f"set resume=False to start afresh")
        return index

    def _file(self, key: str) -> Path:
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", key).strip("_")[:60]
        return self.folder / f"{slug}-{hashlib.sha256(key.encode()).hexdigest()[:10]}.pt"

    def __contains__(self, key: str) -> bool:
        return key in self.index["runs"]

    def pending(self, key: str, expected_seconds: float | Callable[[], float] = 0.0) -> bool:
        """True when `key` still has to run here and now: it is not finished, and the slice has time for it (1.25
        times `expected_seconds`, the caller's estimate of this side run, or without one the longest side run so far,
        plus the margin, before the deadline; within `DL_SLICE_SIDE_RUNS`). On False for an unfinished side run the
        slice stops: the marker is written, and every later call says False too. Give `expected_seconds` where side
        runs differ in length (one trained for a given number of seconds, or one of a slower model): by the longest
        so far a long one would start too late, and after a long one every short one would wait for its room. A
        function in its place (a probe that costs time) is called only when the slice has a deadline."""
        if key in self:
            return False
        if _state["stopped"] is not None:
            return False
        deadline, budget = _env_float(DEADLINE_ENV), _env_float(SIDE_RUNS_ENV)
        longest = max((r["seconds"] for r in self.index["runs"].values()), default=0.0)
        why = "side-run budget" if budget is not None and self.ran >= budget else None
        if why is None and deadline is not None:
            expected = expected_seconds() if callable(expected_seconds) else expected_seconds
            if time.time() + 1.25 * (expected or longest) + MARGIN_SECONDS >= deadline:
                why = (f"deadline: this side run is expected to take {expected:.0f} s" if expected else
                       f"deadline: the longest side run so far took {longest:.0f} s")
        if why is None:
            from common.device import synchronize

            synchronize(self.device)
            self._running, self.ran = (key, time.perf_counter()), self.ran + 1
            return True
        _stop(self.clock, self.headline_done, self.headline_steps, why, side_runs=self.ran, device=self.device)
        return False

    def save(self, key: str, value: Any) -> None:
        """Keep the result of the side run `key` (the one `pending` just started), with its seconds."""
        from common.checkpoint import atomic_write, save_checkpoint
        from common.device import synchronize

        if self._running is None or self._running[0] != key:
            raise RuntimeError(f"save({key!r}) without pending({key!r}) just before it")
        synchronize(self.device)
        seconds = time.perf_counter() - self._running[1]
        path = save_checkpoint(self._file(key), {"key": key, "value": value}, config=self.config)
        self.index["runs"][key] = {"file": path.name, "seconds": round(seconds, 4)}
        with atomic_write(self.folder / "index.json") as f:
            f.write((json.dumps(self.index, indent=1) + "\n").encode())
        self._running = None

    def __getitem__(self, key: str) -> Any:
        """The result of a finished side run, its tensors on the run's device (read from its file once, then the
        same object: do not change it in place)."""
        from common.checkpoint import load_checkpoint

        if key not in self:
            raise KeyError(f"side run {key!r} has not finished (did the slice stop before it? call exit_if_slice_over())")
        if key not in self._loaded:
            self._loaded[key] = load_checkpoint(self.folder / self.index["runs"][key]["file"], map_location=self.device,
                                                config=self.config)["value"]
        return self._loaded[key]

    def seconds(self, prefix: str = "") -> float:
        """Seconds of the finished side runs whose key starts with `prefix`, summed over every slice."""
        return sum(r["seconds"] for k, r in self.index["runs"].items() if k.startswith(prefix))
