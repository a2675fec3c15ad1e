import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from torch import nn

import common
import common.checkpoint
import common.precision
from common import (CheckpointError, RunClock, checkpoint_path, load_checkpoint, plot_curves, save_checkpoint,
                    show_images, write_run_record)


def test_checkpoint_round_trip_resumes_training_state(tmp_path):
    model = nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    path = save_checkpoint(tmp_path / "ckpt" / "last.pt", {"model": model.state_dict(), "opt": opt.state_dict(), "step": 7})
    state = load_checkpoint(path)
    model2 = nn.Linear(3, 2)
    opt2 = torch.optim.AdamW(model2.parameters(), lr=1e-3)
    model2.load_state_dict(state["model"])
    opt2.load_state_dict(state["opt"])
    assert state["step"] == 7
    assert torch.equal(model2.weight, model.weight)
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temporary file left behind


def test_missing_checkpoint_means_fresh_start(tmp_path):
    assert load_checkpoint(tmp_path / "none.pt") is None


class Evil:
    def __reduce__(self):
        return (print, ("code ran",))


def test_load_refuses_arbitrary_objects_in_one_line_without_unsafe_advice(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"x": Evil()}, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message and "resume=False" in message and "\n" not in message
    assert "weights_only" not in message  # torch's own text advises weights_only=False, which would run code
    assert "safe loading refuses (Unsupported global: GLOBAL" in message and "print" in message  # the cause


def test_a_truncated_checkpoint_says_so_and_keeps_the_cause(tmp_path):
    path = tmp_path / "last.pt"
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"is truncated or corrupt \(EOFError: the file ends early\)"):
        load_checkpoint(path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_device_error_is_not_called_corruption(tmp_path):
    path = save_checkpoint(tmp_path / "last.pt", {"w": torch.zeros(3)})
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, map_location="cuda")
    message = str(info.value)
    assert "cannot be loaded onto cuda" in message and "CUDA device" in message and "\n" not in message
    assert "Delete it" not in message and "corrupt" not in message and "weights_only" not in message


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_or_truncated_checkpoint_is_a_one_line_error(tmp_path, damage):
    path = save_checkpoint(tmp_path / "last.pt", {"model": nn.Linear(50, 50).state_dict(), "step": 3})
    raw = path.read_bytes()
    path.write_bytes({"truncate": raw[: len(raw) // 2], "garbage": os.urandom(2000), "empty": b""}[damage])
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message and "Delete it" in message and "\n" not in message
    assert "weights_only" not in message
    assert info.value.__cause__ is None  # the unpickler's traceback (and its advice) is not chained


def test_any_garbage_is_a_checkpoint_error_never_a_stray_exception(tmp_path):
    """Random bytes reach the unpickler in many ways (IndexError and KeyError among them): all are one line."""
    rng = np.random.default_rng(0)
    path = tmp_path / "last.pt"
    for _ in range(200):
        path.write_bytes(rng.bytes(2000))
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(path)
        assert "\n" not in str(info.value) and "weights_only" not in str(info.value)


@dataclasses.dataclass
class DemoConfig:
    width: int = 64
    lr: float = 1e-3
    betas: tuple = (0.9, 0.99)
    resume: bool = False
    compile: bool = False


def test_checkpoint_of_another_configuration_is_refused_naming_the_fields(tmp_path):
    path = save_checkpoint(tmp_path / "last.pt", {"step": 5}, config=dataclasses.asdict(DemoConfig()))
    same = DemoConfig(resume=True, compile=True)  # resuming and compiling do not change what was trained
    assert load_checkpoint(path, config=dataclasses.asdict(same))["step"] == 5
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, config=dataclasses.asdict(DemoConfig(width=32, lr=2e-3)))
    message = str(info.value)
    assert "width: checkpoint 64, now 32" in message and "lr: checkpoint 0.001, now 0.002" in message
    fields = message.split("(")[1].split(")")[0]
    assert "betas" not in fields and "resume" not in fields and "compile" not in fields
    assert load_checkpoint(path)["step"] == 5  # without a config nothing is compared


def test_save_fsyncs_the_file_before_the_atomic_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(common.checkpoint.os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(common.checkpoint.os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1])
    save_checkpoint(tmp_path / "last.pt", {"step": 1})
    assert events[:2] == ["fsync", "replace"]


def test_checkpoint_names_carry_task_preset_and_dataset(tmp_path, monkeypatch):
    monkeypatch.setenv("DL_CHECKPOINT_DIR", str(tmp_path))
    quick = checkpoint_path("image_generation/vae", "quick", "mnist")
    assert quick == tmp_path / "image_generation__vae__quick__mnist.pt"
    others = {checkpoint_path("image_generation/vae", "smoke", "mnist"),
              checkpoint_path("image_generation/vae", "quick", "fashion_mnist"),
              checkpoint_path("image_classification/resnet", "quick", "mnist"),
              checkpoint_path("image_generation/vae", "quick", "mnist", tag="best")}
    assert quick not in others and len(others) == 4


def test_failed_save_keeps_previous_checkpoint(tmp_path):
    path = save_checkpoint(tmp_path / "last.pt", {"step": 1})
    with pytest.raises(Exception):
        save_checkpoint(path, {"step": 2, "bad": lambda: None})  # lambdas cannot be pickled
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_run_clock_keeps_spans_apart_and_resumes():
    clock = RunClock(torch.device("cpu"))
    clock.start("train")
    time.sleep(0.1)
    clock.start("train")  # a no-op while train runs: consecutive steps are one span
    time.sleep(0.1)
    with clock.span("eval"):
        time.sleep(0.3)
    assert clock.current is None  # a span stops what ran before it, and stays stopped
    clock.start("train")
    time.sleep(0.05)
    clock.stop()
    # train slept 0.25 s and eval 0.3 s: eval counted in train would make it at least 0.55 s. The upper bounds
    # leave a loaded 2-core machine 0.25 s of slack per span (sleeps overshoot, never undershoot).
    assert 0.25 <= clock["train"] < 0.5 and 0.3 <= clock["eval"] < 0.55 and clock["compile"] == 0.0
    resumed = RunClock()
    resumed.load_state_dict(clock.state_dict())
    assert resumed["train"] == clock["train"]


def test_run_clock_adds_time_measured_elsewhere_to_a_span():
    """`add` (a side run kept from an earlier slice): its seconds join the span once, a running span keeps running,
    and a span never seen before starts at them; a negative time is refused."""
    clock = RunClock(torch.device("cpu"))
    clock.add("compare_train", 2.5)
    clock.add("compare_train", 1.25)
    assert clock["compare_train"] == 3.75 and clock.state_dict() == {"compare_train": 3.75}
    clock.start("train")
    clock.add("train", 10.0)
    assert clock.current == "train" and 10.0 <= clock["train"] < 10.5
    clock.stop()
    assert 10.0 <= clock.state_dict()["train"] < 10.5
    with pytest.raises(ValueError, match="cannot lose time"):
        clock.add("eval", -1.0)
    assert clock["eval"] == 0.0


def test_run_record_has_the_required_fields(runs_tmp):
    clock = RunClock()
    with clock.span("train"):
        sum(range(10000))
    with clock.span("eval"):
        pass
    assert clock["train"] > 0
    path = write_run_record("image_generation/vae", "smoke", torch.device("cpu"), clock,
                            {"fid": np.float64(3.5), "loss": torch.tensor(1.25), "bad": float("nan")},
                            data="MNIST (8,000 train / 2,000 test images)", config={"lr": 1e-3})
    assert path.parent == runs_tmp and "__smoke__cpu__" in path.name
    record = json.loads(path.read_text())
    for key in ("task", "preset", "device", "device_type", "data", "train_seconds", "peak_memory_bytes",
                "metrics", "versions", "finished_at", "config", "timing", "timings", "code", "cpu", "gpu"):
        assert key in record
    assert record["task"] == "image_generation/vae" and record["preset"] == "smoke"
    assert record["timing"] == common.TIMING_POLICY and record["train_seconds"] == round(clock["train"], 2)
    assert set(record["timings"]) == {"train", "eval", "notebook"}
    assert record["timings"]["notebook"] >= record["train_seconds"]
    assert len(record["code"]["notebook_code_sha256"]) == 64  # the VAE notebook's code cells
    assert record["metrics"] == {"fid": 3.5, "loss": 1.25, "bad": "nan"}
    assert record["versions"]["torch"] == torch.__version__
    assert record["peak_memory_bytes"] > 10 * 2**20  # a Python process with torch uses more than 10 MiB
    assert record["cpu_kernels"]["capability"] == torch.backends.cpu.get_cpu_capability()
    if Path("/proc/cpuinfo").is_file():  # Linux: the family and model that tell two CPUs of one name apart
        assert record["cpu_kernels"]["cpu_family"].isdigit() and record["cpu_kernels"]["model"].isdigit()


def test_show_images_accepts_uint8_and_float():
    images = torch.randint(0, 255, (10, 1, 28, 28), dtype=torch.uint8)
    fig = show_images(images, nrow=4, titles=[str(i) for i in range(10)])
    assert len(fig.axes) == 1, "one picture on one pair of axes, not one axes per image"
    grid = fig.axes[0].images[0].get_array()
    gap, band = 2, round(0.3 * 28)  # 28 // 14 white pixels between images, a caption band above each row
    assert grid.shape == (3 * (band + 28 + gap) - gap, 4 * (28 + gap) - gap, 3)  # 3 rows of 4
    top, left = 2 * (band + 28 + gap) + band, 1 * (28 + gap)  # image 9: row 2, column 1
    assert np.allclose(grid[top:top + 28, left:left + 28, 0], images[9, 0].numpy() / 255)
    assert np.allclose(grid[top:top + 28, left:left + 28, 0], grid[top:top + 28, left:left + 28, 2])  # grey
    assert (grid[top:top + 28, left - gap:left] == 1).all(), "the gap between two images is white"
    assert (grid[top:top + 28, left + 2 * (28 + gap):] == 1).all(), "the missing 12th image is white"
    assert sorted(t.get_text() for t in fig.axes[0].texts) == sorted(str(i) for i in range(10))
    plt.close(fig)
    colour = torch.rand(3, 3, 32, 32) * 1.5
    fig = show_images(colour, title="colour")
    grid = fig.axes[0].images[0].get_array()
    assert grid.shape == (32, 3 * 32 + 2 * 2, 3)
    assert np.allclose(grid[:, 34:66], colour[1].clamp(0, 1).permute(1, 2, 0).numpy())  # floats clipped to [0, 1]
    assert fig._suptitle.get_text() == "colour"
    plt.close(fig)


def test_a_figure_names_preset_device_and_clock_once_both_are_known(monkeypatch):
    import io

    import common.plot
    from common.device import get_device
    from common.preset import get_preset
    monkeypatch.setattr(common.plot, "_RUN", {})
    monkeypatch.setitem(plt.rcParams, "figure.hooks", [])

    def png_height(fig) -> int:
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", bbox_inches="tight")  # as the inline backend shows a figure
        plt.close(fig)
        return plt.imread(io.BytesIO(buffer.getvalue())).shape[0]

    monkeypatch.setenv("DL_PRESET", "quick")
    get_preset()
    bare, ax = plt.subplots(figsize=(3, 2))
    ax.plot([0, 1], [1, 0])
    assert bare.texts == []  # the control: the device is not known yet, so no footer
    bare_height = png_height(bare)
    device = get_device(verbose=False)
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([0, 1], [1, 0])
    (footer,) = fig.texts
    assert footer.get_text().startswith(f"quick preset · {common.describe_device(device)} · made ")
    assert footer.get_text().endswith(" min after the notebook started")
    assert png_height(fig) > bare_height  # the saved picture keeps the line under the figure


def test_plot_curves_draws_each_curve():
    fig = plot_curves({"train": ([0, 1, 2], [3.0, 2.0, 1.0]), "val": ([0, 2], [3.1, 1.5])}, logy=True)
    ax = fig.axes[0]
    assert [line.get_label() for line in ax.lines] == ["train", "val"]
    assert [list(line.get_xdata()) for line in ax.lines] == [[0, 1, 2], [0, 2]]  # each curve its own steps
    assert [list(line.get_ydata()) for line in ax.lines] == [[3.0, 2.0, 1.0], [3.1, 1.5]]
    assert ax.get_yscale() == "log"
    plt.close(fig)


# ---------------------------------------------------------------- CUDA memory per span, with a fake allocator


class FakeCudaMemory:
    """torch.cuda's memory statistics for one fake GPU: `use(n)` allocates n bytes (reserved grows with it, and
    stays), `free(n)` releases them; peaks are kept until `reset_peak_memory_stats`."""

    def __init__(self, monkeypatch):
        self.allocated = self.reserved = self.max_allocated = self.max_reserved = 0
        self.resets = 0
        for name in ("max_memory_allocated", "max_memory_reserved", "reset_peak_memory_stats", "synchronize"):
            monkeypatch.setattr(torch.cuda, name, getattr(self, name))
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA GeForce RTX 4090")
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 9))
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)

    def use(self, n):
        self.allocated += n
        self.reserved = max(self.reserved, self.allocated)
        self.max_allocated, self.max_reserved = max(self.max_allocated, self.allocated), max(self.max_reserved, self.reserved)

    def free(self, n):
        self.allocated -= n

    def max_memory_allocated(self, device=None):
        return self.max_allocated

    def max_memory_reserved(self, device=None):
        return self.max_reserved

    def reset_peak_memory_stats(self, device=None):
        self.resets += 1
        self.max_allocated, self.max_reserved = self.allocated, self.reserved

    def synchronize(self, device=None):
        pass


MiB = 2**20


def test_a_slice_that_stops_mid_span_hands_on_its_memory_peak(monkeypatch, tmp_path):
    """A slice stops inside the `train` span and its process ends: the marker carries that span's peak so far (which
    `peak_memory` gets only when the span stops), so that scripts/campaign.py can fold it into the last slice's
    record; read without stopping the span, and with the GPU synchronised first."""
    from common import slicing

    gpu = FakeCudaMemory(monkeypatch)
    monkeypatch.setattr(common.precision, "_AUTOCAST_RAN", set())  # as in a fresh process: no autocast has run
    synced = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: synced.append(device))
    clock = RunClock(torch.device("cuda"))
    clock.start("train")
    gpu.use(700 * MiB), gpu.free(700 * MiB)
    assert clock.peak_memory == {}, "the control: a running span's peak is not in peak_memory yet"
    assert clock.peak_memory_so_far()["train"] == {"allocated_bytes": 700 * MiB, "reserved_bytes": 700 * MiB}
    assert clock.current == "train" and clock.peak_memory == {}
    marker = tmp_path / "marker.json"
    monkeypatch.setenv(slicing.MARKER_ENV, str(marker))
    monkeypatch.setattr(slicing, "_state", dict(slicing._state))  # the stop stays inside this test
    synced.clear()
    slicing._stop(clock, 5, 10, "deadline")
    stop = json.loads(marker.read_text())
    assert synced, "the queued GPU work is waited for before the marker's seconds and peaks are read"
    assert stop["peak_memory"]["train"]["allocated_bytes"] == 700 * MiB and stop["process_peak_bytes"] >= 700 * MiB
    assert stop["device"] == "NVIDIA GeForce RTX 4090"
    assert stop["precision"] == "fp32" and "compile" in stop  # this process's own, for campaign.py to fold
    cpu_clock = RunClock(torch.device("cpu"))  # the control: off CUDA the marker has no memory fields
    cpu_clock.start("train")
    slicing._stop(cpu_clock, 5, 10, "deadline")
    assert "peak_memory" not in json.loads(marker.read_text())


def test_each_span_records_its_own_cuda_memory_peak(monkeypatch, runs_tmp):
    gpu = FakeCudaMemory(monkeypatch)
    monkeypatch.setattr(common.precision, "_AUTOCAST_RAN", set())  # as in a fresh kernel: no autocast has run
    cuda = torch.device("cuda")
    gpu.use(100 * MiB)  # the model and the data, before any span
    clock = RunClock(cuda)
    clock.start("train")
    gpu.use(400 * MiB), gpu.free(400 * MiB)  # activations of a training step
    clock.start("train")  # the next step: the same span, no reset
    with clock.span("eval"):
        gpu.use(50 * MiB), gpu.free(50 * MiB)
    with clock.span("checkpoint"):
        pass
    clock.start("train")
    gpu.use(300 * MiB), gpu.free(300 * MiB)  # a smaller peak later on keeps the span's maximum
    with clock.span("sample"):
        gpu.use(1000 * MiB), gpu.free(1000 * MiB)  # sampling needs more than training
    assert clock.peak_memory["train"] == {"allocated_bytes": 500 * MiB, "reserved_bytes": 500 * MiB}
    assert clock.peak_memory["eval"] == {"allocated_bytes": 150 * MiB, "reserved_bytes": 500 * MiB}
    assert clock.peak_memory["checkpoint"]["allocated_bytes"] == 100 * MiB
    assert clock.peak_memory["sample"]["allocated_bytes"] == 1100 * MiB
    assert clock.train_peak_memory() == {"allocated_bytes": 500 * MiB, "reserved_bytes": 500 * MiB}
    path = write_run_record("templates/task_template", "smoke", cuda, clock, {"loss": 1.0}, data="none")
    record = json.loads(path.read_text())
    assert record["train_peak_memory"] == {"allocated_bytes": 500 * MiB, "reserved_bytes": 500 * MiB}
    assert record["peak_memory_by_span"]["sample"]["reserved_bytes"] == 1100 * MiB
    assert record["peak_memory_bytes"] == 1100 * MiB  # the old field: the whole notebook's allocated peak
    # the fake 4090 supports bf16, but nothing here entered common.autocast: the forward passes ran in fp32
    assert record["precision"] == "fp32" and record["gpu"] == "NVIDIA GeForce RTX 4090"


def test_the_record_takes_the_precision_its_other_processes_ran_in(monkeypatch, runs_tmp):
    """A run whose training ran in torchrun's ranks (bf16 there) must not record the notebook's own fp32."""
    monkeypatch.setattr(common.precision, "_AUTOCAST_RAN", set())  # the notebook process never entered autocast
    clock = RunClock(torch.device("cpu"))
    ranks = write_run_record("templates/task_template", "smoke", torch.device("cpu"), clock, {"loss": 1.0},
                             data="none", precision="bf16")
    own = write_run_record("templates/task_template", "smoke", torch.device("cpu"), clock, {"loss": 1.0}, data="none")
    assert json.loads(ranks.read_text())["precision"] == "bf16"
    assert json.loads(own.read_text())["precision"] == "fp32"  # the control: without it, this process's own


def test_a_second_clock_does_not_erase_the_first_ones_peak(monkeypatch):
    gpu = FakeCudaMemory(monkeypatch)
    cuda = torch.device("cuda")
    main, side = RunClock(cuda), RunClock(cuda)
    main.start("train")
    gpu.use(700 * MiB), gpu.free(700 * MiB)
    with side.span("experiment"):  # resets the peak statistics while main's train span runs
        gpu.use(200 * MiB), gpu.free(200 * MiB)
    main.stop()
    assert main.peak_memory["train"]["allocated_bytes"] == 700 * MiB
    assert side.peak_memory["experiment"]["allocated_bytes"] == 200 * MiB


def test_two_names_of_one_gpu_share_its_peak(monkeypatch):
    """`get_device()` says "cuda", a tensor's `.device` "cuda:0" (the GCN/GAT and ViT notebooks time side runs with
    the latter): a side clock's reset must hand the main clock's peak on, whatever the spelling."""
    gpu = FakeCudaMemory(monkeypatch)
    monkeypatch.setattr(common.record, "_PROCESS_PEAK", {})  # no other test's peaks
    main, side = RunClock(torch.device("cuda")), RunClock(torch.device("cuda", 0))
    main.start("train")
    gpu.use(2000 * MiB), gpu.free(2000 * MiB)
    with side.span("experiment"):
        gpu.use(500 * MiB), gpu.free(500 * MiB)
    main.stop()
    assert main.peak_memory["train"]["allocated_bytes"] == 2000 * MiB
    assert common.record.peak_memory_bytes(torch.device("cuda")) == 2000 * MiB
    assert common.record.peak_memory_bytes(torch.device("cuda", 0)) == 2000 * MiB


def test_memory_tracking_is_a_no_op_on_the_cpu(monkeypatch, runs_tmp):
    def forbidden(*args, **kwargs):
        raise AssertionError("a CUDA call on the CPU path")
    for name in ("max_memory_allocated", "max_memory_reserved", "reset_peak_memory_stats", "synchronize"):
        monkeypatch.setattr(torch.cuda, name, forbidden)
    clock = RunClock(torch.device("cpu"))
    with clock.span("train"):
        pass
    assert clock.peak_memory == {} and clock.train_peak_memory() is None
    record = json.loads(write_run_record("templates/task_template", "smoke", torch.device("cpu"), clock, {},
                                         data="none").read_text())
    assert record["train_peak_memory"] is None and record["peak_memory_by_span"] is None
    assert record["peak_memory_bytes"] > 10 * MiB


def test_the_clock_synchronises_mps_where_spans_start_and_stop(monkeypatch):
    """MPS runs asynchronously, like CUDA: an unsynchronised clock would time kernel launches, not the work."""
    calls = []
    monkeypatch.setattr(torch.mps, "synchronize", lambda: calls.append("mps"))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *args: pytest.fail("a CUDA call on the MPS path"))
    clock = RunClock(torch.device("mps"))
    clock.start("train")
    assert calls == ["mps"]
    clock.start("train")  # the next step of the same span: no synchronisation inside a span
    assert calls == ["mps"]
    with clock.span("eval"):
        assert calls == ["mps", "mps", "mps"]  # train stopped, eval started
    assert calls == ["mps"] * 4 and clock.peak_memory == {}


def test_a_checkpoint_span_keeps_checkpoint_writes_out_of_train_seconds(tmp_path):
    clock = RunClock(torch.device("cpu"))
    for step in range(3):
        clock.start("train")
        time.sleep(0.01)
        with clock.span("checkpoint"):
            save_checkpoint(tmp_path / "last.pt", {"step": step})
            time.sleep(0.05)
    clock.stop()
    assert clock["checkpoint"] >= 0.15 and clock["train"] < 0.1


def test_the_commit_named_by_the_sender_wins_over_the_copys_git(monkeypatch):
    from common.record import code_version
    own = code_version("image_generation/vae")
    assert own["git_dirty"] in (True, False) and len(own["git_commit"]) == 40  # this checkout's own git
    monkeypatch.setenv("DL_GIT_COMMIT", "0123456789abcdef0123456789abcdef01234567")
    sent = code_version("image_generation/vae")
    assert sent["git_commit"] == "0123456789abcdef0123456789abcdef01234567" and sent["git_dirty"] is None
    assert sent["notebook_code_sha256"] == own["notebook_code_sha256"]
    for told, dirty in (("true", True), ("false", False)):  # what the sender saw (scripts/loan.sh prepare)
        monkeypatch.setenv("DL_GIT_DIRTY", told)
        assert code_version("image_generation/vae")["git_dirty"] is dirty
    monkeypatch.setenv("DL_GIT_DIRTY", "")  # the control: a sender that did not say
    assert code_version("image_generation/vae")["git_dirty"] is None


def test_a_named_commit_that_is_this_checkouts_head_keeps_its_dirtiness(monkeypatch, tmp_path):
    """A local run with DL_GIT_COMMIT set to the checkout's own HEAD (2026-11-29: a char-GPT seed run made beside
    uncommitted files) recorded `git_dirty: null`, hiding that the tree was dirty. Where the checkout's git is at
    the named commit, it now says whether the tree is dirty; a stale `.git` (another HEAD) still says unknown."""
    from common import record
    from scratch_git import git

    repo = tmp_path / "repo"
    (repo / "image_generation" / "vae").mkdir(parents=True)
    tracked = repo / "image_generation" / "vae" / "notes.txt"
    tracked.write_text("a\n")

    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "one")
    head = git(repo, "rev-parse", "HEAD")
    monkeypatch.setattr(record, "REPO_ROOT", repo)
    monkeypatch.setenv("DL_GIT_COMMIT", head)
    assert record.code_version("image_generation/vae")["git_dirty"] is False
    tracked.write_text("b\n")  # an uncommitted change
    assert record.code_version("image_generation/vae") == {"git_commit": head, "git_dirty": True,
                                                           "notebook_code_sha256": None}
    monkeypatch.setenv("DL_GIT_COMMIT", "0" * 40)  # the control: a copy whose .git is at another commit
    assert record.code_version("image_generation/vae")["git_dirty"] is None
    monkeypatch.delenv("DL_GIT_COMMIT")
    assert record.code_version("image_generation/vae") == {"git_commit": head, "git_dirty": True,
                                                           "notebook_code_sha256": None}


def test_common_imports_and_writes_a_record_without_the_resource_module(tmp_path):
    """Windows has no `resource` module: `import common` must still work there, and a record on the CPU says the
    process's peak memory is unknown (None) rather than failing or guessing. A fresh interpreter where importing
    `resource` raises ImportError (as on Windows) plays that machine."""
    script = (
        "import sys\n"
        "sys.modules['resource'] = None  # `import resource` now raises ImportError, as on Windows\n"
        "import json, torch, common\n"
        "clock = common.RunClock(torch.device('cpu'))\n"
        "with clock.span('train'):\n"
        "    pass\n"
        "path = common.write_run_record('templates/task_template', 'smoke', torch.device('cpu'), clock, {},\n"
        "                               data='none')\n"
        "record = json.loads(path.read_text())\n"
        "assert 'resource' not in sys.modules or sys.modules['resource'] is None\n"
        "print('PEAK', record['peak_memory_bytes'])\n"
    )
    env = {**os.environ, "DL_RUNS_DIR": str(tmp_path / "runs"), "PYTHONPATH": str(Path(common.__file__).parent.parent)}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "PEAK None" in result.stdout and "peak memory unknown" in result.stdout
    assert len(list((tmp_path / "runs").glob("*.json"))) == 1


class StepOnGpu(torch.Tensor):
    """Stands for a `step` counter that `torch.load(map_location=cuda)` put on a GPU: `.cpu()` gives a plain tensor."""

    def cpu(self, *args, **kwargs):
        return torch.Tensor.cpu(self).as_subclass(torch.Tensor)


def test_optimiser_step_counters_load_onto_the_cpu(tmp_path, monkeypatch):
    """Adam keeps `step` on the CPU; loaded onto a GPU (map_location=device) it would stay there
    (`Optimizer.load_state_dict` moves it only for fused or capturable optimisers) and cost a synchronisation per
    parameter and step of a resumed run. This machine has no GPU: a subclass stands for a step loaded onto one."""
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    save_checkpoint(tmp_path / "ckpt.pt", {"model": model.state_dict(), "opt": opt.state_dict(), "extra": [1]})
    real_load = torch.load

    def load_onto_gpu(*args, **kwargs):
        state = real_load(*args, **kwargs)
        for entry in state["opt"]["state"].values():
            entry["step"] = entry["step"].as_subclass(StepOnGpu)
        state["model"]["bias"] = state["model"]["bias"].as_subclass(StepOnGpu)  # the control: not a step counter
        return state
    monkeypatch.setattr(torch, "load", load_onto_gpu)
    state = load_checkpoint(tmp_path / "ckpt.pt")
    steps = [entry["step"] for entry in state["opt"]["state"].values()]
    assert steps and all(type(step) is torch.Tensor for step in steps)
    assert type(state["model"]["bias"]) is StepOnGpu and state["extra"] == [1]  # the rest as loaded
    assert state["model"]._metadata == model.state_dict()._metadata  # not rebuilt: torch's version metadata kept
    opt.load_state_dict(state["opt"])


def test_the_record_writes_numpy_arrays_and_numpy_nans_as_json(runs_tmp):
    """A numpy array of several numbers used to stop the record (`.item()` of an array), and a numpy NaN went out as
    the bare NaN that JSON does not have: every NaN and infinity must be a string, as a Python float's is."""
    clock = RunClock(torch.device("cpu"))
    path = write_run_record("templates/task_template", "smoke", torch.device("cpu"), clock,
                            {"curve": np.array([1.0, 2.5]), "bad": np.float32("nan"), "worse": [np.float64("-inf")],
                             "count": np.int64(3)}, data="none")
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text)["metrics"] == {"curve": [1.0, 2.5], "bad": "nan", "worse": ["-inf"], "count": 3}


def test_a_float64_checkpoint_on_a_device_without_float64_is_not_called_corrupt(tmp_path):
    """Apple's MPS refuses float64 with a TypeError: the advice must be to load onto the CPU, not to delete the file."""
    error = TypeError("Cannot convert a MPS Tensor to float64 dtype as the MPS framework doesn't support float64.")
    text = common.checkpoint.load_failure(tmp_path / "run.pt", error, "mps")
    assert "float64" in text and "map_location='cpu'" in text and "corrupt" not in text and "Delete" not in text
    control = common.checkpoint.load_failure(tmp_path / "run.pt", ValueError("bad bytes"), "mps")
    assert "corrupt" in control  # garbage is still called garbage


def test_moving_a_checkpoint_to_the_guarded_cpu_keeps_a_state_dicts_metadata():
    state = nn.BatchNorm1d(3).state_dict()
    moved = common.checkpoint._to_device({"model": state}, torch.device("cpu"))["model"]
    assert moved._metadata == state._metadata  # load_state_dict reads the module versions from it


def test_cpu_kernels_names_kernel_caps_set_in_the_environment(monkeypatch):
    """A run whose kernels were capped (ATEN_CPU_CAPABILITY=avx2 on an AVX-512 CPU, say) says so; one without says
    nothing, so that two uncapped records of one CPU kind still compare equal."""
    from common.record import KERNEL_ENV_VARS, cpu_kernels
    for name in KERNEL_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    assert "env" not in cpu_kernels()
    monkeypatch.setenv("MKL_ENABLE_INSTRUCTIONS", "AVX2")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert cpu_kernels()["env"] == {"MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def test_the_code_hash_reads_code_cells_only(tmp_path):
    """`notebook_code_sha256` names the code that ran: markdown, outputs and execution counts leave it alone (a rerun
    or a prose fix keeps a record current), while any change to a code cell, a comment included, changes it."""
    from common.record import notebook_code_sha256

    def write(cells: list[dict]) -> str:
        path = tmp_path / "nb.ipynb"
        path.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
        return notebook_code_sha256(path)

    code = {"cell_type": "code", "source": ["x = 1  # one\n", "y = x + 1"], "outputs": [], "execution_count": None}
    prose = {"cell_type": "markdown", "source": ["Eq. 1"]}
    base = write([prose, code])
    run = {**code, "outputs": [{"output_type": "stream", "name": "stdout", "text": ["2\n"]}], "execution_count": 7}
    assert write([{**prose, "source": ["Eq. 2, a fix"]}, run]) == base
    assert write([prose, {**code, "source": "x = 1  # one\ny = x + 1"}]) == base, "a string source is the same code"
    assert write([prose, {**code, "source": ["x = 1  # won\n", "y = x + 1"]}]) != base, "the control: a comment"
    assert write([prose, {**code, "source": ["x = 2  # one\n", "y = x + 1"]}]) != base
    assert write([code, prose, code]) != base, "a second code cell"


@pytest.mark.parametrize("name, slug", [("NVIDIA GeForce RTX 4090", "nvidia-geforce-rtx-4090"),
                                        ("NVIDIA H100 80GB HBM3", "nvidia-h100-80gb-hbm3"), ("NVIDIA H200", "nvidia-h200")])
def test_a_record_file_names_its_gpu(monkeypatch, name, slug):
    """The slug in a record's file name, by which the README and the campaign tell GPUs apart."""
    from common.record import device_slug

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    assert device_slug(torch.device("cuda", 0)) == slug
    assert device_slug(torch.device("cpu")) == "cpu"
