"""Side runs kept across slices (common.slicing.SideRuns), tested on the CPU."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from common import slicing
from common.checkpoint import CheckpointError
from common.slicing import SideRuns


class FakeClock:
    device = "cpu"

    def __getitem__(self, name: str) -> float:
        return 7.0


@pytest.fixture
def sandbox(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A fresh checkpoint folder and a process that has not stopped a slice, outside the slice runner."""
    slicing._reset()
    monkeypatch.setenv("DL_CHECKPOINT_DIR", str(tmp_path / "checkpoints"))
    for name in (slicing.DEADLINE_ENV, slicing.STEPS_ENV, slicing.SIDE_RUNS_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(slicing.MARKER_ENV, str(tmp_path / "marker.json"))
    yield tmp_path
    slicing._reset()


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
    assert (marker["step"], marker["of"], marker["side_runs"], marker["train_seconds"]) == (30, 30, 2, 7.0)
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
    assert (marker["step"], marker["of"], marker["train_seconds"]) == (40, 40, 7.0)
