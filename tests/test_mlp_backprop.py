"""The hand-written backward passes of image_classification/mlp_backprop are right, and its gradient check catches
wrong ones.

The notebook's cells tagged `backprop` (the scalar engine, the MLP's forward and backward functions, the softmax
cross-entropy and the gradient-check functions) are executed into a namespace of their own, so the test checks the
code the notebook teaches, not a copy of it. Nothing is written anywhere.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from notebook_cells import run_tagged

REPO_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO_ROOT / "image_classification" / "mlp_backprop" / "mlp_backprop.ipynb"
SIZES = (20, 16, 16, 5)  # the middle layer is square, so a transposed weight gradient keeps its shape


@pytest.fixture(scope="module")
def ns() -> dict:
    return run_tagged(NOTEBOOK, "backprop", count=4, namespace={"torch": torch, "F": F, "math": math})


def problem(ns: dict, seed: int = 0, batch: int = 8) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """float64 parameters of a small MLP (random biases, so no gradient is trivially zero), inputs and labels."""
    gen = torch.Generator().manual_seed(seed)
    params = [p.double() for p in ns["init_params"](list(SIZES), gen, torch.device("cpu"))]
    params = [p if p.dim() > 1 else 0.1 * torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in params]
    x = torch.randn(batch, SIZES[0], generator=gen, dtype=torch.float64)
    y = torch.randint(SIZES[-1], (batch,), generator=gen)
    return params, x, y


def test_hand_written_gradients_equal_an_autograd_reference_written_here(ns: dict) -> None:
    params, x, y = problem(ns)
    loss, grads, _ = ns["loss_and_grads"](params, x, y)
    leaves = [p.clone().requires_grad_(True) for p in params]
    h = x
    for i in range(0, len(leaves), 2):
        h = h @ leaves[i].T + leaves[i + 1]
        h = h.relu() if i + 2 < len(leaves) else h
    reference_loss = -h.log_softmax(1)[torch.arange(len(y)), y].mean()
    reference = torch.autograd.grad(reference_loss, leaves)
    assert loss.item() == pytest.approx(reference_loss.item(), rel=1e-12)
    assert len(grads) == len(params) == 6
    for g, r, p in zip(grads, reference, params):
        assert g.shape == p.shape
        assert ((g - r).norm() / r.norm()).item() < 1e-10


def test_the_notebooks_gradient_checks_pass_on_the_correct_backward(ns: dict) -> None:
    for seed in range(3):
        params, x, y = problem(ns, seed)
        autograd_errors = ns["check_against_autograd"](params, x, y)
        assert list(autograd_errors) == ["W1", "b1", "W2", "b2", "W3", "b3"]
        assert ns["all_below"](autograd_errors, 1e-8)  # the bound, float64
        fd_errors = ns["check_against_finite_differences"](params, x, y, 6, 1e-6, torch.Generator().manual_seed(seed))
        assert ns["all_below"](fd_errors, 1e-6)


def _relu_without_mask(ns: dict):
    return lambda dh, z: dh


def _transposed_square_weight_gradient(ns: dict):
    linear_backward = ns["linear_backward"]

    def broken(dz, x, W, need_dx=True):
        dx, dW, db = linear_backward(dz, x, W, need_dx)
        return dx, (dW.T if dW.shape[0] == dW.shape[1] else dW), db
    return broken


def _bias_gradient_averaged_not_summed(ns: dict):
    linear_backward = ns["linear_backward"]

    def broken(dz, x, W, need_dx=True):
        dx, dW, db = linear_backward(dz, x, W, need_dx)
        return dx, dW, db / len(dz)
    return broken


def _softmax_gradient_not_divided_by_batch(ns: dict):
    cross_entropy_backward = ns["cross_entropy_backward"]
    return lambda p, y: cross_entropy_backward(p, y) * len(y)


def _softmax_gradient_without_the_target(ns: dict):
    return lambda p, y: p / len(y)


BUGS = {
    "relu_backward": [_relu_without_mask],
    "linear_backward": [_transposed_square_weight_gradient, _bias_gradient_averaged_not_summed],
    "cross_entropy_backward": [_softmax_gradient_not_divided_by_batch, _softmax_gradient_without_the_target],
}
CASES = [(name, bug) for name, bugs in BUGS.items() for bug in bugs]


@pytest.mark.parametrize("name, bug", CASES, ids=[bug.__name__.strip("_") for _, bug in CASES])
def test_the_gradient_checks_catch_a_broken_backward(ns: dict, name: str, bug, monkeypatch: pytest.MonkeyPatch) -> None:
    params, x, y = problem(ns)
    monkeypatch.setitem(ns, name, bug(ns))  # the notebook's functions look each other up in this namespace
    autograd_errors = ns["check_against_autograd"](params, x, y)
    assert not ns["all_below"](autograd_errors, 1e-3), f"the check missed the bug: {autograd_errors}"
    fd_errors = ns["check_against_finite_differences"](params, x, y, 40, 1e-6, torch.Generator().manual_seed(0))
    assert not ns["all_below"](fd_errors, 1e-3), f"the finite-difference check missed the bug: {fd_errors}"


def test_a_nan_error_fails_the_check_wherever_it_is(ns: dict) -> None:
    """The control is the old check, max(...) < tol, which a NaN after the first parameter passes."""
    for errors in ({"W1": math.nan, "b1": 1e-12}, {"W1": 1e-12, "b1": math.nan}, {"W1": 1e-12, "b1": math.inf}):
        assert not ns["all_below"](errors, 1e-8), errors
    assert max({"W1": 1e-12, "b1": math.nan}.values()) < 1e-8, "the control: max() skips the NaN"
    assert ns["all_below"]({"W1": 1e-12, "b1": 1e-9}, 1e-8)


def test_the_scalar_engine_matches_autograd(ns: dict) -> None:
    Value = ns["Value"]
    inputs = [0.7, -1.3, 2.1]
    a, b, c = (Value(v) for v in inputs)
    out = ((a * b + c ** 2).tanh() - a / c + (b * 0.5).exp().log() * a + (c - b).relu() + 3.0 * a * a).log()
    out.backward()
    ta, tb, tc = (torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in inputs)
    ref = ((ta * tb + tc ** 2).tanh() - ta / tc + (tb * 0.5).exp().log() * ta + (tc - tb).relu() + 3.0 * ta * ta).log()
    ref.backward()
    assert out.data == pytest.approx(ref.item(), rel=1e-12)
    for v, t in zip((a, b, c), (ta, tb, tc)):
        assert v.grad == pytest.approx(t.grad.item(), rel=1e-10, abs=1e-12)


def test_the_scalar_engine_accumulates_over_shared_values(ns: dict) -> None:
    Value = ns["Value"]
    x = Value(3.0)
    y = x * x + x  # x reaches y along three paths: dy/dx = 2x + 1
    z = y * y  # dz/dx = 2y (2x + 1)
    z.backward()
    assert x.grad == pytest.approx(2 * 12.0 * 7.0)


@pytest.fixture(scope="module")
def sym() -> dict:
    return run_tagged(NOTEBOOK, "symmetry", count=1, namespace={"torch": torch})


def test_the_symmetry_data_are_the_64_vectors_and_8_read_the_same_backwards(sym: dict) -> None:
    x, d = sym["symmetry_data"](6)
    assert x.shape == (64, 6) and len(set(map(tuple, x.tolist()))) == 64
    assert d.sum().item() == 8 and all(d[i].item() == (x[i].tolist() == x[i].flip(0).tolist()) for i in range(64))


def test_the_symmetry_networks_gradients_equal_autograd_and_the_control_does_not(sym: dict) -> None:
    x, d = sym["symmetry_data"](6)
    for seed in range(3):
        params = sym["symmetry_init"](5, 6, 2, 1.0, torch.Generator().manual_seed(seed))
        assert sym["symmetry_gradient_gap"](params, x, d, output_slope=True) < 1e-5
        assert sym["symmetry_gradient_gap"](params, x, d, output_slope=False) > 0.1


def test_fig_1s_weights_solve_the_task_and_a_broken_ratio_does_not(sym: dict) -> None:
    """The caption's solution, built by hand: mirrored weights of opposite sign in the ratio 1 : 2 : 4, negative hidden
    biases, a positive output bias. Every output is on the right side of 0.5; the control, 1 : 1 : 2, is not (two
    half-patterns then send the same sum, so an asymmetric vector cancels like a symmetric one)."""
    x, d = sym["symmetry_data"](6)

    def net(half: list[float]) -> list[torch.Tensor]:
        w = torch.tensor(half + [-v for v in reversed(half)])  # (6,): antisymmetric about the middle
        w1 = torch.stack([w, -w]).unsqueeze(0)  # (2, 6) -> (1, 2, 6): one network, two hidden units
        return [4 * w1, torch.full((1, 2), -2.0), torch.full((1, 1, 2), -20.0), torch.full((1, 1), 8.0)]

    y, error, _ = sym["symmetry_forward_backward"](net([1.0, 2.0, 4.0]), x, d)
    assert (y - d).abs().max().item() < 0.5 and error.item() < 0.5
    y_control, _, _ = sym["symmetry_forward_backward"](net([1.0, 1.0, 2.0]), x, d)
    assert (y_control - d).abs().max().item() > 0.5
