"""The float64 guard (common/float64_guard.py) that the notebook tests run under: float64 on the training device
raises, as on Apple's MPS, even when the training device is the CPU; float64 on the CPU stays allowed."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from common import float64_guard, get_device, load_checkpoint, save_checkpoint
from common.float64_guard import DeviceFloat64Error, on_device


@pytest.fixture
def device(monkeypatch: pytest.MonkeyPatch):
    """The CPU as the training device, with the guard on (off again after the test)."""
    monkeypatch.setenv("DL_DEVICE", "cpu")
    monkeypatch.setenv(float64_guard.ENV, "1")
    try:
        yield get_device(verbose=False)
    finally:
        float64_guard.uninstall()


def test_get_device_installs_the_guard_only_when_asked(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("DL_DEVICE", "cpu")
    monkeypatch.delenv(float64_guard.ENV, raising=False)
    assert get_device(verbose=False) == torch.device("cpu") and torch.ones(2).to("cpu").double().sum() == 2
    monkeypatch.setenv(float64_guard.ENV, "1")
    try:
        device = get_device()
        assert device == float64_guard.GUARDED_CPU and device.type == "cpu" and device != torch.device("cpu")
        out = capsys.readouterr().out
        assert out.count("\n") == 1 and "DL_FORBID_DEVICE_FLOAT64 is set" in out
        with pytest.raises(DeviceFloat64Error):
            torch.ones(2).to(device).double()
    finally:
        float64_guard.uninstall()
    assert torch.ones(2).to(float64_guard.GUARDED_CPU).double().dtype == torch.float64  # off again


@pytest.mark.parametrize(("value", "on"), [("1", True), (" TRUE ", True), ("yes", True), ("", False), ("0", False),
                                           ("false", False), ("No", False), ("on", None), ("y", None)])
def test_the_guard_setting_is_read_or_refused(monkeypatch: pytest.MonkeyPatch, value: str, on: bool | None) -> None:
    """The documented values switch the guard on or off; any other ("on", "y"), which the reading before
    2026-12-01 took as off without a word, raises."""
    monkeypatch.setenv(float64_guard.ENV, value)
    if on is None:
        with pytest.raises(ValueError, match=float64_guard.ENV):
            float64_guard.enabled()
    else:
        assert float64_guard.enabled() is on


def test_float64_on_the_device_raises(device: torch.device) -> None:
    x = torch.ones(3).to(device)
    for make in (lambda: x.double(), lambda: (x > 0).double().mean(), lambda: x.to(torch.float64),
                 lambda: torch.zeros(2, dtype=torch.float64, device=device), lambda: (x * 2).sum().double(),
                 lambda: torch.from_numpy(x.numpy().astype("float64")).to(device)):
        with pytest.raises(DeviceFloat64Error, match="float64 on the training device"):
            make()


def test_float64_on_the_cpu_is_fine(device: torch.device) -> None:
    plain = torch.ones(3)
    x = plain.to(device)
    assert on_device(x) and on_device(x * 2) and not on_device(plain)  # moving made a new tensor, as on a GPU
    assert plain.double().dtype == torch.float64  # the tensor that was moved stays on the CPU
    for cpu in (x.cpu(), x.to("cpu"), x.to(torch.device("cpu")), (x * 2).cpu()):
        assert not on_device(cpu) and (cpu.double() * 2).sum().item() == pytest.approx(6 * cpu[0].item())
    buffer = torch.zeros(3, dtype=torch.float64)
    buffer.copy_(x)  # into a CPU tensor
    assert buffer.sum().item() == 3.0 and not on_device(buffer)
    assert x.float().dtype == torch.float32 and x.sum().item() == 3.0 and x.tolist() == [1.0, 1.0, 1.0]


def test_a_module_on_the_device_is_marked_and_back_on_the_cpu_is_not(device: torch.device) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4)).to(device)
    assert all(on_device(p) for p in model.parameters()) and on_device(model[1].running_mean)
    assert on_device(model(torch.ones(2, 3)))  # a CPU input through device weights: the result is on the device
    with pytest.raises(DeviceFloat64Error):
        model.double()
    opt = torch.optim.AdamW(model.parameters())
    model(torch.ones(2, 3).to(device)).sum().backward()
    opt.step()
    assert on_device(model[0].weight.grad) and on_device(opt.state[model[0].weight]["exp_avg"])
    twin = copy.deepcopy(model[0]).cpu()
    assert not on_device(twin.weight) and twin.double()(torch.ones(1, 3, dtype=torch.float64)).dtype == torch.float64


def test_checkpoints_hold_plain_tensors_and_load_back_onto_the_device(device: torch.device, tmp_path: Path) -> None:
    x = torch.arange(4.0).to(device)
    path = save_checkpoint(tmp_path / "c.pt", {"x": x, "list": [x * 2], "step": 3})
    plain = torch.load(path, weights_only=True)  # no trace of the guard in the file
    assert type(plain["x"]) is torch.Tensor and plain["x"].__dict__ == {} and torch.equal(plain["x"], x.cpu())
    state = load_checkpoint(path, map_location=device)
    assert on_device(state["x"]) and on_device(state["list"][0]) and state["step"] == 3
    assert not on_device(load_checkpoint(path)["x"])  # onto "cpu": the CPU itself
    with pytest.raises(DeviceFloat64Error):
        state["x"].double()


def test_the_guard_lets_a_cpu_float64_check_like_the_notebooks_run(device: torch.device) -> None:
    """mlp_backprop's gradient check after the fix: parameters on the device, the float64 copy on the CPU."""
    params = [torch.randn(4, 3).to(device), torch.zeros(4, device=device)]
    check = [p.cpu().double() for p in params]
    x = torch.randn(2, 3).to(device).cpu().double()
    assert torch.nn.functional.linear(x, *check).dtype == torch.float64
    with pytest.raises(DeviceFloat64Error):
        [p.double() for p in params]  # the code before the fix


def test_importing_common_does_not_install_the_guard() -> None:
    code = ("import os; os.environ['DL_FORBID_DEVICE_FLOAT64'] = '1'; import torch, common; "
            "print(torch.ones(2).to(torch.device('cpu', 0)).double().dtype)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "torch.float64"
