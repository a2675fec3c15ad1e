"""Flow matching's ODE solvers, read from the notebook (they are the lesson) and checked here.

The functions are taken from the notebook's code cells by name (with their decorators) and executed in a fresh
namespace. Heun must end with an Euler step (Karras et al. 2022, Algorithm 1): it spends exactly the NFE it is asked
for, 2K - 1 for K steps, never evaluates the velocity at t = 1, and stays second order. Its EMA update is checked
with DDPM's, in tests/test_ddpm_ema.py.
"""

from __future__ import annotations

import math
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from notebook_cells import notebook_functions
from torch import nn

NOTEBOOK = Path(__file__).resolve().parent.parent / "image_generation" / "flow_matching" / "flow_matching.ipynb"


class Recorder(nn.Module):
    """A velocity 'network' v(x, t) = -x that records the (unscaled) time of every call."""

    def __init__(self, time_scale: float) -> None:
        super().__init__()
        self.time_scale, self.times = time_scale, []

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.times.append(t[0].item() / self.time_scale)
        return -x


def solve(ns: dict, solver: str, nfe: int, clip_x1: bool = False) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """(x_1, x_0, times evaluated) of the notebook's ode_sample on dx/dt = -x, from seeded noise."""
    cfg = types.SimpleNamespace(clip_x1=clip_x1, time_scale=1000.0, time_shift=1.0)
    model = Recorder(cfg.time_scale)
    y = torch.zeros(3, dtype=torch.long)
    x1, _ = ns["ode_sample"](model, y, nfe, solver, 0.0, 10, cfg, torch.Generator().manual_seed(0))
    x0 = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))  # the sampler's starting noise
    return x1, x0, model.times


@pytest.fixture(scope="module")
def ns() -> dict:
    return notebook_functions(NOTEBOOK, "velocity", "time_grid", "ode_sample",
                              namespace={"torch": torch, "nn": nn, "F": F, "math": math})


@pytest.mark.parametrize("clip_x1", [False, True])
@pytest.mark.parametrize(("solver", "nfe"), [("euler", 1), ("euler", 2), ("euler", 20), ("heun", 1), ("heun", 3),
                                             ("heun", 9), ("heun", 19)])
def test_solvers_spend_exactly_their_nfe_and_never_evaluate_t_1(ns: dict, solver: str, nfe: int,
                                                                 clip_x1: bool) -> None:
    _, _, times = solve(ns, solver, nfe, clip_x1)
    assert len(times) == nfe, f"{solver} asked for {nfe} NFE evaluated the network {len(times)} times"
    assert times[0] == 0.0 and max(times) < 1.0, f"{solver} evaluated the velocity at t = {max(times)}"


def test_heun_refuses_an_even_nfe(ns: dict) -> None:
    with pytest.raises(ValueError, match="even"):
        solve(ns, "heun", 10)


def test_heun_stays_second_order_and_beats_euler_at_equal_nfe(ns: dict) -> None:
    """On dx/dt = -x (exact x_1 = x_0 / e): halving Heun's step cuts its error about 4-fold (Euler's 2-fold)."""
    def error(solver: str, nfe: int) -> float:
        x1, x0, _ = solve(ns, solver, nfe)
        return (x1 - x0 * math.exp(-1)).abs().max().item()

    heun_ratio = error("heun", 19) / error("heun", 39)
    euler_ratio = error("euler", 20) / error("euler", 40)
    assert 3.0 < heun_ratio < 5.0, f"Heun's error fell {heun_ratio:.2f}-fold when its step halved, not about 4-fold"
    assert 1.7 < euler_ratio < 2.3
    assert error("heun", 19) < error("euler", 20) / 4
