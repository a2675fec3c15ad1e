"""The diffusion notebooks' EMA update (DDPM's and flow matching's) and the fairness of DDPM's eps-against-v side
experiment, read from the notebooks.

The functions are taken from the notebooks' code cells by name (with their decorators) and executed in a fresh
namespace. The EMA update of both notebooks, one `torch._foreach_lerp_`, must give what a Python loop of `lerp_`
calls gives. The side experiment claims that both arms see the same random timesteps, noises and dropped labels
under one seed: the loss must draw the same random numbers, in the same order, whichever quantity the network
predicts.
"""

from __future__ import annotations

import ast
import copy
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from notebook_cells import cell_sources, notebook_functions
from torch import nn

NOTEBOOK = Path(__file__).resolve().parent.parent / "image_generation" / "ddpm" / "ddpm.ipynb"
FLOW_MATCHING = NOTEBOOK.parent.parent / "flow_matching" / "flow_matching.ipynb"  # the same EMA update


def functions(notebook: Path, *names: str) -> dict:
    return notebook_functions(notebook, *names, namespace={"torch": torch, "nn": nn, "F": F, "math": math})


@pytest.fixture(scope="module")
def ns() -> dict:
    return functions(NOTEBOOK, "ema_update", "diffusion_loss", "q_sample", "make_schedule")


@pytest.mark.parametrize("notebook", [NOTEBOOK, FLOW_MATCHING], ids=["ddpm", "flow_matching"])
@pytest.mark.parametrize("step", [0, 3, 50, 10_000])
def test_ema_update_equals_a_loop_of_lerp(notebook: Path, step: int) -> None:
    ema_update = functions(notebook, "ema_update")["ema_update"]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.GroupNorm(2, 4), nn.Flatten(), nn.Linear(4 * 26 * 26, 3))
    ema = copy.deepcopy(model)
    for p in model.parameters():
        p.data.add_(torch.randn_like(p))  # the trained weights drift from the average
    expected = copy.deepcopy(ema)
    d = min(0.999, (1 + step) / (10 + step))  # the warm-up the notebook documents
    with torch.no_grad():
        for p_ema, p in zip(expected.parameters(), model.parameters()):
            p_ema.lerp_(p, 1 - d)
    ema_update(ema, model, 0.999, step)
    for got, want in zip(ema.parameters(), expected.parameters()):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-7)
    assert any(not torch.equal(a, b) for a, b in zip(ema.parameters(), model.parameters()))


class Recorder(nn.Module):
    """A 'network' that records the noisy images, timesteps and labels it is given, and predicts zeros."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = []

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.seen.append((x.clone(), t.clone(), y.clone()))
        return torch.zeros_like(x)


def test_eps_and_v_losses_draw_the_same_random_numbers(ns: dict) -> None:
    """Same seed, same batch: the eps and v losses show the network the same x_t, t and (dropped) labels, and leave
    the global generator in the same state; their targets differ."""
    alpha_bars = ns["make_schedule"]("cosine", 1000)["alpha_bars"].float()
    x0 = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(1)) * 2 - 1
    y = torch.arange(8) % 10
    seen, losses, after = {}, {}, {}
    for prediction in ("eps", "v"):
        torch.manual_seed(5)
        net = Recorder()
        losses[prediction] = ns["diffusion_loss"](net, x0, y, alpha_bars, 10, 0.5, prediction).item()
        seen[prediction], after[prediction] = net.seen, torch.rand(3)
    (x_eps, t_eps, y_eps), = seen["eps"]
    (x_v, t_v, y_v), = seen["v"]
    assert torch.equal(x_eps, x_v) and torch.equal(t_eps, t_v) and torch.equal(y_eps, y_v)
    assert (y_eps == 10).any() and (y_eps != 10).any(), "label dropout at p = 0.5 should drop some labels of 8"
    assert torch.equal(after["eps"], after["v"]), "the two losses consumed different amounts of randomness"
    assert losses["eps"] != pytest.approx(losses["v"]), "the eps and v targets should differ"



def test_last_step_with_snr_is_the_boundary_of_the_later_start() -> None:
    """The side experiment's later start is the last t with SNR(t) >= min_snr: there an eps error reaches x0_hat
    amplified at most 1/sqrt(min_snr) = 100 times, while at t = T (the default start, the control) the cosine schedule
    clipped at beta 0.999 amplifies it more than ten thousand times."""
    f = functions(NOTEBOOK, "make_schedule", "last_step_with_snr")
    abar = f["make_schedule"]("cosine", 1000)["alpha_bars"]
    snr = abar / (1 - abar)
    t = f["last_step_with_snr"](abar, 1e-4)
    assert snr[t] >= 1e-4 > snr[t + 1]
    assert 1 / snr[t].sqrt() <= 100 < 1e4 < 1 / snr[1000].sqrt()
    assert f["last_step_with_snr"](abar, 0.0) == 1000
    assert f["last_step_with_snr"](abar, float(snr[1])) == 1


class Bf16Net(nn.Module):
    """A stand-in network whose output is bf16, as a GPU's under bf16 autocast is: the sampler must not inherit it."""

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (0.5 * x + 0.01 * y.view(-1, 1, 1, 1)).bfloat16()


@pytest.mark.parametrize("w", [0.0, 3.0], ids=["unguided", "guided"])
def test_the_sampler_s_arithmetic_stays_fp32_when_the_network_runs_in_bf16(w: float) -> None:
    """The Setup says: with bf16, the network runs in bf16 and the sampler's own arithmetic (the guidance mix,
    Eq. 6, x0_hat and the DDIM update) in fp32, so a guided mix (1 + w) a - w b is not rounded to bf16 (up to 2w + 1
    times the network's own bf16 rounding). Control: the notebook's `predict` without its `.float()` calls hands
    the sampler a bf16 prediction (fp32 and bf16 tensors then promote to fp32, so the DDIM state is fp32 either
    way; the mix and sqrt(1 - abar) * eps were rounded to bf16)."""
    f = functions(NOTEBOOK, "make_schedule", "predict", "split_prediction", "ddim_sample")
    alpha_bars = f["make_schedule"]("cosine", 1000)["alpha_bars"].float()
    y = torch.arange(4) % 10

    def sample() -> torch.Tensor:
        return f["ddim_sample"](Bf16Net(), y, 5, alpha_bars, w, 10, "eps", torch.Generator().manual_seed(0))
    assert sample().dtype == torch.float32
    assert f["predict"](Bf16Net(), torch.randn(4, 1, 28, 28), 500, y, w, 10).dtype == torch.float32
    [source] = cell_sources(NOTEBOOK, select=lambda src: "def predict(" in src)
    tree = ast.parse(source)
    [node] = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "predict"]
    broken = ast.unparse(node).replace(".float()", "")
    assert broken != ast.unparse(node)
    exec(broken, f)  # ddim_sample finds `predict` in this namespace: now the one without .float()
    assert f["predict"](Bf16Net(), torch.randn(4, 1, 28, 28), 500, y, w, 10).dtype == torch.bfloat16
