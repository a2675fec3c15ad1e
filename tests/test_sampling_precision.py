"""scripts/sampling_precision.py: its CPU stand-in for bf16 tensor cores rounds what they round, and only that."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import sampling_precision  # noqa: E402


def tensor_core_bf16():
    namespace = {"torch": torch}
    exec(sampling_precision.TENSOR_CORE_BF16, namespace)
    return namespace["_TensorCoreBf16"]


def test_a_convolution_is_fp32_arithmetic_on_bf16_inputs_with_a_bf16_output():
    torch.manual_seed(0)
    x, w, b = torch.randn(4, 8, 9, 9), torch.randn(16, 8, 3, 3), torch.randn(16)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16), tensor_core_bf16()():
        emulated = F.conv2d(x, w, b, padding=1)
        linear = F.linear(x[:, :, 0, 0], w[:, :, 0, 0], b)
    r = lambda t: t.bfloat16().float()
    expected = F.conv2d(r(x), r(w), r(b), padding=1).bfloat16()
    assert emulated.dtype == torch.bfloat16 and torch.equal(emulated, expected)
    assert torch.equal(linear, F.linear(r(x[:, :, 0, 0]), r(w[:, :, 0, 0]), r(b)).bfloat16())
    exact = F.conv2d(x, w, b, padding=1)
    assert 0 < (emulated.float() - exact).abs().max() < 0.05 * exact.abs().max(), "bf16 rounding, and only that"


def test_ops_outside_autocast_and_other_ops_are_untouched():
    """fp32 inputs are computed as they are, and an op outside the mode's list keeps its own output dtype even with
    a bf16 input (here the widening copy `.float()`). Control: the same mode with that op added to its list, broken
    in exactly that way, hands the widened tensor back in bf16."""
    x, w = torch.randn(2, 3, 5, 5), torch.randn(4, 3, 3, 3)

    def run(mode):
        with torch.no_grad(), mode():
            return F.conv2d(x, w), x.bfloat16().float()  # no autocast: fp32 inputs; a bf16 input to a copy op

    fp32, widened = run(tensor_core_bf16())
    assert fp32.dtype == torch.float32 and torch.equal(fp32, F.conv2d(x, w))
    assert widened.dtype == torch.float32 and torch.equal(widened, x.bfloat16().float())
    mode = tensor_core_bf16()
    touching = type("TouchesCopies", (mode,), {"OPS": mode.OPS | {"_to_copy"}})
    assert run(touching)[1].dtype == torch.bfloat16
