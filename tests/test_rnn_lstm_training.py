"""The training machinery of text_generation/rnn_lstm that is not a recurrent cell: the time-based schedule
(Eq. 14), the coordinate search of the tuning probes, the sliding-window evaluation and the exploding-gradient
measurement against the spectral radius, each executed from the notebook's own cells.

Every property is checked together with a control that breaks it: a schedule that ignores the seconds, a search
that would need a probe it already has, a window layout that skips or repeats a character, a recurrent matrix
below spectral radius 1.
"""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import common
from notebook_cells import cell_sources, notebook_functions, run_sources

NOTEBOOK = Path(__file__).resolve().parent.parent / "text_generation" / "rnn_lstm" / "rnn_lstm.ipynb"


class Cfg:
    """The Config fields the functions under test read."""

    warmup_frac, min_lr_frac = 0.1, 0.1
    time_budget_s, eval_every, eval_every_s = 100.0, 10, 30.0
    batch_size, seq_len, eval_stride, eval_chunk, eval_batches = 3, 16, 4, 1, 5
    emb_dim, explode_hidden, seed = 8, 64, 0


def notebook_class(name: str, namespace: dict) -> dict:
    """Execute the notebook's top-level class `name` in `namespace` and return it."""
    source = "\n".join(cell_sources(NOTEBOOK))
    node = next(n for n in ast.parse(source).body if isinstance(n, ast.ClassDef) and n.name == name)
    return run_sources(["\n".join(source.split("\n")[node.lineno - 1:node.end_lineno])], NOTEBOOK, namespace)


def schedule() -> dict:
    return notebook_functions(NOTEBOOK, "progress_of", "lr_at", "eval_due", namespace={"math": math, "Config": Cfg})


def test_the_schedule_runs_on_training_seconds_under_a_time_budget() -> None:
    ns = schedule()
    progress_of, lr_at = ns["progress_of"], ns["lr_at"]
    assert progress_of(10, 50.0, 100.0, 1_000_000) == 0.5  # the seconds, not the 10 steps, set the progress
    assert progress_of(10, 50.0, None, 1_000) == 0.01  # control: a step budget ignores the seconds
    assert progress_of(900, 50.0, 100.0, 1_000) == 0.9  # the step cap counts when it is further along
    assert progress_of(5, 250.0, 100.0, 1_000) == 1.0  # never beyond the end
    peak = 1e-2
    assert lr_at(0.0, peak, Cfg) == 0.0
    assert lr_at(0.05, peak, Cfg) == pytest.approx(0.5 * peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.05))))
    assert lr_at(1.0, peak, Cfg) == pytest.approx(Cfg.min_lr_frac * peak)  # the cosine ends with the budget
    after_warmup = [lr_at(p / 100, peak, Cfg) for p in range(10, 101)]
    assert all(a > b for a, b in zip(after_warmup, after_warmup[1:]))  # then decays monotonically


def test_the_rate_depends_on_the_seconds_so_a_resume_must_restore_them() -> None:
    """The learning rate is a function of (step, seconds): a resumed run whose model clock restarted at 0 would get
    another rate than the uninterrupted run at the same step, which is why the checkpoint stores the model's seconds
    (the resume itself is tested by the notebook test's stop-and-resume run)."""
    ns = schedule()

    def rate(step: int, seconds: float) -> float:
        return ns["lr_at"](ns["progress_of"](step, seconds, 100.0, 10**6), 5e-3, Cfg)

    assert rate(400, 0.0) != pytest.approx(rate(400, 63.0))


def test_estimates_fall_on_a_grid_of_training_seconds() -> None:
    eval_due = schedule()["eval_due"]
    assert eval_due(0, 0.0, 0, Cfg)  # the first estimate, before training
    assert not eval_due(7, 29.9, 1, Cfg) and eval_due(8, 30.1, 1, Cfg) and not eval_due(9, 31.0, 2, Cfg)
    step_budget = type("StepCfg", (Cfg,), {"time_budget_s": None})
    assert eval_due(20, 1.0, 1, step_budget) and not eval_due(21, 500.0, 1, step_budget)


def search() -> dict:
    return notebook_functions(NOTEBOOK, "coordinate_search")


def test_the_coordinate_search_finds_each_knobs_best_and_never_repeats_a_probe() -> None:
    target = {"lr": 4, "seq_len": 2, "hidden": 7}
    calls = []

    def run_probe(recipe: dict) -> dict:
        calls.append(dict(recipe))
        return {"val": sum((recipe[k] - v) ** 2 for k, v in target.items())}

    probes, saves = {}, []
    grid = {"lr": (1, 4, 9), "seq_len": (1, 2, 3), "hidden": (5, 7)}
    best, rounds = search()["coordinate_search"]("m", {"lr": 1, "seq_len": 1, "hidden": 5}, grid, probes, run_probe,
                                                   saves.append)
    assert best == target
    assert [knob for knob, _ in rounds] == list(grid)
    assert rounds[0][1] == {1: 9 + 1 + 4, 4: 0 + 1 + 4, 9: 25 + 1 + 4}  # lr's round, at seq_len 1 and hidden 5
    # the start of each later round is the previous round's winner: already probed, so 3 + 2 + 1 probes, not 8
    assert len(calls) == len(probes) == len(saves) == 6
    again = []
    best_again, _ = search()["coordinate_search"]("m", {"lr": 1, "seq_len": 1, "hidden": 5}, grid, probes,
                                                  lambda r: again.append(r) or {"val": 0.0}, saves.append)
    assert best_again == target and again == []  # a resumed search reuses every cached probe


def sliding() -> dict:
    ns = {"torch": torch, "nn": nn, "F": F, "common": common, "Config": Cfg}
    return notebook_functions(NOTEBOOK, "sliding_windows", "sliding_window_loss", "make_streams", "lm_loss", namespace=ns)


@pytest.mark.parametrize("n_targets, window, stride", [(100, 32, 8), (97, 16, 1), (10, 16, 4), (64, 64, 16)])
def test_every_character_is_scored_once_with_enough_context(n_targets: int, window: int, stride: int) -> None:
    spans = sliding()["sliding_windows"](n_targets, window, stride)
    scored = [t for _, end, first in spans for t in range(first, end)]
    assert scored == list(range(n_targets))  # each target exactly once, in order
    repeats = [(b, e, max(f - 1, 0)) for b, e, f in spans]  # the controls: windows that score one more or one less
    skips = [(b, e, min(f + 1, e)) for b, e, f in spans]
    for broken in (repeats, skips):
        if len(spans) > 1 or broken is skips:
            assert [t for _, e, f in broken for t in range(f, e)] != list(range(n_targets))
    for k, (begin, end, first) in enumerate(spans):
        assert 0 <= begin <= first < end <= n_targets and end - begin <= window
        if k > 0:  # context of the first target scored in the window: the inputs begin..first
            assert first - begin + 1 >= window - stride + 1


class SumLM(nn.Module):
    """A language model whose every logit depends on all of its context: the running sum of the embeddings of the
    characters it has seen in the window, read out linearly. ids (B, T) -> logits (B, T, V), state."""

    recurrent = False

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb, self.head = nn.Embedding(11, 8), nn.Linear(8, 11)

    def forward(self, idx: torch.Tensor, state=None):
        return self.head(self.emb(idx).cumsum(dim=1)), None  # (B, T, E) -> (B, T, V)


@pytest.mark.parametrize("chunk", [1, 5])
def test_stride_one_gives_every_character_its_full_context(chunk: int) -> None:
    """At stride 1 the sliding-window loss equals scoring each character alone with its last seq_len - 1
    predecessors (computed here by brute force), whether one window or `chunk` windows (24 windows: the last
    group holds 4) go through the model at a time; a larger stride, which shortens some contexts, differs."""
    ns, model = sliding(), SumLM()
    val = torch.randint(0, 11, (3 * 40,), generator=torch.Generator().manual_seed(1))
    rows = ns["make_streams"](val, Cfg.batch_size)  # (3, 40)
    losses = []
    with torch.no_grad():
        for p in range(rows.size(1) - 1):
            logits, _ = model(rows[:, max(0, p - Cfg.seq_len + 1):p + 1])
            losses.append(F.cross_entropy(logits[:, -1], rows[:, p + 1]))
    brute = torch.stack(losses).mean().item()
    stride_one = type("Stride1", (Cfg,), {"eval_stride": 1, "eval_chunk": chunk})
    assert ns["sliding_window_loss"](model, val, stride_one) == pytest.approx(brute, abs=1e-5)
    assert abs(ns["sliding_window_loss"](model, val, type("Stride4", (Cfg,), {"eval_chunk": chunk})) - brute) > 1e-5


def test_a_loss_estimate_is_the_same_one_batch_or_several_at_a_time() -> None:
    """`estimate_loss` stacks `eval_chunk` of its fixed batches into one forward pass: 5 batches 2 at a time (the
    last pass holds one) give the mean of the 5 batches' losses, as one at a time does. Control: averaging the three
    passes' losses as equals, which over-weights the lone last batch, differs."""
    ns = {"torch": torch, "nn": nn, "F": F, "common": common, "Config": Cfg}
    ns = notebook_functions(NOTEBOOK, "get_batch", "lm_loss", "estimate_loss", namespace=ns)
    model, data, cpu = SumLM(), torch.randint(0, 11, (500,), generator=torch.Generator().manual_seed(3)), torch.device("cpu")
    one_at_a_time = ns["estimate_loss"](model, data, Cfg, cpu, seed=4)
    gen = torch.Generator().manual_seed(4)
    batches = [ns["get_batch"](data, Cfg.batch_size, Cfg.seq_len, gen) for _ in range(Cfg.eval_batches)]
    with torch.no_grad():
        losses = [ns["lm_loss"](model(x)[0], y).item() for x, y in batches]
    assert one_at_a_time == pytest.approx(sum(losses) / len(losses), abs=1e-6)
    assert ns["estimate_loss"](model, data, type("Two", (Cfg,), {"eval_chunk": 2}), cpu, seed=4) == pytest.approx(
        one_at_a_time, abs=1e-6)
    passes = [sum(losses[0:2]) / 2, sum(losses[2:4]) / 2, losses[4]]
    assert abs(sum(passes) / 3 - one_at_a_time) > 1e-4


def exploding() -> dict:
    ns = {"torch": torch, "nn": nn, "F": F, "common": common, "Config": Cfg}
    notebook_class("CharRNN", ns)
    return notebook_functions(NOTEBOOK, "rnn_with_radius", "gradient_through_time", namespace=ns)


def gradient_growth(radius: float, lengths: tuple[int, ...] = (1, 48)) -> tuple[float, float]:
    ns = exploding()
    model = ns["rnn_with_radius"](11, Cfg, radius)
    assert torch.linalg.eigvals(model.rnn.weight_hh_l0.detach()).abs().max().item() == pytest.approx(radius, rel=1e-4)
    x = torch.randint(0, 11, (8, max(lengths)), generator=torch.Generator().manual_seed(2))
    norms = [ns["gradient_through_time"](model, x[:, :T], x[:, :T]) for T in lengths]
    return norms[-1][0] / norms[0][0], norms[-1][1] / norms[0][1]


def test_the_gradient_through_time_explodes_above_spectral_radius_one_and_vanishes_below() -> None:
    grows_h0, grows_theta = gradient_growth(3.0)
    decays_h0, _ = gradient_growth(0.5)  # the control: the same network, the same text, radius 0.5
    assert grows_h0 > 1e3 and grows_theta > 10
    assert decays_h0 < 1e-6


@pytest.mark.parametrize("kind", ["rnn", "lstm"])
def test_the_recurrent_layers_train_in_fp32_under_autocast(kind: str) -> None:
    """cuDNN's RNN, LSTM and GRU run in fp16 under CUDA autocast whatever dtype it asks for (PyTorch casts them to
    half), and bf16 runs have no loss scaling: the `full` slice on an H100 left two LSTM probes at the unigram loss.
    CharRNN turns autocast off around its layers. On the CPU, bf16 autocast lowers nn.RNN and nn.LSTM to bf16,
    which shows the same switch at work; the control calls the layer directly and is lowered."""
    model = notebook_class("CharRNN", {"torch": torch, "nn": nn})["CharRNN"](kind, 10, 8, 16, 2, 0.0)
    dtypes: list[torch.dtype] = []
    model.rnn.register_forward_hook(lambda module, inputs, output: dtypes.append(output[0].dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(torch.zeros(2, 5, dtype=torch.long))
        model.rnn(torch.randn(2, 5, 8))  # the control: the same layer, autocast left on
    assert dtypes == [torch.float32, torch.bfloat16]
