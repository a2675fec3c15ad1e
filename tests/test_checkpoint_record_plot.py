import json
import pickle

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from torch import nn

from common import (RunTimer, load_checkpoint, plot_curves, save_checkpoint, show_images,
                    write_run_record)


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


def test_load_refuses_arbitrary_objects(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"x": Evil()}, path)
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(path)


def test_failed_save_keeps_previous_checkpoint(tmp_path):
    path = save_checkpoint(tmp_path / "last.pt", {"step": 1})
    with pytest.raises(Exception):
        save_checkpoint(path, {"step": 2, "bad": lambda: None})  # lambdas cannot be pickled
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_run_record_has_the_required_fields(runs_tmp):
    timer = RunTimer()
    with timer:
        sum(range(10000))
    with timer:
        pass
    assert timer.seconds > 0
    path = write_run_record("image_generation/vae", "smoke", torch.device("cpu"), timer.seconds,
                            {"fid": np.float64(3.5), "loss": torch.tensor(1.25), "bad": float("nan")},
                            data="MNIST (8,000 train / 2,000 test images)", config={"lr": 1e-3})
    assert path.parent == runs_tmp
    record = json.loads(path.read_text())
    for key in ("task", "preset", "device", "device_type", "data", "train_seconds", "peak_memory_bytes",
                "metrics", "versions", "finished_at", "config"):
        assert key in record
    assert record["task"] == "image_generation/vae" and record["preset"] == "smoke"
    assert record["metrics"] == {"fid": 3.5, "loss": 1.25, "bad": "nan"}
    assert record["versions"]["torch"] == torch.__version__
    assert record["peak_memory_bytes"] > 10 * 2**20  # a Python process with torch uses more than 10 MiB


def test_show_images_accepts_uint8_and_float():
    fig = show_images(torch.randint(0, 255, (10, 1, 28, 28), dtype=torch.uint8), nrow=4, titles=[str(i) for i in range(10)])
    assert len([ax for ax in fig.axes if ax.images]) == 10
    assert len(fig.axes) == 12  # 3 rows of 4
    plt.close(fig)
    fig = show_images(torch.rand(3, 3, 32, 32), title="colour")
    assert fig.axes[0].images[0].get_array().shape == (32, 32, 3)
    plt.close(fig)


def test_plot_curves_draws_each_curve():
    fig = plot_curves({"train": ([0, 1, 2], [3.0, 2.0, 1.0]), "val": ([0, 2], [3.1, 1.5])}, logy=True)
    ax = fig.axes[0]
    assert [line.get_label() for line in ax.lines] == ["train", "val"]
    assert ax.get_yscale() == "log"
    plt.close(fig)
