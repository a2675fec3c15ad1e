"""`full` runs in slices, and the campaign that spends a short GPU loan on them.

    python scripts/campaign.py run image_generation/ddpm --seconds 540 --state STATE/image_generation__ddpm --data-dir DATA
    python scripts/campaign.py next --budget 780 --root STATE --data-dir DATA
    python scripts/campaign.py list

`run` trains one task's preset (default `full`) for at most `--seconds` of wall clock. Its training loop stops
at a step boundary early enough to write its checkpoint (see common/slicing.py), everything a resume needs
goes into the state folder (`checkpoints/`: weights, optimiser, schedule, EMA, data order, random streams, the
run's clock; `state.json`: the slices so far), it prints "stopped at step k of K, resume with the same command"
and exits 0. The same command with the same state folder resumes. The slice in which the run finishes also
evaluates, and its run record gets the list of slices (device, steps, train seconds, wall seconds) and is
copied into `results/<task>/`. `train_seconds` stays what the notebook's clock measured: the sum of the
slices' optimisation steps, since the clock travels in the checkpoint.

A slice that may finish the training (judged from the earlier slices' pace, or for the first slice from the
campaign's estimate) must leave time for what runs after the training loop (evaluation, sampling): `--tail`
seconds (default: the task's `tail_minutes` in scripts/campaign.toml) are kept free; the training stops that
early, and if it did not finish, the next slice finishes it. A tail that would leave the training less than
MIN_LOOP_SECONDS of the slice (one longer than the slice, as the ViT's and SimCLR's 9 minutes against a 535-s slice)
is not kept free: the training runs to the slice's end, since a deadline before the start-up ended would stop every
such slice after one step. A slice that cannot finish trains until just before
its end. Side runs (ablations, sweeps, side experiments: `common.slicing.SideRuns`) stop at the same deadline,
between two side runs; the finished ones are kept in the state folder and the next slice runs the rest, so the
tail need only hold what is not a side run (evaluation, sampling, the record). If a slice is killed at `--seconds` anyway, the next one resumes from the run's last periodic
checkpoint, and the steps it had checkpointed count in the next slice's accounting. Like
scripts/gpu_check.py it needs no Jupyter: the notebook's code cells run as one Python script, with
`common.slicing.exit_if_slice_over()` between cells.

`next` spends a budget of `--budget` seconds: it first resumes any unfinished run under `--root`, then starts
the cheapest task (by scripts/campaign.toml's estimate) that has no `full` record made on a GPU for its current
notebook code (tasks with no `full` record at all first, then those whose only `full` record ran on a CPU), and
never starts a task whose shortest useful slice (`min_slice_minutes`) does not fit in what is left.
`list` prints the campaign file with each task's state. `need TASK --root STATE` prints the seconds one command
must hold for that task's next slice (a diffusion run's tail, or the whole of a run that cannot travel): loan.sh
skips a named task that would not fit, rather than see it killed at the command's limit with its record.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # `common`, also where the repo is not pip-installed
import code_aliases  # noqa: E402  (record codes that differ from the code now only in comments)
import gpu_check  # noqa: E402  (notebook discovery and the notebook-to-script conversion)

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

REPO_ROOT = gpu_check.REPO_ROOT
CAMPAIGN = Path(__file__).resolve().parent / "campaign.toml"
BETWEEN_CELLS = "import common.slicing as _slicing; _slicing.exit_if_slice_over()"
RESUME_FALSE, RESUME_TRUE = "resume: bool = False", "resume: bool = True"
END_MARGIN = 20  # seconds kept after the training loop's deadline: the rest of its cell and the process's exit
MIN_LOOP_SECONDS = 120  # the least a slice that keeps its tail free must leave the loop: start-up and some training


def campaign(path: Path = CAMPAIGN) -> dict[str, dict[str, Any]]:
    """Task folder -> its entry in the campaign file."""
    return tomllib.loads(path.read_text())["task"]


def notebook_code_sha256(path: Path) -> str:
    """The SHA-256 of a notebook's code cells, as its run record names it (common.record; imported here, late, so
    that `--help` needs no torch)."""
    from common.record import notebook_code_sha256 as code_sha256

    return code_sha256(path)


def slice_script(path: Path, resume: bool) -> str:
    """The notebook as a script that exits after the cell in which a slice stopped; `resume` edits the Config."""
    script = gpu_check.notebook_to_script(path, between=BETWEEN_CELLS)
    if script.count(RESUME_FALSE) != 1:
        raise SystemExit(f"{path}: the Config needs exactly one `{RESUME_FALSE}` field to resume slices")
    return script.replace(RESUME_FALSE, RESUME_TRUE) if resume else script


def may_finish(slices: list[dict[str, Any]], seconds: float, entry: dict[str, Any]) -> bool:
    """Whether the run might finish its training in a slice of `seconds`: from the earlier slices' pace (steps per
    train second, and the start-up each slice costs), else from the campaign's estimate (a task without an entry,
    such as the template, counts as one that may finish). Only a slice that may finish keeps the tail free: the
    others train until just before their end, since their tail would go unused."""
    done = timed_slices(slices)
    if not done:
        return 60 * entry.get("estimate_minutes", 0) <= seconds
    pace = sum(s["to_step"] - s["from_step"] for s in done) / sum(loop_seconds(s) for s in done)
    remaining = (done[-1]["of_steps"] - done[-1]["to_step"]) / max(pace, 1e-9)
    return remaining + start_up_seconds(done) + END_MARGIN < seconds


def timed_slices(slices: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The earlier slices whose sliced loop trained: a pace and a start-up can be read from them."""
    return [s for s in slices if s.get("to_step") is not None and loop_seconds(s) > 0]


def start_up_seconds(done: list[dict[str, Any]]) -> float:
    """The longest start-up (wall clock outside the sliced loop) of the timed slices `done`; 0 without any."""
    return max((s["wall_seconds"] - loop_seconds(s) for s in done), default=0.0)


def loop_reserve(slices: list[dict[str, Any]], seconds: float, entry: dict[str, Any],
                 tail: float) -> tuple[float, str | None]:
    """Seconds the training loop leaves free at the slice's end: END_MARGIN, plus `tail` in a slice that may finish
    the training (may_finish). A tail that would leave the loop less than MIN_LOOP_SECONDS of the slice, or less than
    the earlier slices' longest start-up plus a minute, is not kept free: the loop's deadline would fall before the
    slice's start-up ended, so every such slice would stop after one step and the run would never finish. Then the
    loop trains to the slice's end, and the second value says so."""
    if tail <= 0 or not may_finish(slices, seconds, entry):
        return END_MARGIN, None
    least = max(MIN_LOOP_SECONDS, start_up_seconds(timed_slices(slices)) + 60)
    if seconds - END_MARGIN - tail < least:
        return END_MARGIN, (f"its tail ({tail:.0f} s, tail_minutes) leaves the training less than {least:.0f} s "
                            f"of this {seconds:.0f}-s slice: the training runs to the slice's end instead, and what "
                            f"follows it runs as far as the slice goes (side runs stop at its end)")
    return END_MARGIN + tail, None


def made_progress(entry: dict[str, Any]) -> bool:
    """Whether a slice that stopped did something: trained a step or finished a side run. One that did neither
    stopped at a step or side run that needs more than its slice holds, and every slice as long will do the same."""
    return entry.get("to_step") != entry.get("from_step") or bool(entry.get("side_runs"))


def loop_seconds(entry: dict[str, Any]) -> float:
    """A slice's seconds in its sliced loop's training spans (every model it trains; see common/slicing.py), or
    its `train_seconds` for a slice recorded before `loop_seconds` existed."""
    value = entry.get("loop_seconds")
    return float(entry["train_seconds"] if value is None else value)


def folder_mib(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def state_folder(root: Path, task: str) -> Path:
    """The folder under `root` that holds `task`'s run state (image_generation/ddpm -> image_generation__ddpm; with
    DL_SEED=2, image_generation__ddpm__seed_2, as scripts/loan.sh names it)."""
    seed = env_seed()
    return root / (task.replace("/", "__") + (f"__seed_{seed}" if seed is not None else ""))


def run_state(state_dir: Path) -> dict[str, Any] | None:
    """The run state saved in `state_dir` (its state.json), or None where no run has started there."""
    path = state_dir / "state.json"
    return json.loads(path.read_text()) if path.is_file() else None


def save_state(state_dir: Path, state: dict[str, Any]) -> None:
    """Write `state` as `state_dir`'s state.json (what `run_state` reads back)."""
    (state_dir / "state.json").write_text(json.dumps(state, indent=1) + "\n")


def env_seed() -> int | None:
    """The seed `DL_SEED` asks for (the notebooks read it through common.seed_from_env), or None: the notebook's own."""
    value = os.environ.get("DL_SEED", "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise SystemExit(f"DL_SEED={value!r} is not an integer seed") from None


def record_target(task: str, name: str) -> Path:
    """Where a finished run's record is committed: results/<task>/, or results/<task>/seed_<N>/ for another seed
    (DL_SEED), beside the headline run's rather than in its place (the README and `next` read the task's folder)."""
    seed = env_seed()
    return REPO_ROOT / "results" / task / (f"seed_{seed}" if seed is not None else "") / name


def load_state(state_dir: Path, task: str, preset: str, code: str) -> dict[str, Any]:
    """The run's state in `state_dir`, or a new one. A state of another task, preset or seed (`DL_SEED`) is refused,
    as is one whose notebook code has changed since its first slice."""
    state, seed = run_state(state_dir), env_seed()
    if state is None:
        return {"task": task, "preset": preset, "seed": seed, "notebook_code_sha256": code, "slices": [],
                "finished": False}
    if (state["task"], state["preset"]) != (task, preset):
        raise SystemExit(f"{state_dir} holds a {state['preset']} run of {state['task']}, not {preset} of {task}")
    if state.get("seed") != seed:
        held = "default" if state.get("seed") is None else state["seed"]
        raise SystemExit(f"{state_dir} holds a run of seed {held}, and DL_SEED asks for "
                         f"{'the default' if seed is None else seed}: give each seed a state folder of its own")
    if state["notebook_code_sha256"] != code:
        raise SystemExit(f"{task}'s notebook code changed since this run's first slice: its checkpoint is of other "
                         f"code; start again in an empty state folder")
    return state


def slice_seconds(total: float, done: float) -> float:
    """A slice's share of a run's seconds: the run's `total` after the slice minus what the earlier slices had
    (`done`), to 0.1 ms. Earlier slices' shares are rounded, and a finished record's total to 0.01 s, so a slice that
    trained nothing can come out a few ms below zero: that reads 0.0. A share below -0.01 s is no rounding and is
    kept, so that the odd number shows."""
    share = round(total - done, 4)
    return 0.0 if -0.01 <= share <= 0.0 else share


def run_slice(task: str, seconds: float, state_dir: Path, data_dir: Path, preset: str = "full",
              device: str = "cuda", tail: float | None = None, slice_steps: int = 0, save: bool = True,
              slice_side_runs: int = 0, started: float | None = None) -> int:
    """One slice of `task`'s `preset` run; returns 0 when it stopped or finished cleanly, 1 otherwise. Its
    `seconds` count from `started` (default: now), the command's start: a cold first `import torch` on a fresh
    machine takes seconds that a loan's budget counts."""
    start = time.time() if started is None else started
    from common.slicing import training_span_seconds  # late, as notebook_code_sha256: `--help` needs no torch

    path = gpu_check.notebooks()[task]
    code = notebook_code_sha256(path)
    state_dir.mkdir(parents=True, exist_ok=True)
    state = load_state(state_dir, task, preset, code)
    if state["finished"]:
        print(f"{task}: finished already ({len(state['slices'])} slices); record {state.get('record')}")
        return 0
    entry = campaign().get(task, {})
    tail = 60 * entry.get("tail_minutes", 0) if tail is None else tail
    reserve, why = loop_reserve(state["slices"], seconds, entry, tail)
    if why:
        print(f"{task}: {why}")
    if run_state(state_dir) is None:  # before the first slice runs: a slice killed at its limit leaves a state that
        save_state(state_dir, state)  # travels and resumes
    checkpointed = any((state_dir / "checkpoints").glob("*"))  # a killed slice's periodic checkpoints count too
    script = state_dir / "notebook.py"
    script.write_text(slice_script(path, resume=bool(state["slices"]) or checkpointed))
    marker, runs = state_dir / "marker.json", state_dir / "runs"
    marker.unlink(missing_ok=True)
    runs.mkdir(exist_ok=True)
    before = {p.name for p in runs.glob("*.json")}
    env = {**os.environ, "DL_PRESET": preset, "DL_DATA_DIR": str(data_dir), "DL_DEVICE": device,
           "MPLBACKEND": "Agg", "PYTHONUNBUFFERED": "1", "DL_CHECKPOINT_DIR": str(state_dir / "checkpoints"),
           "DL_RUNS_DIR": str(runs), "DL_SLICE_MARKER": str(marker), "DL_SLICE_DEADLINE": str(start + seconds - reserve),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    if entry.get("travels_after_training") and tail > 0:  # training that ends too late leaves the tail to the next slice
        env["DL_SLICE_TAIL_DEADLINE"] = str(start + seconds - END_MARGIN - tail)
    if slice_steps:
        env["DL_SLICE_STEPS"] = str(slice_steps)
    if slice_side_runs:
        env["DL_SLICE_SIDE_RUNS"] = str(slice_side_runs)
    log = state_dir / f"slice_{len(state['slices']) + 1}.log"
    with open(log, "w") as f:
        try:
            rc = subprocess.run([sys.executable, str(script)], cwd=state_dir, env=env, stdout=f,
                                stderr=subprocess.STDOUT, timeout=max(1.0, start + seconds - time.time())).returncode
        except subprocess.TimeoutExpired:
            rc = None
    wall = time.time() - start
    done_train = sum(s["train_seconds"] for s in state["slices"])
    done_loop = sum(loop_seconds(s) for s in state["slices"])
    from_step = state["slices"][-1]["to_step"] if state["slices"] else 0
    entry: dict[str, Any] = {"from_step": from_step, "wall_seconds": round(wall, 2),
                             "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    if rc is None or rc != 0:
        print(f"{task}: the slice {'ran past its ' + str(seconds) + ' s' if rc is None else 'failed (exit ' + str(rc) + ')'}; "
              f"log {log}:\n  " + "\n  ".join(log.read_text().splitlines()[-15:]))
        return 1
    if marker.is_file():
        stop = json.loads(marker.read_text())
        train = stop["train_seconds"]  # None: the slice stopped before the headline loop's clock existed
        entry.update(device=stop["device"], to_step=stop["step"], of_steps=stop["of"],
                     train_seconds=slice_seconds(train, done_train) if train is not None else 0.0)
        if stop.get("loop_seconds") is not None:
            entry["loop_seconds"] = slice_seconds(stop["loop_seconds"], done_loop)
        if "side_runs" in stop:
            entry["side_runs"] = stop["side_runs"]  # side runs finished in this slice (it stopped before the next)
        entry.update({key: stop[key] for key in ("peak_memory", "process_peak_bytes", "precision", "compile")
                      if key in stop})
        state["slices"].append(entry)
        save_state(state_dir, state)
        if not made_progress(entry):
            print(f"{task}: warning: this slice trained no step and finished no side run: what comes next needs more "
                  f"than a slice of {seconds:.0f} s holds (its log says what stopped it: {log})")
        side = f" and {stop['side_runs']} side run(s)" if "side_runs" in stop else ""
        print(f"{task}: stopped at step {stop['step']} of {stop['of']}{side}, resume with the same command "
              f"(slice {len(state['slices'])}: {wall:.0f} s wall, {loop_seconds(entry):.1f} s of steps on "
              f"{stop['device']}; state folder {folder_mib(state_dir):.1f} MiB)")
        return 0
    new = sorted(p for p in runs.glob("*.json") if p.name not in before)
    if not new:
        print(f"{task}: the notebook ended without a stop and without a run record; log {log}")
        return 1
    record = json.loads(new[-1].read_text())
    if record.get("gpu_rehearsal"):  # DL_REHEARSE_GPU was set: a rehearsal on a CPU, never a record to keep
        print(f"{task}: the record is a CPU rehearsal of the GPU path (DL_REHEARSE_GPU): no record saved")
        return 1
    seed, ran = env_seed(), record.get("config", {}).get("seed")
    if seed is not None and ran != seed:  # a notebook that does not read DL_SEED
        print(f"{task}: DL_SEED={seed}, but the record's config has seed {ran}: "
              f"this notebook does not read DL_SEED (common.seed_from_env); no record saved")
        return 1
    of_steps = state["slices"][-1]["of_steps"] if state["slices"] else None
    entry.update(device=record["device"], to_step=of_steps, of_steps=of_steps,
                 train_seconds=slice_seconds(record["train_seconds"], done_train),
                 loop_seconds=slice_seconds(training_span_seconds(record.get("timings", {})), done_loop))
    if record.get("peak_memory_by_span") is not None:  # CUDA: this last slice's own peaks, before they are folded
        entry.update(peak_memory=record["peak_memory_by_span"], process_peak_bytes=record.get("peak_memory_bytes"))
    entry.update(precision=record.get("precision"), compile=record.get("compile"))  # this last slice's own
    state["slices"].append(entry)
    record["slices"] = state["slices"]
    fold_slice_memory(record, state["slices"])
    fold_slice_precision(record, state["slices"])
    new[-1].write_text(json.dumps(record, indent=2) + "\n")
    state.update(finished=True, record=new[-1].name)
    if save:
        target = record_target(task, new[-1].name)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(new[-1], target)
        state["record"] = str(target.relative_to(REPO_ROOT))
    save_state(state_dir, state)
    devices = sorted({s["device"] for s in state["slices"]})
    print(f"{task}: finished in {len(state['slices'])} slice(s) on {', '.join(devices)}: {record['train_seconds']:.1f} s "
          f"of steps; record {state['record']}")
    return 0


def fold_slice_memory(record: dict[str, Any], slices: list[dict[str, Any]]) -> None:
    """A run in slices ran in one process a slice, and each measured its own CUDA memory peaks; the record, written
    by the last, saw only its own. Here it gets the maximum over all slices (each slice keeps its own in the list):
    per span (`peak_memory_by_span`), for training (`train_peak_memory`: the train and compile spans, as
    `RunClock.train_peak_memory` reads them) and for the whole run (`peak_memory_bytes`). Nothing off CUDA."""
    peaks = [s["peak_memory"] for s in slices if s.get("peak_memory")]
    if record.get("peak_memory_by_span") is None or not peaks:
        return
    from common.record import max_peak, train_peak  # late: `list` and `need` run without torch

    by_span: dict[str, dict[str, int]] = {}
    for slice_peaks in peaks:
        for span, peak in slice_peaks.items():
            by_span[span] = max_peak(by_span.get(span), peak)
    record["peak_memory_by_span"] = dict(sorted(by_span.items()))
    record["train_peak_memory"] = train_peak(by_span)
    process = [s["process_peak_bytes"] for s in slices if s.get("process_peak_bytes") is not None]
    if process:
        record["peak_memory_bytes"] = max(process)


def fold_slice_precision(record: dict[str, Any], slices: list[dict[str, Any]]) -> None:
    """What the forward passes ran in, over all slices: each process reports only its own autocast, and a slice that
    trained nothing (a tail of sampling) reports fp32. The record's `precision` becomes every dtype any slice ran
    autocast in ('bf16', or 'bf16+fp16' for a run resumed on a GPU without bf16), else 'fp32'. Each slice's own
    precision and compile report stay in the slice list, where the README looks for a fall-back to eager too."""
    ran = [s["precision"] for s in slices if s.get("precision")]
    if ran:
        record["precision"] = "+".join(sorted({p for r in ran for p in r.split("+")} - {"fp32"})) or "fp32"


def full_record_devices(task: str, code: str, preset: str = "full") -> set[str]:
    """The device types ("cuda", "cpu", "mps") of the records of `preset` in results/<task>/ whose notebook code is
    `code`, or differs from it only in comments and docstrings (results/code_aliases.json)."""
    codes = code_aliases.current_codes(task, code, code_aliases.load(REPO_ROOT))
    found = set()
    for path in (REPO_ROOT / "results" / task).glob(f"*__{preset}__*.json"):
        record = json.loads(path.read_text())
        if record.get("preset") == preset and (record.get("code") or {}).get("notebook_code_sha256") in codes:
            found.add(record.get("device_type", "cpu"))
    return found


def record_status(devices: set[str]) -> str:
    """How `list` names what full_record_devices found."""
    if "cuda" in devices:
        return "GPU record for this code"
    return "CPU record only for this code: a GPU run still to do" if devices else "no record for this code"


def plan(tasks: dict[str, dict[str, Any]], root: Path, budget: float) -> list[tuple[str, str]]:
    """What `next` would do, in order: (task, why) for the unfinished runs under `root` first, then the tasks
    without a GPU record for their current code: those without any `full` record cheapest first, then those with a
    CPU record only (their result is known; their GPU time is not), cheapest first. Each starts only if its
    shortest useful slice fits, and a task whose state cannot travel (`travels = false`) only if its whole estimate
    fits, or its training's (`train_minutes`) if its state travels once trained (`travels_after_training`)."""
    available = gpu_check.notebooks()
    order: list[tuple[str, str]] = []
    for task in tasks:
        state = run_state(state_folder(root, task))
        if state is not None and not state["finished"]:
            order.append((task, "resume"))
    devices = {t: full_record_devices(t, notebook_code_sha256(available[t])) for t in tasks if t in available}
    fresh = [t for t in devices if (t, "resume") not in order and "cuda" not in devices[t]
             and run_state(state_folder(root, t)) is None]
    for task in sorted(fresh, key=lambda t: (bool(devices[t]), tasks[t]["estimate_minutes"])):
        entry = tasks[task]
        if 60 * first_slice_minutes(entry) <= budget:
            order.append((task, "start"))
    return order


def first_slice_minutes(entry: dict[str, Any]) -> float:
    """The minutes one command must hold to start a task: its shortest useful slice, and for a task whose state
    cannot travel (`travels = false`) its whole estimate, or its training's (`train_minutes`) if its state travels
    once trained (`travels_after_training`)."""
    if entry.get("travels", True):
        return entry["min_slice_minutes"]
    on_one_machine = entry["train_minutes"] if entry.get("travels_after_training") else entry["estimate_minutes"]
    return max(entry["min_slice_minutes"], on_one_machine)


def slice_need_minutes(task: str, entry: dict[str, Any], root: Path) -> float:
    """The minutes one command must hold for `task`'s next slice: to resume its unfinished run under `root`,
    `shortest_resume_minutes` (a diffusion run's tail included); to start it, `first_slice_minutes`."""
    state_dir = state_folder(root, task)
    state = run_state(state_dir)
    if state is not None and not state["finished"]:
        return shortest_resume_minutes(entry, state_dir)
    return first_slice_minutes(entry)


def shortest_resume_minutes(entry: dict[str, Any], state_dir: Path) -> float:
    """The shortest slice worth resuming a run with: `min_slice_minutes`, or for a run left with its tail alone
    (`travels_after_training`, stopped at its last step) the tail, which no deadline cuts."""
    slices = (run_state(state_dir) or {"slices": []})["slices"]
    trained = bool(slices) and slices[-1].get("to_step") is not None and slices[-1]["to_step"] == slices[-1]["of_steps"]
    if trained and entry.get("travels_after_training"):
        return max(entry["min_slice_minutes"], entry.get("tail_minutes", 0))
    return entry["min_slice_minutes"]


def cannot_resume(task: str, entry: dict[str, Any], state_dir: Path, left: float) -> str | None:
    """Why an unfinished run cannot be resumed in this command (None: it can): its shortest useful slice does not
    fit in the `left` seconds (a diffusion run's tail waits for a longer command), or its notebook code has changed
    since its first slice (its checkpoint is of other code)."""
    need = shortest_resume_minutes(entry, state_dir)
    if 60 * need > left:
        return f"its shortest useful slice ({need} min) does not fit in the {left:.0f} s left"
    notebook = gpu_check.notebooks().get(task)
    saved = (run_state(state_dir) or {}).get("notebook_code_sha256")
    if notebook is None or saved != notebook_code_sha256(notebook):
        return "its notebook code changed since its first slice: start it again in an empty state folder"
    return None


def missing_inputs(entry: dict[str, Any], data_dir: Path) -> list[str]:
    """The entries of the task's `needs` (campaign.toml) that this machine lacks: a file or folder neither in
    `data_dir` nor in `DL_EXTRA_DATA_DIRS` (where the notebooks look too), Fashion-MNIST neither there nor in
    Debian's folder, a Python package (`module:NAME`) not installed. A run started without them fails offline, and
    used to end the whole command."""
    import importlib.util

    from common.data import DEBIAN_FASHION_MNIST
    from common.paths import extra_data_dirs

    folders = [data_dir, *extra_data_dirs()]  # where the notebook will look: DL_DATA_DIR, then DL_EXTRA_DATA_DIRS
    missing = []
    for need in entry.get("needs", []):
        if need.startswith("module:"):
            found = importlib.util.find_spec(need.split(":", 1)[1]) is not None
        elif need == "fashion_mnist":
            found = any((d / "fashion_mnist.npz").is_file() for d in folders) or DEBIAN_FASHION_MNIST.is_dir()
        else:
            found = any((d / need).exists() for d in folders)
        if not found:
            missing.append(need)
    return missing


def run_campaign(budget: float, root: Path, data_dir: Path, device: str, save: bool,
                 after_slice: str | None = None, started: float | None = None) -> int:
    """Spend `budget` seconds: resume unfinished runs, then start new ones, while a useful slice still fits. An
    unfinished run that cannot be resumed now (`cannot_resume`), a task whose data or packages this machine lacks
    (`missing_inputs`) and a task whose slice failed in this command are said and passed over, so none of them
    blocks the tasks after it. A slice that stopped unfinished ends that task's turn in this command, not the
    command: one that stopped early (a side run too long for the time left: `common.SideRuns.pending`) leaves the
    rest of the budget to the next task that fits. `after_slice`, a shell command, runs after every slice (loan.sh
    packs what finished). `budget` counts from `started` (default: now), as `run_slice`'s seconds do."""
    if env_seed() is not None:
        raise SystemExit("DL_SEED is set: the campaign runs each notebook's own seed; run another seed by name "
                         "(campaign.py run TASK, or loan.sh run SECONDS TASK)")
    tasks, end, failed, said = campaign(), (time.time() if started is None else started) + budget, set(), set()
    stopped: set[str] = set()  # tasks whose slice stopped unfinished in this command: their turn is over
    while True:
        left = end - time.time()
        order = []
        for task, why in plan(tasks, root, left):
            missing = missing_inputs(tasks[task], data_dir)
            reason = (f"this machine lacks {', '.join(missing)}" if missing
                      else "its slice failed in this command (see its log)" if task in failed
                      else "its slice stopped in this command" if task in stopped
                      else cannot_resume(task, tasks[task], state_folder(root, task), left) if why == "resume" else None)
            if reason and (task, reason) not in said:
                said.add((task, reason))
                print(f"campaign: {task} ({why}): {reason}; passed over")
            if not reason:
                order.append((task, why))
        if not order:
            print(f"campaign: nothing more fits in the {left:.0f} s left")
            return 1 if failed else 0
        task, why = order[0]
        print(f"campaign: {why} {task} with {left:.0f} s left")
        rc = run_slice(task, left, state_folder(root, task), data_dir, device=device, save=save)
        if rc != 0:
            failed.add(task)  # a failure needs a look, but the time left goes to the other tasks
        if after_slice:
            subprocess.run(after_slice, shell=True, check=False)
        state = run_state(state_folder(root, task)) or {"finished": False}
        if rc == 0 and not state["finished"]:
            stopped.add(task)  # at its deadline nothing else fits; stopped early, the rest goes to another task


def list_campaign(root: Path | None) -> None:
    available = gpu_check.notebooks()
    for task, entry in sorted(campaign().items(), key=lambda kv: kv[1]["estimate_minutes"]):
        code = notebook_code_sha256(available[task]) if task in available else None
        status = record_status(full_record_devices(task, code)) if code else "no notebook"
        if entry.get("travels_after_training"):
            status += f"; its first {entry['train_minutes']} min (training) on one machine, then its state travels"
        elif not entry.get("travels", True):
            status += f"; all {entry['estimate_minutes']} min on one machine (its state cannot travel)"
        s = run_state(state_folder(root, task)) if root else None
        if s is not None:
            status += f"; {len(s['slices'])} slice(s){', finished' if s['finished'] else ''}"
        print(f"{task:<40} ~{entry['estimate_minutes']:>5} min  data {', '.join(entry['data'])}  [{status}]")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    one = sub.add_parser("run", help="one slice of one task's run")
    one.add_argument("task", help="a task folder, e.g. image_generation/ddpm")
    one.add_argument("--seconds", type=float, required=True, help="the slice's wall-clock budget")
    one.add_argument("--state", type=Path, required=True, help="the state folder (keep it between slices)")
    one.add_argument("--preset", default="full", choices=("smoke", "quick", "full"))
    one.add_argument("--tail", type=float, default=None,
                     help="seconds kept free after training (default: the task's tail_minutes in campaign.toml)")
    one.add_argument("--slice-steps", type=int, default=0, help="at most this many steps per slice (tests)")
    one.add_argument("--slice-side-runs", type=int, default=0, help="at most this many side runs per slice (tests)")
    nxt = sub.add_parser("next", help="spend a budget on the campaign")
    nxt.add_argument("--budget", type=float, required=True, help="seconds to spend")
    nxt.add_argument("--root", type=Path, required=True, help="the folder holding one state folder per task")
    nxt.add_argument("--after-slice", default=None, help="a shell command to run after every slice (loan.sh packs)")
    need = sub.add_parser("need", help="the seconds one command must hold for a task's next slice (loan.sh)")
    need.add_argument("task")
    need.add_argument("--root", type=Path, required=True, help="the folder holding one state folder per task")
    lst = sub.add_parser("list", help="the campaign file and each task's state")
    lst.add_argument("--root", type=Path, default=None)
    for p in (one, nxt):
        p.add_argument("--data-dir", type=Path, default=Path(os.environ.get("DL_DATA_DIR") or REPO_ROOT / "data"))
        p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
        p.add_argument("--no-save", action="store_true", help="do not copy the finished record into results/")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    started = time.time()  # budgets count from here: the import of torch below is part of what they pay for
    args = parse_args(argv)
    if args.command == "list":
        list_campaign(args.root)
        return 0
    if args.command == "need":  # no torch: loan.sh asks before every named task
        entry = campaign().get(args.task)  # none for the template (a test's task): nothing to plan, it runs now
        print(int(60 * slice_need_minutes(args.task, entry, args.root)) if entry else 0)
        return 0
    if args.device == "cuda":
        import torch
        if not torch.cuda.is_available():
            print("no CUDA device here: pass --device cpu to run the same path on the CPU")
            return gpu_check.NO_CUDA
    data_dir = args.data_dir.expanduser().resolve()
    if args.command == "run":  # a named task (loan.sh run BUDGET TASK): asked as `next` asks, before it starts
        missing = missing_inputs(campaign().get(args.task) or {}, data_dir)
        if missing:  # started anyway, it would fail offline after its imports, in the loan's time
            print(f"skip {args.task}: this machine lacks {', '.join(missing)}")
            return 1
        return run_slice(args.task, args.seconds, args.state.resolve(), data_dir, args.preset, args.device,
                         args.tail, args.slice_steps, not args.no_save, args.slice_side_runs, started)
    return run_campaign(args.budget, args.root.resolve(), data_dir, args.device, not args.no_save, args.after_slice,
                        started)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
