"""Numbers and pictures a notebook reports are computed in full fp32, even after `enable_tf32()`.

On an Ampere or newer GPU, `enable_tf32()` lets fp32 matmuls keep only 10 mantissa bits; `fp32_exact()` turns that
off inside its block. The CPU cannot show the difference in the results, but it can show the setting each matmul
runs under: `torch.get_float32_matmul_precision()` is "high" after `enable_tf32()` and "highest" inside
`fp32_exact()`. Each test records it at the operation it guards, in the notebook's own function, and pairs it with
a control: the same function with `fp32_exact` replaced by a block that does nothing must record "high".
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode

from common import enable_tf32, fp32_exact, stream_seed
from notebook_cells import notebook_functions

REPO_ROOT = Path(__file__).resolve().parent.parent
SIMCLR = REPO_ROOT / "representation_learning" / "simclr" / "simclr.ipynb"
FLOW_MATCHING = REPO_ROOT / "image_generation" / "flow_matching" / "flow_matching.ipynb"


class MatmulPrecision(TorchFunctionMode):
    """Records `torch.get_float32_matmul_precision()` at every matrix multiply inside the block."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        if func in (torch.Tensor.__matmul__, torch.matmul, torch.mm, torch.Tensor.matmul, torch.Tensor.mm):
            self.seen.append(torch.get_float32_matmul_precision())
        return func(*args, **(kwargs or {}))


def knn_predict(exact: bool):  # noqa: ANN201
    """The SimCLR notebook's `knn_predict`, with the real `fp32_exact` or (control) a block that does nothing."""
    namespace = {"torch": torch, "fp32_exact": fp32_exact if exact else contextlib.nullcontext}
    return notebook_functions(SIMCLR, "knn_predict", namespace=namespace)["knn_predict"]


@pytest.mark.parametrize("exact", [True, False])
def test_simclr_knn_similarities_are_full_fp32(exact: bool) -> None:
    enable_tf32()  # as the notebook's Setup does; conftest.py restores the defaults after the test
    gen = torch.Generator().manual_seed(0)
    bank = torch.nn.functional.normalize(torch.randn(50, 8, generator=gen), dim=1)
    queries = torch.nn.functional.normalize(torch.randn(7, 8, generator=gen), dim=1)
    labels = torch.randint(0, 3, (50,), generator=gen)
    with MatmulPrecision() as spy:
        preds = knn_predict(exact)(bank, labels, queries, k=5, t=0.1, num_classes=3, chunk=4)
    assert preds.shape == (7,) and len(spy.seen) == 2, (preds.shape, spy.seen)  # two chunks of queries
    expected = "highest" if exact else "high"  # the control: TF32 stays on without fp32_exact
    assert set(spy.seen) == {expected}, spy.seen


def trajectory_strip(exact: bool, seen: list[str]):  # noqa: ANN201
    """The flow-matching notebook's `trajectory_strip` with stand-ins for the sampler and the network: the velocity
    evaluation that draws the predicted endpoints records the matmul precision it runs under."""
    n, nfe = 2, 4
    kept = [torch.full((n, 1, 28, 28), k / nfe) for k in range(nfe + 1)]

    def velocity(model, x, t, y, w, null, cfg):  # noqa: ANN001, ANN202
        seen.append(torch.get_float32_matmul_precision())
        return torch.zeros_like(x)

    namespace = {"torch": torch, "nn": torch.nn, "Config": object, "stream_seed": stream_seed,
                 "fp32_exact": fp32_exact if exact else contextlib.nullcontext, "velocity": velocity,
                 "ode_sample": lambda *args, **kwargs: (kept[-1], kept),
                 "time_grid": lambda steps, shift: torch.linspace(0, 1, steps + 1).tolist()}
    return notebook_functions(FLOW_MATCHING, "trajectory_strip", namespace=namespace)["trajectory_strip"], nfe


@pytest.mark.parametrize("exact", [True, False])
def test_flow_matching_endpoint_row_is_full_fp32(exact: bool) -> None:
    enable_tf32()  # as the notebook's Setup does; conftest.py restores the defaults after the test
    seen: list[str] = []
    strip_fn, nfe = trajectory_strip(exact, seen)
    cfg = type("Cfg", (), {"seed": 0, "time_shift": 1.0})()
    strip = strip_fn(torch.nn.Linear(1, 1), 2, nfe, cfg, 10, [0, 2, nfe])
    assert strip.shape == (2, 2, 3, 1, 28, 28) and len(seen) == 2, (strip.shape, seen)  # the last point needs none
    assert set(seen) == {"highest" if exact else "high"}, seen
