"""`score_text`, the one-pass scorer of the char-GPT and BPE GPT notebooks, taken from each notebook.

The properties its prose states: every target after `n_context` is scored exactly once; each sees between
`block_size - stride + 1` and `block_size` ids (fewer only near the start); and the total equals scoring each
target alone from exactly the ids the scorer says it saw. A control that scores every target of every window
(overlapping windows counted twice) must fail the first check.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import common
from notebook_cells import notebook_functions

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = [ROOT / "text_generation" / "char_gpt" / "char_gpt.ipynb",
             ROOT / "text_generation" / "bpe_gpt" / "bpe_gpt.ipynb"]
CASES = [(200, 1, 16, 16), (200, 16, 16, 4), (200, 16, 16, 1), (97, 10, 12, 5), (40, 3, 64, 7), (33, 32, 32, 32)]


def scorer(notebook: Path):
    return notebook_functions(notebook, "score_text",
                              namespace={"torch": torch, "nn": nn, "F": F, "common": common})["score_text"]


class Uniform(nn.Module):
    """Zero logits over `vocab` ids: every prediction costs ln(vocab) nats, whatever it saw."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return torch.zeros(*idx.shape, self.vocab)  # (B, T) -> (B, T, V)


class CausalToy(nn.Module):
    """A causal model whose prediction depends on every id it saw and on their positions in its window."""

    def __init__(self, vocab: int, block_size: int):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.emb = nn.Parameter(torch.randn(vocab, 8, generator=g))
        self.pos = nn.Parameter(torch.randn(block_size, 8, generator=g))
        self.out = nn.Parameter(torch.randn(8, vocab, generator=g))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.emb[idx] + self.pos[: idx.shape[1]]  # (B, T, 8)
        running = x.cumsum(1) / torch.arange(1, idx.shape[1] + 1)[:, None]  # (B, T, 8): mean of positions <= t
        return running @ self.out  # (B, T, 8) @ (8, V) -> (B, T, V)


def unmasked_control(model, ids, n_context, block_size, stride, batch_size):
    """Broken on purpose: scores all targets of every window, so overlapping targets count more than once."""
    total, n = 0.0, len(ids)
    for end in range(n_context - 1 + stride, n - 1 + stride, stride):
        end = min(end, n - 1)
        s = max(end - block_size, 0)
        logits = model(ids[None, s:end])  # (1, L, V)
        total += F.cross_entropy(logits[0], ids[s + 1:end + 1], reduction="sum").item()
    return total, None


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_target_is_scored_once(notebook: Path) -> None:
    score_text = scorer(notebook)
    for n, n_context, block, stride in CASES:
        ids = torch.randint(0, 11, (n,), generator=torch.Generator().manual_seed(n))
        total, contexts = score_text(Uniform(11), ids, n_context, block, stride, batch_size=4)
        assert len(contexts) == n - n_context
        assert total == pytest.approx((n - n_context) * math.log(11), rel=1e-6)
        control, _ = unmasked_control(Uniform(11), ids, n_context, block, stride, batch_size=4)
        if stride < block and n - n_context > stride:  # overlapping windows: the control double-counts
            assert control > total * 1.01, "the control must fail the once-only check"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_contexts_are_as_stated_and_the_total_is_exact(notebook: Path) -> None:
    score_text = scorer(notebook)
    for n, n_context, block, stride in CASES:
        model = CausalToy(11, block)
        ids = torch.randint(0, 11, (n,), generator=torch.Generator().manual_seed(n + 1))
        with torch.no_grad():
            total, contexts = score_text(model, ids, n_context, block, stride, batch_size=3)
            positions = torch.arange(n_context, n)
            assert bool((contexts <= block).all()) and bool((contexts <= positions).all())
            floor = torch.minimum(positions, torch.full_like(positions, block - stride + 1))
            assert bool((contexts >= floor).all()), "each target sees at least block_size - stride + 1 ids"
            brute = sum(F.cross_entropy(model(ids[None, p - c:p])[0, -1], ids[p]).item()
                        for p, c in zip(positions.tolist(), contexts.tolist()))
        assert total == pytest.approx(brute, rel=1e-5)
