"""The cost line a notebook prints before training (common/cost.py)."""

from __future__ import annotations

import time

import pytest
import torch

import common.cost as cost
from common import announce_cost


def test_the_probe_measures_a_plausible_cpu_throughput():
    rate = cost.probe_flops("cpu", seconds=0.05, size=128)
    assert 1e7 < rate < 1e13  # between a very slow core and far beyond any CPU


def test_a_stall_slows_one_window_of_the_probe_not_its_rate(monkeypatch):
    """Something else taking the cores for a moment (here a 0.5 s sleep at the first timed synchronisation) must not
    cut the rate: the probe keeps its fastest window. The control: one window, the old plain average, is cut."""
    def probe(windows: int) -> float:
        calls = []

        def stalling_sync(device):
            calls.append(device)
            if len(calls) == 2:  # the first call follows the warm-up; the second ends the first timed batch
                time.sleep(0.5)
        monkeypatch.setattr(cost, "synchronize", stalling_sync)
        return cost.probe_flops("cpu", seconds=0.1, size=64, windows=windows)
    windowed, averaged = probe(5), probe(1)
    assert windowed > 2 * averaged, (windowed, averaged)


def test_the_estimate_is_flops_over_the_probed_rate_and_names_the_way_out(monkeypatch, capsys):
    monkeypatch.setattr(cost, "probe_flops", lambda device, seconds=0.3, size=None: 2e12)
    seconds = announce_cost(flops=2.88e16, device=torch.device("cpu"), preset="full")
    assert seconds == pytest.approx(2.88e16 / (2e12 * cost.UTILIZATION))  # 36,000 s
    line = capsys.readouterr().out.strip()
    assert "\n" not in line and line.startswith("Preset `full` on cpu")
    assert "about 10.0 h" in line and "estimated" in line and "2 TFLOP/s" in line and "40%" in line
    assert "DL_PRESET=quick" in line and "quick: minutes on a laptop CPU" in line and "full:" not in line


def test_a_measured_time_replaces_the_estimate(monkeypatch, capsys):
    monkeypatch.setattr(cost, "probe_flops", lambda *a, **k: pytest.fail("no probe when a time was measured"))
    assert announce_cost(1e18, "cpu", preset="quick", measured_seconds=300) == 300
    line = capsys.readouterr().out
    assert "about 5 min" in line and "measured on this device" in line and "estimated" not in line


def test_the_active_preset_is_the_default(monkeypatch, capsys):
    monkeypatch.setenv("DL_PRESET", "smoke")
    monkeypatch.setattr(cost, "probe_flops", lambda *a, **k: 1e9)
    announce_cost(1e9, "cpu", utilization=1.0)
    assert capsys.readouterr().out.startswith("Preset `smoke` on cpu")


@pytest.mark.parametrize("seconds,text", [(5, "5 s"), (600, "10 min"), (7200, "2.0 h"), (3 * 86400, "3.0 days")])
def test_durations_read_naturally(seconds, text):
    assert cost.format_duration(seconds) == text


def test_the_probe_leaves_the_notebooks_random_numbers_alone():
    """The probe runs before training: drawing its matrices from the global generator would shift a notebook's
    noise, dropout and shuffles, so that adding the cost line changed its results."""
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    cost.probe_flops("cpu", seconds=0.01, size=16)
    assert torch.equal(torch.rand(3), expected)


class ProbeSpy:
    """Runs `probe_flops` for a fake accelerator on the CPU: the matrices it draws are made on the CPU in the
    dtype asked for (recorded), and the accelerator's synchronisations are counted."""

    def __init__(self, monkeypatch, sync_name: str):
        self.dtypes: list[torch.dtype] = []
        self.syncs = 0
        real_randn, real_generator = torch.randn, torch.Generator

        def randn(*size, device=None, dtype=None, generator=None):
            self.dtypes.append(dtype)
            return real_randn(*size, dtype=dtype)

        def sync(*args, **kwargs):
            self.syncs += 1

        monkeypatch.setattr(torch, "randn", randn)
        monkeypatch.setattr(torch, "Generator", lambda device=None: real_generator())
        backend = torch.cuda if sync_name == "cuda" else torch.mps
        monkeypatch.setattr(backend, "synchronize", sync)


@pytest.mark.parametrize("capability, dtype", [
    ((7, 5), torch.float16),  # T4: is_bf16_supported() says True, bf16 is emulated; training runs fp16
    ((8, 9), torch.bfloat16),  # RTX 4090: training runs bf16
    ((6, 1), torch.float32),  # GTX 10xx: no autocast
])
def test_the_probe_runs_in_the_dtype_training_uses(monkeypatch, capability, dtype):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    spy = ProbeSpy(monkeypatch, "cuda")
    assert cost.probe_flops("cuda", seconds=0.01, size=8) > 0
    assert spy.dtypes == [dtype, dtype] and spy.syncs >= 2


def test_the_probe_synchronises_mps(monkeypatch):
    """MPS runs asynchronously like CUDA: without a synchronisation the probe would time kernel launches only."""
    spy = ProbeSpy(monkeypatch, "mps")
    assert cost.probe_flops("mps", seconds=0.01, size=8) > 0
    assert spy.dtypes == [torch.float32, torch.float32]  # MPS trains in fp32 (no autocast there)
    assert spy.syncs >= 2  # after the warm-up and after each timed batch
