"""The recurrent cells of text_generation/rnn_lstm, written from their equations, against torch.nn's layers.

The cells live in the notebook (they are the lesson). This test reads the notebook with nbformat, executes the one
code cell that starts with MARKER in a fresh namespace, and compares the functions it defines with `torch.nn.RNN`,
`torch.nn.LSTM` and `torch.nn.GRU` given the same weights: step by step from a random (non-zero) state, and
unrolled over a sequence through two stacked layers. It also edits one equation at a time in the cell's source and
checks that the comparison catches it, so the comparison itself cannot silently pass everything.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn

from notebook_cells import cell_sources, run_sources

NOTEBOOK = Path(__file__).resolve().parent.parent / "text_generation" / "rnn_lstm" / "rnn_lstm.ipynb"
MARKER = "# --- recurrent cells from their equations"
TORCH_LAYERS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
TOLERANCE = 1e-5  # float32, as the issue and the notebook require


def cell_namespace(edit: tuple[str, str] | None = None) -> dict:
    """Execute the notebook's marked cell (optionally with one source edit) and return the names it defines."""
    sources = cell_sources(NOTEBOOK, select=lambda source: source.startswith(MARKER))
    assert len(sources) == 1, f"expected exactly one code cell starting with {MARKER!r}, found {len(sources)}"
    source = sources[0]
    if edit is not None:
        old, new = edit
        assert source.count(old) == 1, f"the mutation's target {old!r} is not in the cell exactly once"
        source = source.replace(old, new)
    return run_sources([source], NOTEBOOK, {"torch": torch, "nn": nn})


def layer_weights(module: nn.Module, k: int) -> dict[str, torch.Tensor]:
    """Layer k's weights of a torch.nn RNN/LSTM/GRU, under the names the cells use (mapped here, independently)."""
    return {"W_ih": getattr(module, f"weight_ih_l{k}"), "W_hh": getattr(module, f"weight_hh_l{k}"),
            "b_ih": getattr(module, f"bias_ih_l{k}"), "b_hh": getattr(module, f"bias_hh_l{k}")}


def one_step_diff(ns: dict, kind: str, seed: int = 0) -> float:
    """Max |cell - torch.nn layer| for one time step from a random state."""
    torch.manual_seed(seed)
    module = TORCH_LAYERS[kind](5, 7, 1, batch_first=True)
    x, h0, c0 = torch.randn(4, 1, 5), torch.randn(1, 4, 7), torch.randn(1, 4, 7)
    with torch.no_grad():
        if kind == "lstm":
            (_, (h_ref, c_ref)) = module(x, (h0, c0))
            h, c = ns["lstm_cell"](x[:, 0], (h0[0], c0[0]), layer_weights(module, 0))
            return max((h - h_ref[0]).abs().max().item(), (c - c_ref[0]).abs().max().item())
        _, h_ref = module(x, h0)
        h = ns[f"{kind}_cell"](x[:, 0], h0[0], layer_weights(module, 0))
        return (h - h_ref[0]).abs().max().item()


def unrolled_diff(ns: dict, kind: str, seed: int = 0) -> float:
    """Max |unrolled cells - torch.nn layer| over every output of a 2-layer stack, 30 steps, zero initial state."""
    torch.manual_seed(seed)
    module = TORCH_LAYERS[kind](5, 7, 2, batch_first=True)
    xs = torch.randn(3, 30, 5)
    with torch.no_grad():
        ours = ns["unroll"](kind, xs, [layer_weights(module, k) for k in range(2)])
        theirs, _ = module(xs)
    assert ours.shape == theirs.shape == (3, 30, 7)
    return (ours - theirs).abs().max().item()


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_cell_matches_torch_nn_in_one_step(kind: str) -> None:
    ns = cell_namespace()
    for seed in range(3):
        assert one_step_diff(ns, kind, seed) < TOLERANCE


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_unrolled_cells_match_torch_nn_over_a_sequence(kind: str) -> None:
    assert unrolled_diff(cell_namespace(), kind) < TOLERANCE


MUTATIONS = {  # one wrong equation each; every one must be caught
    "rnn: sigmoid instead of tanh (Eq. 1)": ("rnn", ("return torch.tanh(affine(", "return torch.sigmoid(affine(")),
    "lstm: no forget gate (Eq. 6)": ("lstm", ("c = f * c + i * g", "c = c + i * g")),
    "lstm: no tanh on the cell (Eq. 7)": ("lstm", ("return o * torch.tanh(c), c", "return o * c, c")),
    "gru: update gate swapped (Eq. 11)": ("gru", ("return (1 - z) * n + z * state", "return z * n + (1 - z) * state")),
    "gru: reset gate before W_hn (Cho et al.'s placement, not torch's; Eq. 10)":
        ("gru", ("r * (state @ W_h[2].T + b_h[2])", "(r * state) @ W_h[2].T + b_h[2]")),
}


@pytest.mark.parametrize("name", list(MUTATIONS))
def test_a_wrong_equation_is_detected(name: str) -> None:
    kind, edit = MUTATIONS[name]
    ns = cell_namespace(edit)
    assert max(one_step_diff(ns, kind), unrolled_diff(ns, kind)) > 1e-3, f"{name} went unnoticed"
