import random

import numpy as np
import pytest
import torch

from common import get_device, get_preset, pick, seed_everything
from common.preset import PresetError


@pytest.mark.parametrize("value", ["smoke", "quick", "full", "QUICK", " full "])
def test_preset_reads_env(monkeypatch, value):
    monkeypatch.setenv("DL_PRESET", value)
    assert get_preset() == value.strip().lower()


def test_preset_default_depends_on_cuda(monkeypatch):
    monkeypatch.delenv("DL_PRESET", raising=False)
    assert get_preset() == ("full" if torch.cuda.is_available() else "quick")


def test_bogus_preset_is_a_one_line_actionable_error(monkeypatch):
    monkeypatch.setenv("DL_PRESET", "bogus")
    with pytest.raises(PresetError) as err:
        get_preset()
    message = str(err.value)
    assert "\n" not in message
    assert "bogus" in message and all(p in message for p in ("smoke", "quick", "full"))


def test_pick_follows_the_preset(monkeypatch):
    for preset, expected in [("smoke", 1), ("quick", 2), ("full", 3)]:
        monkeypatch.setenv("DL_PRESET", preset)
        assert pick(smoke=1, quick=2, full=3) == expected
    assert pick(smoke="a", quick="b", full="c", preset="quick") == "b"
    with pytest.raises(PresetError):
        pick(1, 2, 3, preset="huge")


def test_seed_everything_repeats_all_generators():
    def draw():
        return random.random(), float(np.random.rand()), torch.rand(3).tolist()

    seed_everything(123)
    first = draw()
    seed_everything(123)
    assert draw() == first
    seed_everything(124)
    assert draw() != first


def test_deterministic_mode_toggles(monkeypatch):
    seed_everything(0, deterministic=True)
    assert torch.are_deterministic_algorithms_enabled()
    seed_everything(0)
    assert not torch.are_deterministic_algorithms_enabled()


def test_get_device_prints_one_line(capsys, monkeypatch):
    monkeypatch.delenv("DL_DEVICE", raising=False)
    device = get_device()
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and device.type in out
    if not torch.cuda.is_available():
        assert device.type in ("cpu", "mps")


def test_dl_device_overrides(monkeypatch):
    monkeypatch.setenv("DL_DEVICE", "cpu")
    assert get_device(verbose=False) == torch.device("cpu")
