"""Slices (common/slicing.py) and the campaign (scripts/campaign.py, scripts/campaign.toml), tested on the CPU."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from common import slicing
from common.checkpoint import CheckpointError
from common.slicing import SideRuns
from scripts_module import load_script

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPT = REPO_ROOT / "scripts" / "campaign.py"
campaign = load_script("campaign")
tomllib = campaign.tomllib  # tomllib, or tomli on Python 3.10


class FakeClock:
    device = "cpu"

    def __getitem__(self, name: str) -> float:
        return 12.5


@pytest.fixture
def fresh_slice(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A process that has not stopped a slice yet, with the marker file in a temporary folder."""
    slicing._reset()
    for name in (slicing.DEADLINE_ENV, slicing.STEPS_ENV, slicing.SIDE_RUNS_ENV, slicing.TAIL_DEADLINE_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(slicing.MARKER_ENV, str(tmp_path / "marker.json"))
    monkeypatch.setattr("common.precision._AUTOCAST_RAN", set())  # as in a fresh process: no autocast,
    monkeypatch.setattr("common.precision._OUTCOMES_IN_ORDER", [])  # no maybe_compile (the marker reports both)
    yield tmp_path / "marker.json"
    slicing._reset()


def test_without_the_runner_nothing_stops(fresh_slice: Path) -> None:
    assert not any(slicing.slice_time_up(FakeClock(), k, 100, 0) for k in range(1, 100))
    assert not fresh_slice.exists()
    slicing.exit_if_slice_over()  # returns: nothing stopped


def test_a_step_budget_stops_after_that_many_steps_of_this_slice(fresh_slice: Path, monkeypatch) -> None:
    monkeypatch.setenv(slicing.STEPS_ENV, "10")
    calls = [slicing.slice_time_up(FakeClock(), k, 100, 20) for k in range(21, 40)]  # resumed at step 20
    assert calls.index(True) == 9  # after step 30: ten steps in this slice
    marker = json.loads(fresh_slice.read_text())
    assert marker == {"step": 30, "of": 100, "train_seconds": 12.5, "loop_seconds": 25.0, "device": marker["device"],
                      "why": "step budget", "precision": "fp32", "compile": None}  # loop: FakeClock's train + compile
    assert all(calls[9:]), "a stopped slice stays stopped"
    assert json.loads(fresh_slice.read_text())["step"] == 30, "later calls do not move the marker"
    with pytest.raises(SystemExit) as exit_:
        slicing.exit_if_slice_over()
    assert exit_.value.code == 0


def test_the_marker_counts_every_model_the_sliced_loop_trains(fresh_slice: Path, monkeypatch) -> None:
    """A loop that trains a baseline before its headline (the GAN) and stops inside the baseline has 0 s of
    `train`: the marker's `loop_seconds` still holds the baseline's steps, and the campaign's pace reads it. The
    control, a slice with `train_seconds` alone, gives the runner no pace at all (it falls back to the estimate)."""
    from common.record import RunClock

    clock = RunClock(None)
    clock.seconds = {"baseline_train": 185.0, "compile": 5.0, "eval": 40.0}
    monkeypatch.setenv(slicing.STEPS_ENV, "1")
    assert slicing.slice_time_up(clock, 14_170, 40_000, 14_169)
    marker = json.loads(fresh_slice.read_text())
    assert marker["train_seconds"] == 0.0 and marker["loop_seconds"] == 190.0, "eval is not a training span"
    entry = {"estimate_minutes": 60}  # an estimate that says "cannot finish in 20 minutes"
    slices = [{"from_step": 0, "to_step": 14_170, "of_steps": 40_000, "wall_seconds": 227.0,
               "train_seconds": 0.0, "loop_seconds": 190.0}]
    # 25,830 steps left at 74.6 steps/s: 346 s, plus 37 s of start-up and the end margin: fits in 600 s, not 350
    assert campaign.may_finish(slices, 600, entry) and not campaign.may_finish(slices, 350, entry)
    control = [{k: v for k, v in slices[0].items() if k != "loop_seconds"}]
    assert not campaign.may_finish(control, 600, entry), "without loop_seconds the pace is unknown"


def test_a_tail_longer_than_the_slice_is_not_kept_free_so_the_training_still_moves(fresh_slice: Path,
                                                                                    monkeypatch) -> None:
    """A slice that may finish the training keeps its tail free. The ViT's and SimCLR's 9-minute tails are longer than
    a 535-s slice: kept free, they put the loop's deadline before the slice began, so each such slice stopped after
    one step (the control, the reserve as it was) and the run could never finish. A tail that fits is still kept."""
    entry = {"estimate_minutes": 30, "tail_minutes": 9}
    slices = [{"from_step": 0, "to_step": 9_000, "of_steps": 10_000, "wall_seconds": 500.0, "train_seconds": 400.0,
               "loop_seconds": 400.0}]  # 1,000 steps left at 22.5 steps/s: 44 s, with 100 s of start-up
    assert campaign.may_finish(slices, 535, entry)
    now = [1000.0]
    monkeypatch.setattr(slicing.time, "time", lambda: now[0])

    def steps_trained(reserve: float) -> int:
        """Steps a loop resumed at step 9,000 trains, ten a second from 100 s into a 535-s slice, before it stops."""
        slicing._reset()
        now[0] = 1100.0
        monkeypatch.setenv(slicing.DEADLINE_ENV, str(1000.0 + 535 - reserve))
        for step in range(9_001, 10_001):
            if slicing.slice_time_up(FakeClock(), step, 10_000, 9_000):
                return step - 9_000
            now[0] += 0.1
        return 1_000

    reserve, why = campaign.loop_reserve(slices, 535, entry, 540)
    assert reserve == campaign.END_MARGIN and "runs to the slice's end" in why
    assert steps_trained(reserve) == 1_000
    assert steps_trained(campaign.END_MARGIN + 540) == 1, "the control: the tail kept free stops every slice at once"
    assert campaign.loop_reserve(slices, 535, entry, 240) == (campaign.END_MARGIN + 240, None)  # a tail that fits
    # the earlier slice's start-up was 100 s: a tail that leaves the loop 155 s of the slice, under that plus a minute
    assert campaign.loop_reserve(slices, 535, entry, 360)[0] == campaign.END_MARGIN
    assert campaign.made_progress(slices[0]) and campaign.made_progress({"from_step": 5, "to_step": 5, "side_runs": 2})
    assert not campaign.made_progress({"from_step": 9_001, "to_step": 9_001, "side_runs": 0}), "no step, no side run"
    assert campaign.loop_reserve(slices, 535, {"estimate_minutes": 30}, 0) == (campaign.END_MARGIN, None)


def test_the_marker_counts_a_training_span_that_has_not_stopped_yet(fresh_slice: Path, monkeypatch) -> None:
    """A loop's training span runs from one evaluation to the next (`RunClock.start` is a no-op while it runs), so
    a slice that stops before a model's first evaluation stops inside a span that is in no `clock.seconds` key yet:
    the GAN's `full` rehearsal on a CPU stopped at step 743 of its baseline with 200 s in `baseline_train` and the
    marker counted 3 s (its compile step). The marker reads the running span too."""
    from common.record import RunClock

    clock = RunClock(None)
    clock.seconds = {"compile": 3.0}
    clock.current, clock._start = "baseline_train", time.perf_counter() - 200.0  # running for 200 s, never stopped
    monkeypatch.setenv(slicing.STEPS_ENV, "1")
    assert slicing.slice_time_up(clock, 743, 40_000, 742)
    marker = json.loads(fresh_slice.read_text())
    assert marker["train_seconds"] == 0.0
    assert 203.0 <= marker["loop_seconds"] < 213.0, "the running baseline_train span is a training span"
    finished_only = slicing.training_span_seconds({n: clock[n] for n in set(clock.seconds) | {"train", "compile"}})
    assert not 203.0 <= finished_only < 213.0, "the control, the finished spans' names alone, misses it (3 s)"


def test_the_last_step_is_never_cut(fresh_slice: Path, monkeypatch) -> None:
    monkeypatch.setenv(slicing.STEPS_ENV, "1")
    assert not slicing.slice_time_up(FakeClock(), 5, 5, 4)
    assert not fresh_slice.exists()


def test_a_loop_that_ends_after_the_tail_deadline_stops_at_its_last_step(fresh_slice: Path, monkeypatch) -> None:
    """A run whose state travels only once trained (DDPM, flow matching) must not start its tail in a slice too short
    for it: its loop stops at its last step, checkpointed, and the next slice runs the tail."""
    now = [1000.0]
    monkeypatch.setattr(slicing.time, "time", lambda: now[0])
    monkeypatch.setenv(slicing.TAIL_DEADLINE_ENV, "1100")
    assert not any(slicing.slice_time_up(FakeClock(), k, 100, 0) for k in range(1, 100)), "it never cuts training"
    now[0] = 1099.0
    assert not slicing.slice_time_up(FakeClock(), 100, 100, 0), "the control: trained in time, the tail runs here"
    assert not fresh_slice.exists()
    now[0] = 1100.0
    assert slicing.slice_time_up(FakeClock(), 100, 100, 0)
    marker = json.loads(fresh_slice.read_text())
    assert (marker["step"], marker["of"], marker["why"]) == (100, 100, "no time left for the tail")
    with pytest.raises(SystemExit):
        slicing.exit_if_slice_over()


def test_the_deadline_keeps_a_margin_of_three_steps_and_the_checkpoint(fresh_slice: Path, monkeypatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(slicing.time, "time", lambda: now[0])
    deadline = 1000.0 + 100.0
    monkeypatch.setenv(slicing.DEADLINE_ENV, str(deadline))
    step_seconds = 2.0
    for k in range(1, 1000):
        stop = slicing.slice_time_up(FakeClock(), k, 1000, 0)
        if stop:
            break
        now[0] += step_seconds
    # it stops at the first step where three more steps and the checkpoint margin would pass the deadline
    assert now[0] + 3 * step_seconds + slicing.MARGIN_SECONDS >= deadline
    assert now[0] - step_seconds + 3 * step_seconds + slicing.MARGIN_SECONDS < deadline
    assert json.loads(fresh_slice.read_text())["why"] == "deadline"


@pytest.fixture
def sandbox(fresh_slice: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """`fresh_slice`, with its own checkpoint folder: where SideRuns keeps its results. Yields the temporary folder."""
    monkeypatch.setenv("DL_CHECKPOINT_DIR", str(fresh_slice.parent / "checkpoints"))
    return fresh_slice.parent


# --- side runs kept across slices (common.slicing.SideRuns)

CONFIG = {"seed": 0, "widths": [8, 16], "resume": False}


def run_all(side: SideRuns, keys: list[str]) -> list[str]:
    """Run every pending key (its result: the key's length as a tensor); return the keys run here."""
    ran = []
    for key in keys:
        if side.pending(key):
            side.save(key, {"value": torch.tensor(float(len(key))), "name": key})
            ran.append(key)
    return ran


def test_outside_the_runner_every_side_run_runs_once_and_a_resume_skips_them(sandbox: Path) -> None:
    keys = ["width 8", "width 16", "sweep/seed 0/500 steps"]
    assert run_all(SideRuns("a/task", "smoke", CONFIG, resume=False), keys) == keys
    again = SideRuns("a/task", "smoke", {**CONFIG, "resume": True}, resume=True)
    assert run_all(again, keys) == []  # all kept: none reruns
    assert again["width 16"]["value"].item() == len("width 16") and again["width 8"]["name"] == "width 8"
    assert again["width 8"] is again["width 8"]  # read from its file once, then kept
    assert SideRuns("a/task", "smoke", CONFIG, resume=False).index["runs"] == {}  # resume=False starts afresh
    assert slicing._state["stopped"] is None


def test_a_changed_config_refuses_the_kept_results(sandbox: Path) -> None:
    run_all(SideRuns("a/task", "smoke", CONFIG, resume=False), ["width 8"])
    with pytest.raises(CheckpointError, match="widths"):
        SideRuns("a/task", "smoke", {**CONFIG, "widths": [8, 32]}, resume=True)
    assert "width 8" in SideRuns("a/task", "smoke", {**CONFIG, "resume": True}, resume=True)  # control: same config


def test_a_side_run_budget_stops_the_slice_between_two_side_runs(sandbox: Path, monkeypatch) -> None:
    monkeypatch.setenv(slicing.SIDE_RUNS_ENV, "2")
    keys = ["a", "b", "c", "d", "e"]
    side = SideRuns("a/task", "smoke", CONFIG, resume=False, clock=FakeClock(), headline_steps=30)
    assert run_all(side, keys) == ["a", "b"]
    marker = json.loads((sandbox / "marker.json").read_text())
    assert (marker["step"], marker["of"], marker["side_runs"], marker["train_seconds"]) == (30, 30, 2, 12.5)
    assert not side.pending("e")  # once stopped, nothing more starts in this slice
    with pytest.raises(SystemExit) as stop:
        slicing.exit_if_slice_over()
    assert stop.value.code == 0
    slicing._reset()  # the next slice: a new process
    nxt = SideRuns("a/task", "smoke", {**CONFIG, "resume": True}, resume=True, clock=FakeClock(), headline_steps=30)
    assert run_all(nxt, keys) == ["c", "d"]
    slicing._reset()
    last = SideRuns("a/task", "smoke", {**CONFIG, "resume": True}, resume=True, clock=FakeClock(), headline_steps=30)
    assert run_all(last, keys) == ["e"] and slicing._state["stopped"] is None  # finished: no stop


def test_the_deadline_keeps_room_for_the_longest_side_run_so_far(sandbox: Path, monkeypatch) -> None:
    side = SideRuns("a/task", "smoke", CONFIG, resume=False, clock=FakeClock(), headline_steps=30)
    assert side.pending("slow")
    side._running = ("slow", time.perf_counter() - 100.0)  # as if it had taken 100 s
    side.save("slow", 1.0)
    assert side.index["runs"]["slow"]["seconds"] == pytest.approx(100.0, abs=1.0)
    monkeypatch.setenv(slicing.DEADLINE_ENV, str(time.time() + 1_000))  # control: room for it
    assert side.pending("fast")
    side.save("fast", 2.0)
    monkeypatch.setenv(slicing.DEADLINE_ENV, str(time.time() + 100))  # not room for 1.25 x 100 s + the margin
    assert not side.pending("next")
    assert "longest side run" in json.loads((sandbox / "marker.json").read_text())["why"]


def test_a_side_run_known_to_be_long_waits_for_a_slice_with_room_for_it(sandbox: Path, monkeypatch) -> None:
    """The ViT's ResNet-20 trains for the ViT's seconds, minutes, after ablations of about a minute: by the longest
    side run so far it would start too late and be killed with its slice. Its `expected_seconds` keeps room for it;
    the control, the same call without it, starts it. A short side run's estimate replaces the longest so far, so it
    need not wait for a long one's room (control: without it, it waits). An estimate given as a function (a probe
    that costs time) is called only where a slice has a deadline."""
    side = SideRuns("a/task", "smoke", CONFIG, resume=False, clock=FakeClock(), headline_steps=30)
    assert side.pending("ablation")
    side._running = ("ablation", time.perf_counter() - 60.0)  # as if it had taken 60 s
    side.save("ablation", 1.0)

    def next_slice(seconds_left: float) -> SideRuns:
        """The side runs as a new slice's process sees them, with `seconds_left` to its deadline."""
        slicing._reset()
        monkeypatch.setenv(slicing.DEADLINE_ENV, str(time.time() + seconds_left))
        return SideRuns("a/task", "smoke", {**CONFIG, "resume": True}, resume=True, clock=FakeClock(), headline_steps=30)

    assert next_slice(350).pending("same time", expected_seconds=300.0) is False  # 300 s + margin fit, 1.25 x 300 not
    assert "expected to take 300 s" in json.loads((sandbox / "marker.json").read_text())["why"]
    assert next_slice(200).pending("same time"), "the control: by the longest side run so far it starts"
    assert next_slice(400).pending("same time", expected_seconds=300.0)  # a slice with room for it starts it
    # no room for 1.25 x the 60-s side run before
    assert next_slice(50).pending("quick one", expected_seconds=20.0), "a short one does not wait for the longest's room"
    assert not next_slice(50).pending("quick one"), "the control: by the longest so far it waits"
    calls = []

    def probe() -> float:
        calls.append(1)
        return 20.0
    assert next_slice(50).pending("probed", expected_seconds=probe) and calls == [1]
    slicing._reset()
    monkeypatch.delenv(slicing.DEADLINE_ENV)
    unsliced = SideRuns("a/task", "smoke", {**CONFIG, "resume": True}, resume=True, clock=FakeClock(), headline_steps=30)
    assert unsliced.pending("probed again", expected_seconds=probe) and calls == [1], "probed without a deadline"


def test_seconds_sum_the_finished_side_runs_over_slices_and_misuse_is_refused(sandbox: Path) -> None:
    side = SideRuns("a/task", "smoke", CONFIG, resume=False)
    for key, took in (("sweep/a", 3.0), ("sweep/b", 4.0), ("experiment/a", 5.0)):
        assert side.pending(key)
        side._running = (key, time.perf_counter() - took)
        side.save(key, took)
    resumed = SideRuns("a/task", "smoke", {**CONFIG, "resume": True}, resume=True)
    assert resumed.seconds("sweep/") == pytest.approx(7.0, abs=0.1)
    assert resumed.seconds() == pytest.approx(12.0, abs=0.1)
    with pytest.raises(RuntimeError, match="without pending"):
        resumed.save("other", 1.0)
    with pytest.raises(KeyError, match="has not finished"):
        resumed["other"]


def test_side_runs_before_the_headline_loop_stop_at_its_step_0_and_the_runner_reads_it(sandbox: Path,
                                                                                        monkeypatch) -> None:
    """The ViT's ablations run before its headline loop, with no headline clock yet: the marker says step 0, with no
    train seconds (the runner counts 0 for such a slice); once the loop is done the side runs after it say so."""
    monkeypatch.setenv(slicing.SIDE_RUNS_ENV, "1")
    side = SideRuns("a/task", "smoke", CONFIG, resume=False, headline_steps=40, headline_done=0, device="cpu")
    assert run_all(side, ["ablation/a", "ablation/b"]) == ["ablation/a"]
    marker = json.loads((sandbox / "marker.json").read_text())
    assert (marker["step"], marker["of"], marker["train_seconds"], marker["side_runs"]) == (0, 40, None, 1)
    assert marker["device"].startswith("cpu")
    slicing._reset()
    side = SideRuns("a/task", "smoke", {**CONFIG, "resume": True}, resume=True, headline_steps=40, headline_done=0)
    assert run_all(side, ["ablation/a", "ablation/b"]) == ["ablation/b"]
    side.headline_done, side.clock = 40, FakeClock()  # the headline loop has run
    assert run_all(side, ["after"]) == []
    marker = json.loads((sandbox / "marker.json").read_text())
    assert (marker["step"], marker["of"], marker["train_seconds"]) == (40, 40, 12.5)


def test_the_campaign_file_lists_every_task_with_what_a_bare_machine_needs() -> None:
    tasks = campaign.campaign()
    notebooks = {t for t in campaign.gpu_check.notebooks() if not t.startswith("templates/")}
    assert set(tasks) == notebooks
    for task, entry in tasks.items():
        assert entry["estimate_minutes"] > 0 and entry["min_slice_minutes"] > 0, task
        assert entry["tail_minutes"] >= 0 and entry["estimate_basis"], task
        assert entry["data"] and entry["paper_result"], task
        assert isinstance(entry["sliced"], bool) and isinstance(entry.get("travels", True), bool), task


def test_the_plan_resumes_first_then_the_cheapest_without_a_record(tmp_path: Path, monkeypatch) -> None:
    tasks = {"a/cheap": {"estimate_minutes": 2, "min_slice_minutes": 1},
             "b/dear": {"estimate_minutes": 30, "min_slice_minutes": 12},
             "c/mid": {"estimate_minutes": 9, "min_slice_minutes": 3},
             "d/done": {"estimate_minutes": 1, "min_slice_minutes": 1}}
    monkeypatch.setattr(campaign.gpu_check, "notebooks", lambda: {t: tmp_path / f"{t}.ipynb" for t in tasks})
    monkeypatch.setattr(campaign, "notebook_code_sha256", lambda path: "code")
    monkeypatch.setattr(campaign, "full_record_devices", lambda task, code: {"cuda"} if task == "d/done" else set())
    (tmp_path / "root" / "c__mid").mkdir(parents=True)
    (tmp_path / "root" / "c__mid" / "state.json").write_text(json.dumps({"finished": False}))
    plan = campaign.plan(tasks, tmp_path / "root", budget=600)
    assert plan == [("c/mid", "resume"), ("a/cheap", "start")], "b/dear's 12-minute slice does not fit in 10"
    assert campaign.plan(tasks, tmp_path / "root", budget=900)[-1] == ("b/dear", "start")


def test_a_task_whose_full_record_ran_on_a_cpu_still_waits_for_its_gpu_run(tmp_path: Path, monkeypatch) -> None:
    """A `full` result measured on a CPU leaves the task's GPU time unmeasured: the plan keeps it, after every task
    with no `full` record at all (whose result is unknown), however cheap it is; a GPU record ends it."""
    tasks = {"a/cpu_only": {"estimate_minutes": 1, "min_slice_minutes": 1},
             "b/none": {"estimate_minutes": 9, "min_slice_minutes": 3},
             "c/gpu": {"estimate_minutes": 1, "min_slice_minutes": 1},
             "d/both": {"estimate_minutes": 1, "min_slice_minutes": 1}}
    monkeypatch.setattr(campaign.gpu_check, "notebooks", lambda: {t: tmp_path / f"{t}.ipynb" for t in tasks})
    monkeypatch.setattr(campaign, "notebook_code_sha256", lambda path: "code")
    found = {"a/cpu_only": {"cpu"}, "b/none": set(), "c/gpu": {"cuda"}, "d/both": {"cpu", "cuda"}}
    monkeypatch.setattr(campaign, "full_record_devices", lambda task, code: found[task])
    assert campaign.plan(tasks, tmp_path / "root", budget=600) == [("b/none", "start"), ("a/cpu_only", "start")]
    assert campaign.record_status({"cpu"}).startswith("CPU record only")
    assert campaign.record_status({"cpu", "cuda"}) == "GPU record for this code"


def test_a_slice_that_trained_nothing_has_zero_seconds_not_a_rounding_below_zero() -> None:
    # the GCN/GAT quick run in 5 slices (2026-11-28): the last two slices trained nothing and came out -0.0 and
    # -0.004 s (the record's total, 332.66, is rounded to 0.01 s; the first three slices summed to 332.6636)
    assert campaign.slice_seconds(332.66, 332.6636) == 0.0
    assert str(campaign.slice_seconds(332.66361, 332.66362)) == "0.0"  # not "-0.0"
    assert campaign.slice_seconds(340.0, 332.6636) == 7.3364
    assert campaign.slice_seconds(300.0, 332.6636) == -32.6636  # the control: no rounding makes this; it shows


def test_full_record_devices_reads_the_device_of_records_of_this_code_only(tmp_path: Path, monkeypatch) -> None:
    folder = tmp_path / "results" / "x" / "y"
    folder.mkdir(parents=True)
    for name, device, code in (("a", "cpu", "now"), ("b", "cuda", "old"), ("c", "mps", "now")):
        record = {"preset": "full", "device_type": device, "code": {"notebook_code_sha256": code}}
        (folder / f"x__y__full__{name}.json").write_text(json.dumps(record))
    (folder / "x__y__quick__d.json").write_text(json.dumps({"preset": "quick", "device_type": "cuda",
                                                            "code": {"notebook_code_sha256": "now"}}))
    monkeypatch.setattr(campaign, "REPO_ROOT", tmp_path)
    assert campaign.full_record_devices("x/y", "now") == {"cpu", "mps"}  # b: older code; d: another preset
    assert campaign.full_record_devices("x/y", "old") == {"cuda"}


def test_a_run_whose_state_cannot_travel_starts_only_where_it_can_finish(tmp_path: Path, monkeypatch) -> None:
    tasks = {"a/heavy": {"estimate_minutes": 25, "min_slice_minutes": 3, "travels": False},
             "b/light": {"estimate_minutes": 25, "min_slice_minutes": 3}}  # the control: the same task, travelling
    monkeypatch.setattr(campaign.gpu_check, "notebooks", lambda: {t: tmp_path / f"{t}.ipynb" for t in tasks})
    monkeypatch.setattr(campaign, "notebook_code_sha256", lambda path: "code")
    monkeypatch.setattr(campaign, "full_record_devices", lambda task, code: set())
    assert campaign.plan(tasks, tmp_path / "root", budget=600) == [("b/light", "start")]
    assert campaign.plan(tasks, tmp_path / "root", budget=1500) == [("a/heavy", "start"), ("b/light", "start")]
    assert campaign.campaign()["text_generation/bpe_gpt"]["travels"] is False  # 207 MiB, and it fits one command


def test_a_run_that_travels_once_trained_starts_with_a_budget_of_its_training(tmp_path: Path, monkeypatch) -> None:
    tasks = {"a/trained": {"estimate_minutes": 20, "train_minutes": 9, "min_slice_minutes": 3, "tail_minutes": 9,
                           "travels": False, "travels_after_training": True},
             "b/whole": {"estimate_minutes": 20, "min_slice_minutes": 3, "tail_minutes": 9, "travels": False}}
    monkeypatch.setattr(campaign.gpu_check, "notebooks", lambda: {t: tmp_path / f"{t}.ipynb" for t in tasks})
    monkeypatch.setattr(campaign, "notebook_code_sha256", lambda path: "code")
    monkeypatch.setattr(campaign, "full_record_devices", lambda task, code: set())
    assert campaign.plan(tasks, tmp_path / "root", budget=590) == [("a/trained", "start")], "b/whole: the control"
    assert campaign.plan(tasks, tmp_path / "root", budget=500) == []
    for task in ("image_generation/ddpm", "image_generation/flow_matching"):
        assert campaign.campaign()[task]["travels_after_training"] is True
    # resumed with its tail alone, it needs a slice of its tail; stopped inside training, its shortest slice
    state = tmp_path / "root" / "a__trained"
    state.mkdir(parents=True)
    for to_step, minutes in ((500, 3), (1000, 9)):
        (state / "state.json").write_text(json.dumps({"slices": [{"to_step": to_step, "of_steps": 1000}]}))
        assert campaign.shortest_resume_minutes(tasks["a/trained"], state) == minutes
        assert campaign.shortest_resume_minutes(tasks["b/whole"], state) == 3  # its tail is not left for later


def test_the_list_says_which_runs_must_stay_on_one_machine(capsys: pytest.CaptureFixture) -> None:
    campaign.list_campaign(None)
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    ddpm, bpe = (campaign.campaign()[task] for task in ("image_generation/ddpm", "text_generation/bpe_gpt"))
    assert f"first {ddpm['train_minutes']} min (training) on one machine, then its state travels" in lines[
        "image_generation/ddpm"]
    assert f"all {bpe['estimate_minutes']} min on one machine (its state cannot travel)" in lines["text_generation/bpe_gpt"]
    assert "one machine" not in lines["image_generation/gan"]  # the control: its state travels


def run_slices(state: Path, data_dir: str, slice_steps: int, slice_side_runs: int = 0,
               task: str = "templates/task_template", seconds: int = 300, tail: int = 0,
               max_slices: int = 6) -> list[str]:
    outputs = []
    for _ in range(max_slices):
        result = subprocess.run([sys.executable, str(SCRIPT), "run", task, "--preset", "smoke",
                                 "--device", "cpu", "--seconds", str(seconds), "--tail", str(tail), "--state", str(state),
                                 "--no-save", "--data-dir", data_dir, "--slice-steps", str(slice_steps),
                                 "--slice-side-runs", str(slice_side_runs)],
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr
        outputs.append(result.stdout)
        if "finished" in result.stdout:
            break
    return outputs


def the_run_record(state: Path) -> dict:
    """The one run record a finished run left in its state folder's runs/."""
    [record] = [json.loads(p.read_text()) for p in (state / "runs").glob("*.json")]
    return record


def slice_logs(state: Path, slices: tuple[int, ...]) -> list[str]:
    """The logs of those slices (numbered from 1) of the run in `state`."""
    return [(state / f"slice_{k}.log").read_text() for k in slices]


def assert_train_seconds_are_the_slices_sum(record: dict) -> None:
    """train_seconds is the sum of the slices' shares, to the record's rounding (0.01 s, so within 0.005 s) and the
    shares' (0.1 ms each): a slice that trained nothing reads 0.0 even where the rounded total is up to 0.005 s below
    the earlier slices' sum (campaign.slice_seconds), and 0.735 - 0.73 is a hair over 0.005 in floating point."""
    bound = 0.005 + 0.00005 * len(record["slices"])
    assert record["train_seconds"] == pytest.approx(sum(s["train_seconds"] for s in record["slices"]), abs=bound)


def uninterrupted_record(task: str, tmp_path: Path, data_dir: str, uninterrupted_runs: dict[str, dict]) -> dict:
    """The run record of an uninterrupted `smoke` run of `task`: tests/test_notebooks.py's first run of that notebook
    in this process, if it ran (the root conftest.py runs it just before the slice test that names it with
    `reuses_notebook_run`), else a run of the notebook whole through the runner, in one slice."""
    if task in uninterrupted_runs:
        return uninterrupted_runs[task]
    whole = run_slices(tmp_path / "whole", data_dir, 0, task=task)
    assert len(whole) == 1, whole
    record = the_run_record(tmp_path / "whole")
    assert len(record["slices"]) == 1 and record["slices"][0]["train_seconds"] == pytest.approx(record["train_seconds"],
                                                                                                abs=1e-3)
    return record


@pytest.mark.notebook
@pytest.mark.reuses_notebook_run("templates/task_template")
def test_a_run_cut_into_slices_ends_exactly_as_the_uninterrupted_run(tmp_path: Path, uninterrupted_runs: dict) -> None:
    """The template in smoke (30 steps, then two side runs), cut into slices of at most 15 steps and one side run:
    the same metrics as its uninterrupted run, train_seconds is the sum of the slices', and no side run runs twice.
    The second slice resumes mid-run and stops again, between the side runs."""
    data_dir = os.environ["DL_DATA_DIR"]  # the root conftest's sandbox; the user's data is in DL_EXTRA_DATA_DIRS
    a = uninterrupted_record("templates/task_template", tmp_path, data_dir, uninterrupted_runs)
    sliced = run_slices(tmp_path / "sliced", data_dir, 15, 1)
    assert len(sliced) == 3
    assert "stopped at step 15 of 30, resume with the same command" in sliced[0]
    assert "stopped at step 30 of 30 and 1 side run(s), resume with the same command" in sliced[1]
    assert "finished in 3 slice(s)" in sliced[2]
    b = the_run_record(tmp_path / "sliced")
    assert a["metrics"] == b["metrics"] and len(b["metrics"]["side_final_train_loss"]) == 2
    assert [(s["from_step"], s["to_step"]) for s in b["slices"]] == [(0, 15), (15, 30), (30, 30)]
    assert b["slices"][1]["side_runs"] == 1  # the second slice ran the first side run, then stopped before the second
    logs = slice_logs(tmp_path / "sliced", (2, 3))
    assert "width 32" in logs[0] and "width 64" not in logs[0]
    assert "width 64" in logs[1] and "width 32:" not in logs[1].split("width 64")[0]  # the kept one did not rerun
    assert_train_seconds_are_the_slices_sum(b)
    assert all(s["device"].startswith("cpu") and s["wall_seconds"] > 0 for s in b["slices"])


@pytest.mark.notebook
@pytest.mark.reuses_notebook_run("image_classification/resnet")
def test_resnet_cut_between_its_side_runs_ends_exactly_as_the_uninterrupted_run(tmp_path: Path,
                                                                                 uninterrupted_runs: dict) -> None:
    """ResNet's side runs (4 experiment networks, 16 sweep runs, the speed network at smoke) cut 11 to a slice, two
    slices: the same metrics as one uninterrupted run, so a `full` run whose side runs outlast one command still
    finishes. (A slice that resumes and stops again is the template's test's case.)"""
    data_dir = os.environ["DL_DATA_DIR"]
    a = uninterrupted_record("image_classification/resnet", tmp_path, data_dir, uninterrupted_runs)
    sliced = run_slices(tmp_path / "sliced", data_dir, 0, 11, "image_classification/resnet")
    assert len(sliced) == 2, sliced
    assert "stopped at step 8 of 8 and 11 side run(s)" in sliced[0] and "finished in 2 slice(s)" in sliced[1]
    b = the_run_record(tmp_path / "sliced")
    timing = {"images_per_second"}  # measured, not computed: the only metric that may differ
    assert {k: v for k, v in a["metrics"].items() if k not in timing} == \
        {k: v for k, v in b["metrics"].items() if k not in timing}
    assert [s.get("side_runs") for s in b["slices"]] == [11, None]
    logs = slice_logs(tmp_path / "sliced", (1, 2))
    bar = re.compile(r"plain-20: +\d+%")  # the experiment network's progress bar: it trained in that slice
    assert bar.search(logs[0]) and not bar.search(logs[1])


@pytest.mark.notebook
@pytest.mark.reuses_notebook_run("image_classification/vit")
def test_vit_cut_between_side_runs_before_and_after_its_headline_ends_as_the_uninterrupted_run(
        tmp_path: Path, uninterrupted_runs: dict) -> None:
    """The ViT's ablations run before its headline loop and the ResNet-20 and subset runs after it (7 side runs at
    smoke), cut 3 to a slice: the first slice stops at step 0 with no train seconds, the runner counts 0 for it, and
    every step-budgeted number equals the uninterrupted run's (the "same time" runs train for measured seconds, so
    their steps, and numbers, differ from run to run)."""
    data_dir = os.environ["DL_DATA_DIR"]
    a = uninterrupted_record("image_classification/vit", tmp_path, data_dir, uninterrupted_runs)
    sliced = run_slices(tmp_path / "sliced", data_dir, 0, 3, "image_classification/vit")
    assert len(sliced) == 3, sliced
    assert "stopped at step 0 of 12 and 3 side run(s)" in sliced[0]
    assert "stopped at step 12 of 12 and 3 side run(s)" in sliced[1] and "finished in 3 slice(s)" in sliced[2]
    b = the_run_record(tmp_path / "sliced")
    step_budgeted = ["test_accuracy", "val_accuracy", "subset_test_accuracy_vit", "ablation_val_accuracy__baseline",
                     "ablation_val_accuracy__no_augmentation", "ablation_val_accuracy__no_weight_decay"]
    assert {k: a["metrics"][k] for k in step_budgeted} == {k: b["metrics"][k] for k in step_budgeted}
    assert [(s["from_step"], s["to_step"], s.get("side_runs")) for s in b["slices"]] == [(0, 0, 3), (0, 12, 3),
                                                                                           (12, 12, None)]
    assert b["slices"][0]["train_seconds"] == 0.0
    assert_train_seconds_are_the_slices_sum(b)


@pytest.mark.notebook
@pytest.mark.reuses_notebook_run("image_generation/normalizing_flows")
def test_normalizing_flows_cut_between_its_two_variants_ends_as_the_uninterrupted_run(tmp_path: Path,
                                                                                       uninterrupted_runs: dict) -> None:
    """The RealNVP-vs-Glow comparison before the main loop (each variant a side run), cut one side run and 12 steps
    to a slice: the first slice trains RealNVP and stops at step 0; the second keeps it (not trained again), trains
    Glow and 12 main steps; the third finishes. Every metric equals the uninterrupted run's, and the record's
    `compare_train` counts both variants once: the sum of the seconds each printed in the slice that trained it
    (without the kept variant's seconds it would hold Glow's alone, which the last assertion tells apart)."""
    data_dir = os.environ["DL_DATA_DIR"]
    a = uninterrupted_record("image_generation/normalizing_flows", tmp_path, data_dir, uninterrupted_runs)
    sliced = run_slices(tmp_path / "sliced", data_dir, 12, 1, "image_generation/normalizing_flows")
    assert len(sliced) == 3, sliced
    assert "stopped at step 0 of 24 and 1 side run(s)" in sliced[0] and "finished in 3 slice(s)" in sliced[2]
    b = the_run_record(tmp_path / "sliced")
    assert a["metrics"] == b["metrics"]
    assert [(s["from_step"], s["to_step"]) for s in b["slices"]] == [(0, 0), (0, 12), (12, 24)]
    logs = slice_logs(tmp_path / "sliced", (1, 2, 3))
    seconds = {}
    for name in ("realnvp", "glow"):
        trained = [(k, float(m.group(1))) for k, log in enumerate(logs)
                   for m in re.finditer(rf"^{name}: \d+ steps, ([\d.]+) s of steps", log, re.MULTILINE)]
        assert [k for k, _ in trained] == [0 if name == "realnvp" else 1], (name, trained)  # trained once
        seconds[name] = trained[0][1]
    assert "realnvp: kept from an earlier slice" in logs[1]
    assert b["timings"]["compare_train"] == pytest.approx(seconds["realnvp"] + seconds["glow"], abs=0.02)
    assert b["timings"]["compare_train"] > seconds["glow"] + 0.02
    assert_train_seconds_are_the_slices_sum(b)


@pytest.mark.notebook
@pytest.mark.reuses_notebook_run("graph_learning/gcn_gat")
def test_gcn_gat_cut_inside_a_main_run_and_between_side_runs_ends_as_the_uninterrupted_run(
        tmp_path: Path, uninterrupted_runs: dict) -> None:
    """GCN/GAT at smoke: 40 main-run steps at most (2 GCNs and 2 GATs of 10 epochs), then 9 side runs (the MLP, 4
    ablations, 4 depths). Cut at 25 steps (inside the first GAT) and 5 side runs a slice: every metric equals the
    uninterrupted run's, no side run trains twice, and train_seconds is the sum of the slices'."""
    data_dir = os.environ["DL_DATA_DIR"]
    task = "graph_learning/gcn_gat"
    a = uninterrupted_record(task, tmp_path, data_dir, uninterrupted_runs)
    sliced = run_slices(tmp_path / "sliced", data_dir, 25, 5, task)
    assert len(sliced) == 3, sliced
    assert "stopped at step 25 of 40, resume with the same command" in sliced[0]
    assert "stopped at step 40 of 40 and 5 side run(s)" in sliced[1] and "finished in 3 slice(s)" in sliced[2]
    b = the_run_record(tmp_path / "sliced")
    assert a["metrics"] == b["metrics"]
    assert [(s["from_step"], s["to_step"], s.get("side_runs")) for s in b["slices"]] == [(0, 25, None), (25, 40, 5),
                                                                                           (40, 40, None)]
    logs = slice_logs(tmp_path / "sliced", (1, 2, 3))
    mlp, depth = re.compile(r"MLP \(features only\): +\d+%"), re.compile(r"depth/2 layers: +\d+%")  # progress bars
    assert mlp.search(logs[1]) and not mlp.search(logs[2])  # trained in slice 2, kept for slice 3
    assert not depth.search(logs[1]) and depth.search(logs[2])
    assert_train_seconds_are_the_slices_sum(b)
    assert all(b["timings"][span] > 0 for span in ("baselines", "ablations", "depth"))  # summed over the slices


@pytest.mark.notebook
@pytest.mark.reuses_notebook_run("image_classification/training_deep_nets")
def test_training_deep_nets_cut_inside_a_section_ends_as_the_uninterrupted_run(tmp_path: Path,
                                                                                uninterrupted_runs: dict) -> None:
    """Training deep nets has no single headline loop: its five sections (1b-5) are made of units (one variant's runs
    each: 12 in section 1b, 3 in section 2), each a side run; 14 to a slice cuts section 2 after its second unit.
    Each slice reports the sections done as its steps, no unit runs twice, every metric but the measured seconds
    equals the uninterrupted run's, train_seconds is the sum of the slices', and the sections' seconds sum to it."""
    data_dir = os.environ["DL_DATA_DIR"]
    task = "image_classification/training_deep_nets"
    a = uninterrupted_record(task, tmp_path, data_dir, uninterrupted_runs)
    sliced = run_slices(tmp_path / "sliced", data_dir, 0, 14, task)
    assert len(sliced) == 2, sliced
    assert "stopped at step 1 of 5 and 14 side run(s)" in sliced[0] and "finished in 2 slice(s)" in sliced[1]
    b = the_run_record(tmp_path / "sliced")
    timing = {"section_train_seconds"}  # measured, not computed
    assert {k: v for k, v in a["metrics"].items() if k not in timing} == \
        {k: v for k, v in b["metrics"].items() if k not in timing}
    assert [(s["from_step"], s["to_step"], s.get("side_runs")) for s in b["slices"]] == [(0, 1, 14), (1, 5, None)]
    logs = slice_logs(tmp_path / "sliced", (1, 2))
    assert "section 1:" in logs[0] and "section 1:" in logs[1]  # section 1's summary prints in the later slice too
    assert "section 2:" not in logs[0] and "section 2:" in logs[1]  # section 2 finished in slice 2
    for unit, slice_ in (("sigmoid/naive", 0), ("none lr=", 0), ("batchnorm lr=", 0), ("layernorm lr=", 1)):
        trained = re.compile(rf"  {re.escape(unit)}[^:]*: (validation accuracy|DIVERGED)")  # a run's own line
        assert trained.search(logs[slice_]) and not trained.search(logs[1 - slice_]), unit  # trained once
    assert_train_seconds_are_the_slices_sum(b)
    # every training step is in a section: the sections' seconds, section 2's from both slices (its start is kept in
    # the checkpoint), add up to the run's
    assert sum(b["metrics"]["section_train_seconds"].values()) == pytest.approx(b["train_seconds"], abs=0.01)


def holds_no_trainer(path: Path) -> bool:
    """Whether a diffusion checkpoint keeps its EMA alone: no raw weights, no optimiser, and so under twice the EMA's
    bytes (snapshots, history and random states add a little; the raw weights and AdamW's two moments would add
    three times the EMA's bytes)."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    ema_bytes = sum(t.numel() * t.element_size() for t in state["ema_model"].values())
    return not {"model", "opt"} & set(state) and path.stat().st_size < 2 * ema_bytes


@pytest.mark.notebook
@pytest.mark.parametrize("task", [pytest.param(task, marks=pytest.mark.reuses_notebook_run(task))
                                  for task in ("image_generation/ddpm", "image_generation/flow_matching")])
def test_a_diffusion_run_trained_too_late_for_its_tail_leaves_it_to_the_next_slice(tmp_path: Path, task: str,
                                                                                   uninterrupted_runs: dict) -> None:
    """A slice whose tail (9 and 7 min at full) cannot fit after training stops at the last step; its checkpoint
    keeps the EMA alone (the control: the same checkpoint with the trainer's state put back is refused); the next
    slice runs only the tail and ends with the uninterrupted run's metrics."""
    data_dir = os.environ["DL_DATA_DIR"]
    a = uninterrupted_record(task, tmp_path, data_dir, uninterrupted_runs)
    sliced = run_slices(tmp_path / "sliced", data_dir, 0, task=task, seconds=280, tail=400, max_slices=1)
    assert len(sliced) == 1
    total = int(re.search(r"stopped at step (\d+) of \1, resume", sliced[0]).group(1))
    finished = tmp_path / "sliced" / "checkpoints" / f"{task.replace('/', '__')}__smoke__mnist.pt"
    assert holds_no_trainer(finished)
    state = torch.load(finished, map_location="cpu", weights_only=False)
    opt = {"state": {i: {"exp_avg": t, "exp_avg_sq": t} for i, t in enumerate(state["ema_model"].values())}}
    torch.save({**state, "model": state["ema_model"], "opt": opt}, tmp_path / "control.pt")
    assert not holds_no_trainer(tmp_path / "control.pt")
    sliced += run_slices(tmp_path / "sliced", data_dir, 0, task=task, seconds=280, tail=400)
    assert "finished in 2 slice(s)" in sliced[1]
    b = the_run_record(tmp_path / "sliced")
    timing = set(tomllib.loads((REPO_ROOT / task / "task.toml").read_text()).get("resume_test_timing_metrics", []))
    assert {k: v for k, v in a["metrics"].items() if k not in timing} == \
        {k: v for k, v in b["metrics"].items() if k not in timing}
    assert [(s["from_step"], s["to_step"]) for s in b["slices"]] == [(0, total), (total, total)]


def test_an_unfinished_run_that_cannot_resume_now_does_not_block_the_next_task(tmp_path: Path, monkeypatch) -> None:
    """A trained DDPM waits for its 9-minute tail, which a 540-s command never holds, and a run whose notebook code
    changed cannot resume at all: `next` used to stop at either, loan after loan; it now says why and goes on."""
    ddpm, vae, gan = "image_generation/ddpm", "image_generation/vae", "image_generation/gan"
    notebooks = campaign.gpu_check.notebooks()
    tasks = {ddpm: {"min_slice_minutes": 3, "tail_minutes": 9, "travels_after_training": True},
             gan: {"min_slice_minutes": 3}, vae: {"min_slice_minutes": 3}}
    for task, code, to_step in ((ddpm, campaign.notebook_code_sha256(notebooks[ddpm]), 10), (gan, "0" * 64, 5)):
        folder = tmp_path / task.replace("/", "__")
        folder.mkdir()
        (folder / "state.json").write_text(json.dumps({
            "task": task, "preset": "full", "notebook_code_sha256": code, "finished": False,
            "slices": [{"from_step": 0, "to_step": to_step, "of_steps": 10}]}))
    ran = []

    def fake_slice(task, seconds, state_dir, data_dir, **kwargs):
        ran.append(task)
        state_dir.mkdir(exist_ok=True)
        (state_dir / "state.json").write_text(json.dumps({"finished": True}))
        return 0
    monkeypatch.setattr(campaign, "campaign", lambda: tasks)
    monkeypatch.setattr(campaign, "run_slice", fake_slice)
    monkeypatch.setattr(campaign, "plan", lambda tasks, root, budget: [(t, "resume") for t in (ddpm, gan)] +
                        ([] if (root / vae.replace("/", "__")).exists() else [(vae, "start")]))
    marker = tmp_path / "packed"
    assert campaign.run_campaign(530, tmp_path, tmp_path, "cuda", save=False, after_slice=f"touch {marker}") == 0
    assert ran == [vae]
    assert marker.exists()  # loan.sh's packing ran after the slice, not only when the whole command ended
    assert campaign.cannot_resume(ddpm, tasks[ddpm], tmp_path / ddpm.replace("/", "__"), 600) is None  # the control
    assert "code changed" in campaign.cannot_resume(gan, tasks[gan], tmp_path / gan.replace("/", "__"), 600)


def test_a_named_task_needs_its_tail_or_its_whole_run_in_one_command(tmp_path: Path) -> None:
    """loan.sh asks `campaign.py need` before each named task. It used to read `min_slice_minutes` alone, so a
    diffusion run's 9-minute tail or a run that cannot travel could start in a command too short for it, be killed
    at the command's limit, and lose its record."""
    tasks = campaign.campaign()
    ddpm, bpe, gan = "image_generation/ddpm", "text_generation/bpe_gpt", "image_generation/gan"

    def need(task: str) -> int:
        out = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "campaign.py"), "need", task, "--root",
                              str(tmp_path)], capture_output=True, text=True, check=True, timeout=60).stdout
        return int(out)
    assert tasks[gan].get("travels", True) and not tasks[gan].get("travels_after_training")
    # the control: a run that travels needs a slice, not its whole estimate
    assert need(gan) == 60 * tasks[gan]["min_slice_minutes"] < 60 * tasks[gan]["estimate_minutes"]
    assert need(bpe) == 60 * tasks[bpe]["estimate_minutes"] > 60 * tasks[ddpm]["min_slice_minutes"]
    assert need(ddpm) == 60 * tasks[ddpm]["train_minutes"]  # its training on one machine
    folder = tmp_path / ddpm.replace("/", "__")
    folder.mkdir()
    (folder / "state.json").write_text(json.dumps({"finished": False, "slices": [{"to_step": 10, "of_steps": 10}]}))
    assert need(ddpm) == 60 * max(tasks[ddpm]["min_slice_minutes"], tasks[ddpm]["tail_minutes"])  # its tail
    for task, entry in tasks.items():  # `next`'s plan and `need` agree on what starting a task takes
        assert campaign.first_slice_minutes(entry) == campaign.slice_need_minutes(task, entry, tmp_path / "none")


def test_a_first_slice_killed_at_its_limit_leaves_a_state_that_resumes(tmp_path: Path, monkeypatch) -> None:
    """A first slice killed before it could stop used to leave no state.json: loan.sh did not pack its folder, and
    the next slice started again from step 0 although periodic checkpoints were there."""
    state_dir, scripts = tmp_path / "state", []

    def killed(args, **kwargs):
        scripts.append(Path(args[1]).read_text())
        (state_dir / "checkpoints").mkdir(exist_ok=True)
        (state_dir / "checkpoints" / "run.pt").write_bytes(b"periodic checkpoint")
        raise subprocess.TimeoutExpired(args, kwargs.get("timeout"))
    monkeypatch.setattr(campaign.subprocess, "run", killed)
    task = "templates/task_template"
    assert campaign.run_slice(task, 60, state_dir, tmp_path, device="cpu", save=False) == 1
    state = json.loads((state_dir / "state.json").read_text())
    assert state["slices"] == [] and not state["finished"]  # there, so loan.sh packs the folder
    assert campaign.run_slice(task, 60, state_dir, tmp_path, device="cpu", save=False) == 1
    assert campaign.RESUME_FALSE in scripts[0] and campaign.RESUME_TRUE in scripts[1]  # the control: the first started


def test_a_task_is_started_only_where_its_data_and_packages_are(tmp_path: Path, monkeypatch) -> None:
    """Prepared with LOAN_FASHION=0, a loan has no Fashion-MNIST: `next` used to start the MLP there, which failed
    offline and ended the command. Every task names what it reads (`needs`), and the machine is asked."""
    monkeypatch.setattr("common.data.DEBIAN_FASHION_MNIST", tmp_path / "no-debian-folder")
    monkeypatch.setenv("DL_EXTRA_DATA_DIRS", str(tmp_path / "extra"))  # read-only folders the notebooks also search
    (tmp_path / "extra").mkdir()
    (tmp_path / "extra" / "tinyshakespeare.txt").write_text("")
    (tmp_path / "mnist.npz").write_bytes(b"")
    (tmp_path / "planetoid").mkdir()
    entry = {"needs": ["mnist.npz", "planetoid", "cifar10.npz", "fashion_mnist", "module:json",
                       "module:no_such_package_here"]}
    assert campaign.missing_inputs(entry, tmp_path) == ["cifar10.npz", "fashion_mnist", "module:no_such_package_here"]
    (tmp_path / "no-debian-folder").mkdir()  # Debian's dataset-fashion-mnist, as loan.sh lays it out
    assert campaign.missing_inputs(entry, tmp_path) == ["cifar10.npz", "module:no_such_package_here"]
    assert campaign.missing_inputs({"needs": ["tinyshakespeare.txt"]}, tmp_path) == [], "found in the extra folder"
    monkeypatch.delenv("DL_EXTRA_DATA_DIRS")
    assert campaign.missing_inputs({"needs": ["tinyshakespeare.txt"]}, tmp_path) == ["tinyshakespeare.txt"]
    for task, entry in campaign.campaign().items():
        assert entry.get("needs"), f"{task} says nothing of what it reads"


def test_a_record_in_slices_gets_the_memory_peaks_of_every_slice() -> None:
    """Each slice's process measures its own CUDA peaks; the record, written by the last, saw only its own (here: no
    training at all, as when a diffusion run's tail runs in a slice of its own). Folded: the maximum of all."""
    first = {"train": {"allocated_bytes": 700, "reserved_bytes": 800}, "compile": {"allocated_bytes": 750,
                                                                                  "reserved_bytes": 760}}
    last = {"eval": {"allocated_bytes": 300, "reserved_bytes": 900}, "sample": {"allocated_bytes": 1000,
                                                                              "reserved_bytes": 1000}}
    record = {"peak_memory_by_span": last, "train_peak_memory": None, "peak_memory_bytes": 1000}
    slices = [{"peak_memory": first, "process_peak_bytes": 1200}, {"peak_memory": last, "process_peak_bytes": 1000}]
    campaign.fold_slice_memory(record, slices)
    assert record["train_peak_memory"] == {"allocated_bytes": 750, "reserved_bytes": 800}
    assert record["peak_memory_by_span"] == {**first, **last} and record["peak_memory_bytes"] == 1200
    cpu = {"peak_memory_by_span": None, "train_peak_memory": None, "peak_memory_bytes": 5}
    campaign.fold_slice_memory(cpu, [{"to_step": 5}, {"to_step": 10}])  # the control: nothing to fold off CUDA
    assert cpu == {"peak_memory_by_span": None, "train_peak_memory": None, "peak_memory_bytes": 5}


@pytest.mark.parametrize("slices, expected", [(["bf16", "fp32"], "bf16"), (["fp32", "fp32"], "fp32"),
                                              (["bf16", "fp16"], "bf16+fp16"), (["bf16+fp16", "bf16"], "bf16+fp16")])
def test_a_record_in_slices_names_every_precision_its_slices_ran(slices: list[str], expected: str) -> None:
    """A slice that trained nothing (a sampling tail) autocasts nothing and reports fp32: the run ran in bf16 all
    the same. A run resumed on a GPU without bf16 ran in both. All fp32 is the control."""
    record = {"precision": slices[-1]}
    campaign.fold_slice_precision(record, [{"precision": p} for p in slices])
    assert record["precision"] == expected
    old = {"precision": "bf16"}
    campaign.fold_slice_precision(old, [{"to_step": 5}])  # slices from before 2026-11-30 name no precision
    assert old == {"precision": "bf16"}


def test_a_named_task_is_not_started_without_its_data(tmp_path: Path, monkeypatch, capsys) -> None:
    """`loan.sh run BUDGET TASK` runs `campaign.py run TASK`, which asks for the task's `needs` as `next` does: the MLP
    without Fashion-MNIST (a loan prepared with LOAN_FASHION=0) is said and skipped. The control: with its data there,
    the slice starts."""
    monkeypatch.setattr("common.data.DEBIAN_FASHION_MNIST", tmp_path / "no-debian-folder")
    monkeypatch.delenv("DL_EXTRA_DATA_DIRS", raising=False)
    started = []
    monkeypatch.setattr(campaign, "run_slice", lambda task, *args: started.append(task) or 0)
    argv = ["run", "image_classification/mlp_backprop", "--seconds", "300", "--state", str(tmp_path / "state"),
            "--data-dir", str(tmp_path), "--device", "cpu"]
    assert campaign.main(argv) == 1 and started == []
    assert "skip image_classification/mlp_backprop: this machine lacks fashion_mnist" in capsys.readouterr().out
    (tmp_path / "no-debian-folder").mkdir()
    assert campaign.main(argv) == 0 and started == ["image_classification/mlp_backprop"]


def test_the_campaign_passes_over_missing_data_and_goes_on_after_a_failed_slice(tmp_path: Path, monkeypatch) -> None:
    tasks = {"a/no_data": {"needs": ["absent.npz"]}, "b/fails": {"needs": []}, "c/works": {"needs": []}}
    ran = []

    def fake_slice(task, seconds, state_dir, data_dir, **kwargs):
        ran.append(task)
        state_dir.mkdir(exist_ok=True)
        campaign.save_state(state_dir, {"finished": task == "c/works"})
        return 1 if task == "b/fails" else 0
    monkeypatch.setattr(campaign, "campaign", lambda: tasks)
    monkeypatch.setattr(campaign, "run_slice", fake_slice)
    monkeypatch.setattr(campaign, "plan", lambda tasks, root, budget: [
        (t, "resume" if campaign.state_folder(root, t).exists() else "start") for t in tasks
        if not (campaign.run_state(campaign.state_folder(root, t)) or {}).get("finished")])
    assert campaign.run_campaign(530, tmp_path, tmp_path, "cuda", save=False) == 1  # a failure is still reported
    assert ran == ["b/fails", "c/works"]  # the failed slice no longer ends the command



def test_a_budget_counts_from_the_commands_start_not_from_after_its_imports(tmp_path: Path, monkeypatch) -> None:
    """On a fresh machine the first `import torch` takes seconds that a loan's command limit counts: main() starts the
    clock before it and hands it on, and run_campaign plans with what is left of the budget since then."""
    seen: list[float] = []
    monkeypatch.setattr(campaign, "plan", lambda tasks, root, budget: seen.append(budget) or [])
    campaign.run_campaign(600, tmp_path, tmp_path, "cpu", False, started=time.time() - 100)
    campaign.run_campaign(600, tmp_path, tmp_path, "cpu", False)  # the control: a clock that starts now
    assert 499 < seen[0] <= 500 and 599 < seen[1] <= 600
    handed: dict = {}
    monkeypatch.setattr(campaign, "run_campaign", lambda *args: handed.update(started=args[-1]) or 0)
    before = time.time()
    campaign.main(["next", "--budget", "600", "--root", str(tmp_path), "--device", "cpu"])
    assert before <= handed["started"] <= time.time()


def test_another_seed_runs_in_its_own_state_folder_and_its_record_lands_beside_the_headline(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A second seed (DL_SEED, which the notebooks read) of a task whose headline run missed its target: its state
    folder, its record's folder (results/<task>/seed_<N>/, which neither the README nor `next` reads as the
    headline) and its state are its own; a state of the other seed is refused, and `next` refuses to run with a
    seed set. Controls: without DL_SEED the folders are the headline's."""
    monkeypatch.setattr(campaign, "REPO_ROOT", tmp_path)
    monkeypatch.delenv("DL_SEED", raising=False)
    task = "text_generation/char_gpt"
    headline_state = campaign.state_folder(tmp_path, task)
    assert headline_state.name == "text_generation__char_gpt"
    assert campaign.record_target(task, "r.json") == tmp_path / "results" / task / "r.json"
    headline_state.mkdir()
    campaign.save_state(headline_state, campaign.load_state(headline_state, task, "full", "code"))
    monkeypatch.setenv("DL_SEED", "1338")
    assert campaign.state_folder(tmp_path, task).name == "text_generation__char_gpt__seed_1338"
    assert campaign.record_target(task, "r.json") == tmp_path / "results" / task / "seed_1338" / "r.json"
    assert campaign.load_state(tmp_path / "empty", task, "full", "code")["seed"] == 1338
    with pytest.raises(SystemExit, match="seed default"):
        campaign.load_state(headline_state, task, "full", "code")
    with pytest.raises(SystemExit, match="DL_SEED is set"):
        campaign.run_campaign(60, tmp_path, tmp_path, "cpu", save=False)
    monkeypatch.setenv("DL_SEED", "x")
    with pytest.raises(SystemExit, match="not an integer"):
        campaign.env_seed()


def slice_writing_record(root: Path, monkeypatch: pytest.MonkeyPatch, record: dict, name: str, state: Path) -> int:
    """One `campaign.run_slice` of a stand-in task field/task under `root` (REPO_ROOT) whose "notebook" only writes
    `record` as `name` into DL_RUNS_DIR; returns the slice's exit code."""
    notebook = root / "field" / "task" / "task.ipynb"
    notebook.parent.mkdir(parents=True, exist_ok=True)
    notebook.write_text(json.dumps({"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    monkeypatch.setattr(campaign, "REPO_ROOT", root)
    monkeypatch.setattr(campaign.gpu_check, "notebooks", lambda: {"field/task": notebook})
    monkeypatch.setattr(campaign, "slice_script", lambda path, resume: (
        "import os, pathlib\n"
        f"pathlib.Path(os.environ['DL_RUNS_DIR'], {name!r}).write_text({json.dumps(record)!r})\n"))
    return campaign.run_slice("field/task", 60, state, root, "smoke", "cpu")


def test_a_record_of_another_seed_than_dl_seed_asks_is_refused(tmp_path: Path, monkeypatch, capsys) -> None:
    """A notebook that does not read DL_SEED runs its own seed: its record would land in results/<task>/seed_<N>/
    under a seed that never ran. The slice ends with exit 1 and saves nothing. Control: the same slice whose
    record has the seed asked for is saved there."""
    monkeypatch.setenv("DL_SEED", "5")

    def run(seed_in_record: int) -> tuple[int, Path]:
        record = {"config": {"seed": seed_in_record}, "device": "cpu", "train_seconds": 1.0, "timings": {}}
        state = tmp_path / "state" / f"ran_{seed_in_record}"
        return slice_writing_record(tmp_path, monkeypatch, record, f"r{seed_in_record}.json", state), state

    rc, state = run(0)
    assert rc == 1 and not (tmp_path / "results").exists()
    assert "DL_SEED=5, but the record's config has seed 0" in capsys.readouterr().out
    assert not json.loads((state / "state.json").read_text())["finished"]
    rc, state = run(5)  # the control
    assert rc == 0 and (tmp_path / "results" / "field" / "task" / "seed_5" / "r5.json").is_file()
    assert json.loads((state / "state.json").read_text())["finished"]


def test_a_record_of_a_cpu_rehearsal_of_the_gpu_path_is_never_saved(tmp_path: Path, monkeypatch, capsys) -> None:
    """DL_REHEARSE_GPU passes through campaign.py to the notebook; the record it writes (`gpu_rehearsal`) is no
    measurement: the slice ends with exit 1 and results/ stays empty. Control: the same record without the flag."""
    monkeypatch.delenv("DL_SEED", raising=False)
    for rehearsal, rc_wanted in ((True, 1), (False, 0)):
        record = {"config": {"seed": 0}, "device": "cpu", "train_seconds": 1.0, "timings": {},
                  **({"gpu_rehearsal": True} if rehearsal else {})}
        rc = slice_writing_record(tmp_path, monkeypatch, record, "r.json", tmp_path / "state" / str(rehearsal))
        assert rc == rc_wanted and (tmp_path / "results" / "field" / "task" / "r.json").is_file() == (not rehearsal)
    assert "a CPU rehearsal of the GPU path" in capsys.readouterr().out


def test_a_slice_that_stops_early_leaves_the_rest_of_the_budget_to_the_next_task(tmp_path: Path, monkeypatch) -> None:
    """A slice may stop long before its deadline: a side run (a training-deep-nets section) too long for the time
    left is not started. The command used to end there, leaving minutes of a loan unused; now the stopped task's
    turn ends and the next task that fits gets the rest. Control: a slice that used the budget leaves nothing, so
    nothing more starts."""
    tasks = {"a/sections": {"needs": []}, "b/next": {"needs": []}}

    def run(uses: float) -> list[str]:
        ran: list[str] = []
        root = tmp_path / f"root_{uses}"

        def fake_slice(task, seconds, state_dir, data_dir, **kwargs):
            ran.append(task)
            state_dir.mkdir(parents=True, exist_ok=True)
            campaign.save_state(state_dir, {"finished": False})
            clock[0] += uses * seconds  # the fake clock: this slice used that share of what was left
            return 0
        clock = [time.time()]
        monkeypatch.setattr(campaign.time, "time", lambda: clock[0])
        monkeypatch.setattr(campaign, "run_slice", fake_slice)
        monkeypatch.setattr(campaign, "plan", lambda tasks, root, budget: [
            (t, "resume" if campaign.state_folder(root, t).exists() else "start") for t in tasks if budget >= 180])
        assert campaign.run_campaign(540, root, tmp_path, "cuda", save=False, started=clock[0]) == 0
        return ran
    monkeypatch.setattr(campaign, "campaign", lambda: tasks)
    monkeypatch.setattr(campaign, "missing_inputs", lambda entry, data_dir: [])
    assert run(0.4) == ["a/sections", "b/next"]  # stopped after 216 s of 540: the next task gets the 324 s left
    assert run(0.99) == ["a/sections"]  # the control: at its deadline, nothing more fits
