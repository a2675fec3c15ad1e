"""Runs cut into slices of wall-clock time, for machines lent for minutes (and runtimes that get recycled).

A `full` run that takes longer than one loan of a machine runs as several *slices*: each slice trains until
its deadline, writes its checkpoint, and exits; the next slice, started with the same command, resumes from
that checkpoint. The slice runner (`scripts/campaign.py run`) sets the environment variables below; without
them every function here returns at once and does nothing, so a notebook run by hand is unaffected.

- `DL_SLICE_DEADLINE`: a Unix time in seconds by which the training loop must have stopped and checkpointed.
- `DL_SLICE_STEPS`: at most this many optimisation steps in one slice (a deterministic cut, for tests).
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

The margin before the deadline is three times the longest interval seen between two calls (one step, with the
evaluation or checkpoint that some steps carry, and on a GPU the queue of launched work behind the host, which
the loop drains whenever it reads its loss) plus `MARGIN_SECONDS` for writing the checkpoint and the rest of
the training cell.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = ["DEADLINE_ENV", "MARGIN_SECONDS", "MARKER_ENV", "STEPS_ENV", "exit_if_slice_over", "slice_time_up",
           "training_span_seconds"]

DEADLINE_ENV = "DL_SLICE_DEADLINE"
STEPS_ENV = "DL_SLICE_STEPS"
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
    that can finish, finishes). On True it writes the marker file and prints one line. `clock` is the loop's
    `RunClock` (its `train` seconds go into the marker; None is allowed); `start` is the step the loop started
    (or resumed) from: the first call in a process takes it as the slice's first step."""
    deadline, steps = _env_float(DEADLINE_ENV), _env_float(STEPS_ENV)
    if deadline is None and steps is None:
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


def _stop(clock: Any, done: int, total: int, why: str) -> None:
    device = getattr(clock, "device", None)
    train = float(clock["train"]) if clock is not None else None
    loop = None
    if clock is not None:  # clock[name] includes a span still running
        loop = training_span_seconds({n: clock[n] for n in set(getattr(clock, "seconds", {})) | {"train", "compile"}})
    name = None
    if device is not None:
        from common.device import describe_device  # late: keeps this module's import light
        name = describe_device(torch.device(device))
    _state["stopped"] = {"step": done, "of": total, "train_seconds": train, "loop_seconds": loop,
                        "device": name, "why": why}
    marker = os.environ.get(MARKER_ENV)
    if marker:
        Path(marker).parent.mkdir(parents=True, exist_ok=True)
        Path(marker).write_text(json.dumps(_state["stopped"]) + "\n")
    print(f"slice over ({why}): stopping at step {done} of {total} with a checkpoint")


def exit_if_slice_over() -> None:
    """Exit the process (status 0) if a slice stopped in this process: the slice runner puts this call between
    the notebook's cells, so that no cell after the stopped training loop runs on a half-trained model."""
    if _state["stopped"] is not None:
        s = _state["stopped"]
        print(f"stopped at step {s['step']} of {s['of']}, resume with the same command")
        raise SystemExit(0)
