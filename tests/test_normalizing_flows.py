"""The layers of image_generation/normalizing_flows are invertible and report their true log-determinants, and the
bits-per-dimension accounting is right: every layer (coupling with a checkerboard and with a channel mask, squeeze,
ActNorm, invertible 1x1 convolution, logit transform) and the whole multi-scale flow give their input back within
1e-5, and their log-determinant equals log |det J| of the full Jacobian built by autograd on small inputs; a uniform
model of 8-bit images scores exactly 8 bits/dim; ActNorm's initialised flag travels in a state dict, so a resumed
model is not initialised again. Each check is paired with a control broken in exactly the way the check guards
against (a log-determinant without the logit term or without the H*W factor, a coupling whose s and t read the
entries they change, an accounting without log 256, an ActNorm whose flag was not restored), which must fail it.

The notebook's own cells are executed into a namespace (tests/notebook_cells.py), so the tests check the code the
notebook teaches. Small random layers, float64 for the Jacobians, nothing written anywhere.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from notebook_cells import run_tagged

REPO_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO_ROOT / "image_generation" / "normalizing_flows" / "normalizing_flows.ipynb"
ALPHA = 0.05


@pytest.fixture(scope="module")
def ns() -> dict:
    namespace = {"torch": torch, "nn": nn, "F": F, "math": math}
    run_tagged(NOTEBOOK, "model", count=2, namespace=namespace)
    run_tagged(NOTEBOOK, "objective", count=1, namespace=namespace)
    return namespace


def perturbed(layer: nn.Module, seed: int = 0, scale: float = 0.3) -> nn.Module:
    """`layer` in float64 with every parameter moved away from its (often identity) initialisation."""
    gen = torch.Generator().manual_seed(seed)
    layer = layer.double()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return layer


def small_flow(ns: dict, glow: bool, seed: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A 2-scale flow on two random 8x8 images in float64, ActNorm initialised on them, parameters perturbed; in
    evaluation mode: (flow, y, z, log_det)."""
    torch.manual_seed(seed)
    flow = perturbed(ns["MultiScaleFlow"]((1, 8, 8), 2, 1, 8, 1, glow, ALPHA), scale=0.05)
    y = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    flow.train()(y)
    flow.eval()
    z, log_det = flow(y)
    return flow, y, z, log_det


def brute_force_log_det(forward, x: torch.Tensor) -> torch.Tensor:
    """log |det J| of `forward` (a batch -> its output) at each example of x, from the full Jacobian (autograd)."""
    out = []
    for example in x:
        fn = lambda v: forward(v.view(1, *x.shape[1:])).flatten()  # noqa: E731  (D,) -> (D,)
        jac = torch.autograd.functional.jacobian(fn, example.flatten())  # (D, D)
        assert jac.shape[0] == jac.shape[1], "a bijection keeps the dimension"
        out.append(torch.linalg.slogdet(jac)[1])
    return torch.stack(out)


def layers(ns: dict) -> dict[str, tuple[nn.Module, torch.Tensor]]:
    """Each layer type, perturbed, in float64, with a small input batch of the shape it takes."""
    torch.manual_seed(0)
    x = torch.randn(3, 4, 4, 4, dtype=torch.float64)  # 64 dimensions per example
    actnorm = ns["ActNorm"](4).double()
    actnorm.train()(x)  # data-dependent initialisation
    out = {
        "coupling_checkerboard": (perturbed(ns["AffineCoupling"](ns["checkerboard_mask"](4, 4, 4, 0), 8, 1)), x),
        "coupling_channel": (perturbed(ns["AffineCoupling"](ns["channel_mask"](4, 4, 4, 1), 8, 1)), x),
        "squeeze": (ns["Squeeze"](), x),
        "actnorm": (perturbed(actnorm, scale=0.5), x),
        "conv1x1": (perturbed(ns["InvConv1x1"](4)), x),
        "logit": (ns["LogitTransform"](ALPHA), torch.rand(3, 1, 8, 8, dtype=torch.float64)),
    }
    return {name: (layer.eval(), inp) for name, (layer, inp) in out.items()}


LAYERS = ["coupling_checkerboard", "coupling_channel", "squeeze", "actnorm", "conv1x1", "logit"]


# --- invertibility ---

@pytest.mark.parametrize("name", LAYERS)
def test_every_layer_gives_its_input_back(ns: dict, name: str) -> None:
    layer, x = layers(ns)[name]
    layer, x = layer.float(), x.float()
    y, _ = layer(x)
    assert y.shape == ((x.shape[0], 4 * x.shape[1], x.shape[2] // 2, x.shape[3] // 2) if name == "squeeze" else x.shape)
    assert (layer.inverse(y) - x).abs().max().item() < 1e-5
    assert name == "squeeze" or (y - x).abs().max().item() > 1e-2, "the layer must do something"


@pytest.mark.parametrize("glow", [False, True])
def test_the_multiscale_flow_maps_images_to_784_codes_and_back(ns: dict, glow: bool) -> None:
    torch.manual_seed(1)
    flow = perturbed(ns["MultiScaleFlow"]((1, 28, 28), 2, 2, 8, 1, glow, ALPHA), scale=0.05).float()
    y = torch.rand(4, 1, 28, 28)
    flow.train()(y)  # initialises ActNorm in the Glow variant
    flow.eval()
    z, log_det = flow(y)
    assert z.shape == (4, 784) and log_det.shape == (4,)
    assert (flow.inverse(z) - y).abs().max().item() < 1e-5
    # the shapes of the multi-scale layout: 2x14x14 factored out after scale 1, 8x7x7 at the end
    assert flow.shapes == [(4, 14, 14), (8, 7, 7)]


def test_the_coupling_is_invertible_only_because_s_and_t_read_the_unchanged_entries(ns: dict) -> None:
    """Control: a coupling whose s and t networks also read the entries they change is no longer inverted by Eq. 7-8."""
    layer, x = layers(ns)["coupling_checkerboard"]
    y, _ = layer(x)
    assert (layer.inverse(y) - x).abs().max().item() < 1e-10

    class Unmasked(ns["AffineCoupling"]):
        def scale_shift(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            s, t = self.net(x)  # reads every entry: the bug
            return self.sigma * torch.tanh(s) * (1 - self.mask), t * (1 - self.mask)

    broken = Unmasked(layer.mask, 8, 1).double()
    broken.load_state_dict(layer.state_dict())
    y, _ = broken(x)
    assert (broken.inverse(y) - x).abs().max().item() > 1e-3


def test_masks_are_complementary_and_alternate(ns: dict) -> None:
    board0, board1 = ns["checkerboard_mask"](2, 4, 4, 0), ns["checkerboard_mask"](2, 4, 4, 1)
    assert torch.equal(board0 + board1, torch.ones(1, 2, 4, 4)) and board0[0, 0, 0, 0] == 1 and board0[0, 0, 0, 1] == 0
    chan0, chan1 = ns["channel_mask"](4, 2, 2, 0), ns["channel_mask"](4, 2, 2, 1)
    assert torch.equal(chan0 + chan1, torch.ones(1, 4, 2, 2))
    assert chan0[0, :, 0, 0].tolist() == [1, 1, 0, 0]


# --- log-determinants against brute force ---

@pytest.mark.parametrize("name", LAYERS)
def test_each_layer_log_det_equals_the_brute_force_jacobian(ns: dict, name: str) -> None:
    layer, x = layers(ns)[name]
    _, log_det = layer(x)
    brute = brute_force_log_det(lambda v: layer(v)[0], x)
    assert torch.allclose(log_det, brute, atol=1e-8), (log_det, brute)
    if name != "squeeze":  # a permutation: log |det| = 0, nothing to get wrong but the sign
        assert brute.abs().min() > 1e-2, "the control below needs a non-trivial log-determinant"


def test_wrong_log_dets_fail_the_brute_force_check(ns: dict) -> None:
    """Controls: the common mistakes (the logit transform's term dropped, its log(1 - 2 alpha) dropped, ActNorm's and
    the 1x1 convolution's log-det not multiplied by H*W) each disagree with the Jacobian."""
    all_layers = layers(ns)
    logit, y = all_layers["logit"]
    brute = brute_force_log_det(lambda v: logit(v)[0], y)
    assert not torch.allclose(torch.zeros_like(brute), brute, atol=1e-2)  # the logit term dropped
    p = ALPHA + (1 - 2 * ALPHA) * y
    without_alpha = (-torch.log(p) - torch.log1p(-p)).flatten(1).sum(1)
    assert not torch.allclose(without_alpha, brute, atol=1e-2)
    for name, per_pixel in (("actnorm", lambda m: m.gamma.sum()), ("conv1x1", lambda m: torch.linalg.slogdet(m.weight)[1])):
        layer, x = all_layers[name]
        brute = brute_force_log_det(lambda v: layer(v)[0], x)
        assert not torch.allclose(per_pixel(layer).expand(len(x)), brute, atol=1e-2), name


@pytest.mark.parametrize("glow", [False, True])
def test_the_whole_flow_log_det_equals_the_brute_force_jacobian(ns: dict, glow: bool) -> None:
    flow, y, z, log_det = small_flow(ns, glow, seed=2)
    brute = brute_force_log_det(lambda v: flow(v)[0], y)
    assert torch.allclose(log_det, brute, atol=1e-8)
    without_logit = log_det - flow.logit(y)[1]  # the control
    assert not torch.allclose(without_logit, brute, atol=1e-2)


# --- bits per dimension ---

def test_a_uniform_model_of_8_bit_images_scores_exactly_8_bits_per_dim(ns: dict) -> None:
    bits_per_dim, dequantise = ns["bits_per_dim"], ns["dequantise"]
    x = torch.randint(0, 256, (16, 1, 28, 28), generator=torch.Generator().manual_seed(0)).double()
    y = dequantise(x, torch.Generator().manual_seed(1))
    assert torch.equal(torch.floor(y * 256), x) and y.min() >= 0 and y.max() < 1, "y stays in x's bin"
    # p(y) = 1 on [0, 1]^D, written in the notebook's logit space: a logistic density of the logits plus Eq. L
    logits, logit_log_det = ns["LogitTransform"](ALPHA)(y)
    p = torch.sigmoid(logits)
    log_p_logits = (torch.log(p) + torch.log1p(-p) - math.log(1 - 2 * ALPHA)).flatten(1).sum(1)
    score = bits_per_dim(log_p_logits + logit_log_det, 784)
    assert torch.allclose(score, torch.full_like(score, 8.0), atol=1e-9, rtol=0)
    assert f"{score.mean().item():.2f}" == "8.00"
    assert bits_per_dim(torch.zeros(3, dtype=torch.float64), 784).tolist() == [8.0, 8.0, 8.0]
    # controls: the logit log-det dropped, or log 256 dropped (a density on [0, 1]^D is not a probability of images)
    assert (bits_per_dim(log_p_logits, 784) - 8).abs().min() > 1
    without_log256 = -(log_p_logits + logit_log_det) / (784 * math.log(2))
    assert (without_log256 - 8).abs().min() > 7


def test_flow_bits_per_dim_adds_prior_and_every_log_det(ns: dict) -> None:
    flow, y, z, log_det = small_flow(ns, glow=True, seed=3)
    log_prior = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(1)
    expected = (-(log_prior + log_det) + 64 * math.log(256)) / (64 * math.log(2))
    assert torch.allclose(ns["flow_bits_per_dim"](flow, y), expected, atol=1e-10)
    assert torch.allclose(ns["standard_normal_log_prob"](z), log_prior, atol=1e-10)


# --- stability ---

def test_actnorm_initialises_from_data_and_its_flag_survives_a_checkpoint(ns: dict) -> None:
    torch.manual_seed(4)
    first = 3 + 2 * torch.randn(64, 4, 5, 5)
    other = -1 + 0.1 * torch.randn(64, 4, 5, 5)
    actnorm = ns["ActNorm"](4)
    assert "initialized" in actnorm.state_dict(), "the flag is a buffer: it is saved with the weights"
    out, _ = actnorm.train()(first)
    assert out.mean(dim=(0, 2, 3)).abs().max() < 1e-5 and (out.std(dim=(0, 2, 3)) - 1).abs().max() < 1e-4
    buffer = io.BytesIO()
    torch.save(actnorm.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)

    resumed = ns["ActNorm"](4)
    resumed.load_state_dict(state)
    resumed.train()(other)  # the first training batch after a resume must not initialise it again
    assert torch.equal(resumed.beta, actnorm.beta) and torch.equal(resumed.gamma, actnorm.gamma)

    # control: the same weights without the flag (a plain attribute would not have been saved) initialise again
    control = ns["ActNorm"](4)
    control.load_state_dict({**state, "initialized": torch.tensor(False)})
    control.train()(other)
    assert not torch.allclose(control.beta, actnorm.beta)
    # a layer that has run already reads the flag of a state it loads (its Python copy, `ready`, is read again on load)
    resumed.load_state_dict({**state, "initialized": torch.tensor(False)})
    resumed.train()(other)
    assert torch.allclose(resumed.beta, control.beta) and bool(resumed.initialized)


def test_coupling_scales_are_bounded_by_the_tanh(ns: dict) -> None:
    coupling = ns["AffineCoupling"](ns["channel_mask"](4, 3, 3, 0), 8, 1)
    with torch.no_grad():
        coupling.net.out.bias.fill_(1e4)  # a network gone wild
    x = torch.randn(2, 4, 3, 3)
    y, log_det = coupling(x)
    assert torch.isfinite(y).all() and torch.isfinite(log_det).all()
    assert log_det.max() <= 2 * 3 * 3 + 1e-4  # |s| <= sigma = 1 on the 2 * 3 * 3 changed entries
