"""The cost line a notebook prints before training (common/cost.py)."""

from __future__ import annotations

import pytest
import torch

import common.cost as cost
from common import announce_cost


def test_the_probe_measures_a_plausible_cpu_throughput():
    rate = cost.probe_flops("cpu", seconds=0.05, size=128)
    assert 1e7 < rate < 1e13  # between a very slow core and far beyond any CPU


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
