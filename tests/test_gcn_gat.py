"""The message passing of graph_learning/gcn_gat is right: the sparse propagation equals a dense matrix product,
the GCN normalisation is Eq. 2 of Kipf and Welling, and the GAT's neighbourhood softmax sums to 1 per node and
equals a dense masked softmax. Each check is paired with a control broken in one way, which it must catch.

The notebook's own functions are executed into a namespace (tests/notebook_cells.py), so the tests check the code
the notebook teaches. Small random graphs, float64, nothing written anywhere.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from notebook_cells import notebook_functions

REPO_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO_ROOT / "graph_learning" / "gcn_gat" / "gcn_gat.ipynb"
N = 12


@pytest.fixture(scope="module")
def ns() -> dict:
    return notebook_functions(NOTEBOOK, "propagate", "dense_adjacency", "degrees", "gcn_edges", "neighbourhood_softmax",
                              "label_propagation", namespace={"torch": torch, "F": F, "math": math})


def random_graph(seed: int = 0, n: int = N, p: float = 0.3) -> torch.Tensor:
    """A random undirected graph without self-loops as a (2, E) edge list, both directions."""
    gen = torch.Generator().manual_seed(seed)
    upper = torch.rand(n, n, generator=gen).triu(1) < p
    upper &= torch.ones(n, n, dtype=torch.bool).triu(1)
    adj = upper | upper.T
    return adj.nonzero().T.contiguous()  # (E, 2) -> (2, E), row 0 = source... symmetric, so either reading holds


def test_propagation_equals_the_dense_matrix_product_and_catches_swapped_directions(ns: dict) -> None:
    gen = torch.Generator().manual_seed(1)
    edges = torch.tensor([[0, 0, 1, 2, 3, 3], [1, 2, 2, 0, 0, 1]])  # directed: j -> i sends h[j] to i
    w = torch.rand(edges.shape[1], generator=gen, dtype=torch.float64)
    h = torch.randn(4, 5, generator=gen, dtype=torch.float64)
    dense = torch.zeros(4, 4, dtype=torch.float64)
    for (j, i), wk in zip(edges.T.tolist(), w.tolist()):
        dense[i, j] += wk  # written out here, independently of dense_adjacency
    assert torch.allclose(ns["propagate"](h, edges, w), dense @ h, atol=1e-12)
    assert torch.allclose(ns["dense_adjacency"](edges, 4, w.float()).double(), dense, atol=1e-6)
    swapped = ns["propagate"](h, edges.flip(0), w)  # the control: messages sent the wrong way
    assert (swapped - dense @ h).abs().max() > 0.1
    h3 = torch.randn(4, 2, 3, generator=gen, dtype=torch.float64)  # per-head messages (N, K, C), as in the GAT
    assert torch.allclose(ns["propagate"](h3, edges, w), torch.einsum("ij,jkc->ikc", dense, h3), atol=1e-12)


def test_gcn_normalisation_is_eq_2(ns: dict) -> None:
    edges = random_graph()
    index, weight = ns["gcn_edges"](edges, N)
    a_hat = ns["dense_adjacency"](index, N, weight).double()
    a_tilde = ns["dense_adjacency"](edges, N).double() + torch.eye(N, dtype=torch.float64)
    d = a_tilde.sum(1)
    expected = a_tilde / torch.sqrt(d[:, None] * d[None, :])  # D^-1/2 (A + I) D^-1/2
    assert torch.allclose(a_hat, expected, atol=1e-6) and torch.allclose(a_hat, a_hat.T, atol=1e-7)
    # its largest eigenvalue is 1, with eigenvector sqrt(d): repeated propagation neither explodes nor vanishes
    assert torch.linalg.eigvalsh(a_hat).max().item() == pytest.approx(1.0, abs=1e-6)
    assert torch.allclose(a_hat @ d.sqrt(), d.sqrt(), atol=1e-5)
    wrong = a_tilde / (d[:, None] * d[None, :])  # the control: the square root dropped
    assert (wrong - a_hat).abs().max() > 1e-2


def test_the_ablated_normalisations(ns: dict) -> None:
    edges = random_graph(seed=2)
    a = ns["dense_adjacency"](edges, N).double()
    index, weight = ns["gcn_edges"](edges, N, self_loops=False)
    no_loops = ns["dense_adjacency"](index, N, weight).double()
    assert (no_loops.diagonal() == 0).all()
    d = a.sum(1).clamp_min(1)
    assert torch.allclose(no_loops, a / torch.sqrt(d[:, None] * d[None, :]), atol=1e-6)
    index, weight = ns["gcn_edges"](edges, N, symmetric=False)
    plain = ns["dense_adjacency"](index, N, weight).double()
    assert torch.equal(plain, a + torch.eye(N, dtype=torch.float64))
    index, weight = ns["gcn_edges"](edges, N)  # the control: neither ablation
    default = ns["dense_adjacency"](index, N, weight).double()
    assert (default.diagonal() > 0).all() and not torch.allclose(default, a / torch.sqrt(d[:, None] * d[None, :]))
    assert not torch.equal(default, a + torch.eye(N, dtype=torch.float64))


def test_the_neighbourhood_softmax_sums_to_one_per_node_and_equals_a_dense_masked_softmax(ns: dict) -> None:
    index, _ = ns["gcn_edges"](random_graph(seed=3), N)  # with self-loops: every node has a neighbour
    gen = torch.Generator().manual_seed(4)
    scores = 5 * torch.randn(index.shape[1], 3, generator=gen, dtype=torch.float64)
    alpha = ns["neighbourhood_softmax"](scores, index[1], N)
    sums = torch.zeros(N, 3, dtype=torch.float64).index_add_(0, index[1], alpha)
    assert torch.allclose(sums, torch.ones_like(sums), atol=1e-12) and (alpha > 0).all()
    dense = torch.full((3, N, N), -math.inf, dtype=torch.float64)
    dense[:, index[1], index[0]] = scores.T  # (E, 3) -> (3, N, N), row = target node
    expected = torch.softmax(dense, -1)[:, index[1], index[0]].T  # (3, N, N) -> (E, 3)
    assert torch.allclose(alpha, expected, atol=1e-12)
    control = torch.zeros(N, 3, dtype=torch.float64).index_add_(0, index[1], torch.softmax(scores, 0))
    assert (control - 1).abs().max() > 0.5  # one softmax over all edges is not a softmax per node


def test_the_neighbourhood_softmax_is_stable_and_shift_invariant_per_node(ns: dict) -> None:
    index, _ = ns["gcn_edges"](random_graph(seed=5), N)
    gen = torch.Generator().manual_seed(6)
    scores = torch.randn(index.shape[1], 2, generator=gen, dtype=torch.float64)
    shift = 1e4 * torch.randn(N, 2, generator=gen, dtype=torch.float64)  # a different constant per target node
    alpha = ns["neighbourhood_softmax"](scores, index[1], N)
    shifted = ns["neighbourhood_softmax"](scores + shift[index[1]], index[1], N)  # would overflow without the max
    assert torch.isfinite(shifted).all() and torch.allclose(alpha, shifted, atol=1e-9)
    e = (scores + shift[index[1]]).exp()  # the control: the same softmax without subtracting each node's max
    naive = e / torch.zeros(N, 2, dtype=torch.float64).index_add_(0, index[1], e)[index[1]]  # (N, 2) -> (E, 2)
    assert not torch.isfinite(naive).all()


def test_label_propagation_spreads_labels_within_components(ns: dict) -> None:
    # two paths, 0-1-2-3 and 4-5-6-7, labelled at one end each
    pairs = [(0, 1), (1, 2), (2, 3), (4, 5), (5, 6), (6, 7)]
    edges = torch.tensor(pairs + [(b, a) for a, b in pairs]).T
    y = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    scores = ns["label_propagation"](edges, y, torch.tensor([0, 4]), 2, 0.9, 50)
    assert scores.argmax(1).tolist() == y.tolist()
    assert (scores[:4, 1] == 0).all() and (scores[4:, 0] == 0).all()  # nothing crosses between the components
    assert (scores[[1, 2, 3], 0] > 0).all() and (scores[[5, 6, 7], 1] > 0).all()  # it spread along each path
    none = ns["label_propagation"](edges, y, torch.tensor([0, 4]), 2, 0.9, 0)  # the control: no propagation
    assert (none[[1, 2, 3, 5, 6, 7]] == 0).all()
