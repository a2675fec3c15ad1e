"""The char-GPT notebook's attention check, run from the notebook's own cell, and its control.

The cell claims two things: the by-hand attention and PyTorch's fused SDPA agree, and "the output at position t must
not depend on characters after t". The second must be able to fail for that reason: the control runs the same cell
with attention that has no causal mask (by hand and in SDPA alike, so the first assertion still passes) and requires
the cell to stop at "attention leaks information from the future".
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import common
from notebook_cells import cell_sources, notebook_functions, run_sources

NOTEBOOK = Path(__file__).resolve().parent.parent / "text_generation" / "char_gpt" / "char_gpt.ipynb"
CHECK = "attention leaks information from the future"


class FunctionalWithoutCausalMask:
    """torch.nn.functional, but `scaled_dot_product_attention` ignores `is_causal`: SDPA with the mask removed."""

    def __getattr__(self, name: str):
        return getattr(F, name)

    @staticmethod
    def scaled_dot_product_attention(q, k, v, dropout_p: float = 0.0, is_causal: bool = False) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)


def attention_without_mask(q, k, v, dropout_p: float = 0.0):
    """The notebook's `causal_attention` with its one masking line left out."""
    weights = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(dim=-1)  # (..., T, T)
    return F.dropout(weights, p=dropout_p) @ v, weights  # (..., T, T) @ (..., T, d_k) -> (..., T, d_k)


def run_check(broken: bool) -> str:
    """Execute the notebook's check cell on its own `CausalSelfAttention` (with the mask removed if `broken`)."""
    (cell,) = cell_sources(NOTEBOOK, select=lambda source: CHECK in source)
    namespace = notebook_functions(NOTEBOOK, "causal_attention", "CausalSelfAttention",
                                   namespace={"torch": torch, "nn": nn, "F": F, "math": math, "common": common})
    if broken:
        namespace.update(F=FunctionalWithoutCausalMask(), causal_attention=attention_without_mask)
    namespace.update(cfg=SimpleNamespace(n_embd=32, n_head=4, block_size=16), device=torch.device("cpu"))
    torch.manual_seed(0)
    run_sources([cell], NOTEBOOK, namespace)
    return str(namespace["y_manual"].shape)


def test_the_notebooks_check_passes_on_its_causal_attention() -> None:
    assert run_check(broken=False) == "torch.Size([2, 16, 32])"


def test_the_check_fails_on_attention_without_the_causal_mask() -> None:
    with pytest.raises(AssertionError, match=CHECK):
        run_check(broken=True)
