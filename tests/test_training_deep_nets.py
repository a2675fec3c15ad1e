"""The hand-written optimisers, learning-rate schedules and batch normalisation of
image_classification/training_deep_nets equal torch.optim's, torch.optim.lr_scheduler's and nn.BatchNorm1d's, and
these comparisons catch a wrong update rule or a wrong normalisation.

The notebook's cells tagged `optimizers` (SGD, momentum, Nesterov, RMSProp, Adam, AdamW), `schedules` (`lr_at`) and
`batchnorm` (`BatchNorm`) are executed into a namespace of their own, as tests/test_mlp_backprop.py does, so the
test checks the code the notebook teaches. Everything runs in float64 on a few small tensors, in well under a
second. Nothing is written.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from notebook_cells import notebook_functions, run_tagged

NOTEBOOK = Path(__file__).resolve().parent.parent / "image_classification" / "training_deep_nets" / "training_deep_nets.ipynb"
NAMES = ["sgd", "momentum", "nesterov", "rmsprop", "adam", "adamw"]
LRS = {"sgd": 0.1, "momentum": 0.05, "nesterov": 0.05, "rmsprop": 1e-2, "adam": 1e-2, "adamw": 1e-2}
SCHEDULE_CFG = SimpleNamespace(step_at=(0.5, 0.75), step_gamma=0.1, warmup_frac=0.1, onecycle_pct=0.3,
                               onecycle_div=25.0, onecycle_final_div=1e4)


@pytest.fixture(scope="module")
def ns() -> dict:
    namespace: dict = {"torch": torch, "math": math}
    namespace["nn"] = torch.nn
    for tag in ("optimizers", "schedules", "batchnorm"):
        run_tagged(NOTEBOOK, tag, count=1, namespace=namespace)
    notebook_functions(NOTEBOOK, "batchnorm_gaps", namespace=namespace)  # the notebook's own BatchNorm comparison
    return namespace


def params_and_grads(seed: int, steps: int) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
    """float64 parameters of three shapes, and `steps` gradients for each (some coordinates zero, some large)."""
    gen = torch.Generator().manual_seed(seed)
    shapes = [(7, 5), (5,), (3, 7)]
    params = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
    grads = [[torch.randn(s, generator=gen, dtype=torch.float64) * 10 ** torch.randint(-3, 2, s, generator=gen)
              for s in shapes] for _ in range(steps)]
    for g in grads[1]:
        g.view(-1)[0] = 0.0
    return params, grads


def gap(ns: dict, name: str, ref_name: str, weight_decay: float, steps: int = 25, seed: int = 0,
        ours_cls=None) -> float:
    """Largest |ours - torch.optim| after `steps` steps of the same gradients, relative to the largest parameter."""
    start, grads = params_and_grads(seed, steps)
    ours_p = [p.clone() for p in start]
    ref_p = [p.clone().requires_grad_(True) for p in start]
    ours = ours_cls(ours_p, LRS[name], weight_decay=weight_decay) if ours_cls else \
        ns["make_optimizer"](name, ours_p, LRS[name], 0.9, weight_decay)
    ref = ns["make_torch_optimizer"](ref_name, ref_p, LRS[name], 0.9, weight_decay)
    for g in grads:
        for p, q, gi in zip(ours_p, ref_p, g):
            p.grad, q.grad = gi.clone(), gi.clone()
        ours.step()
        ref.step()
    scale = max(q.abs().max().item() for q in ref_p)
    return max((p - q).abs().max().item() for p, q in zip(ours_p, ref_p)) / scale


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_each_optimizer_equals_torch_optim(ns: dict, name: str, weight_decay: float) -> None:
    for seed in range(2):
        assert gap(ns, name, name, weight_decay, seed=seed) < 1e-12


def test_the_optimizers_really_move_the_parameters(ns: dict) -> None:
    start, grads = params_and_grads(0, 3)
    for name in NAMES:
        p = [x.clone() for x in start]
        opt = ns["make_optimizer"](name, p, LRS[name], 0.9)
        for g in grads:
            for pi, gi in zip(p, g):
                pi.grad = gi
            opt.step()
        assert min((a - b).abs().max().item() for a, b in zip(p, start)) > 1e-4, name


@pytest.mark.parametrize("ours, theirs", [("momentum", "nesterov"), ("nesterov", "momentum"), ("adam", "adamw"),
                                          ("rmsprop", "adam"), ("sgd", "momentum")])
def test_the_comparison_tells_neighbouring_rules_apart(ns: dict, ours: str, theirs: str) -> None:
    assert gap(ns, ours, theirs, weight_decay=0.1) > 1e-4


def test_the_comparison_catches_adam_without_bias_correction(ns: dict) -> None:
    adam = ns["Adam"]

    class NoBiasCorrection(adam):
        def update(self, p, g, state):
            t, self.t = self.t, 10 ** 9  # 1 - beta ** t == 1: no correction
            try:
                super().update(p, g, state)
            finally:
                self.t = t

    assert gap(ns, "adam", "adam", 0.0, ours_cls=NoBiasCorrection) > 1e-3


def test_adamw_decay_is_decoupled(ns: dict) -> None:
    """With a zero gradient, AdamW shrinks a weight by exactly (1 - lr * wd) per step; Adam's L2 term does not."""
    p = [torch.ones(3, dtype=torch.float64)]
    opt = ns["AdamW"](p, lr=0.1, weight_decay=0.5)
    for _ in range(4):
        p[0].grad = torch.zeros(3, dtype=torch.float64)
        opt.step()
    assert torch.allclose(p[0], torch.full((3,), 0.95 ** 4, dtype=torch.float64), rtol=0, atol=1e-15)
    q = [torch.ones(3, dtype=torch.float64)]  # the control: Adam's L2 term goes through the moments
    adam = ns["Adam"](q, lr=0.1, weight_decay=0.5)
    for _ in range(4):
        q[0].grad = torch.zeros(3, dtype=torch.float64)
        adam.step()
    assert (q[0] - 0.95 ** 4).abs().max() > 0.1


@pytest.mark.parametrize("name", NAMES)
def test_an_optimizer_restored_from_its_state_dict_continues_exactly(ns: dict, name: str) -> None:
    """Stopped after 4 of 8 steps, its state_dict saved and loaded as a checkpoint is (weights only), a fresh
    optimiser continues bit for bit as the uninterrupted one; one restarted without the state does not."""
    start, grads = params_and_grads(0, 8)

    def run(restore: bool | None) -> list[torch.Tensor]:
        p = [x.clone() for x in start]
        opt = ns["make_optimizer"](name, p, LRS[name], 0.9, 0.1)
        for i, g in enumerate(grads):
            if i == 4 and restore is not None:  # interrupted: a new optimiser, from the checkpoint if `restore`
                buffer = io.BytesIO()
                torch.save(opt.state_dict(), buffer)
                opt = ns["make_optimizer"](name, p, LRS[name], 0.9, 0.1)
                if restore:
                    buffer.seek(0)
                    opt.load_state_dict(torch.load(buffer, weights_only=True))
            for pi, gi in zip(p, g):
                pi.grad = gi.clone()
            opt.step()
        return p

    straight, resumed, restarted = run(None), run(True), run(False)
    assert all(torch.equal(a, b) for a, b in zip(straight, resumed))
    if name != "sgd":  # plain SGD keeps no state: restarting it changes nothing
        assert max((a - b).abs().max().item() for a, b in zip(straight, restarted)) > 1e-6


def torch_schedule(name: str, total: int, peak: float) -> list[float]:
    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([p], lr=peak)
    sched = {"step": lambda: torch.optim.lr_scheduler.MultiStepLR(
                 opt, [int(f * total) for f in SCHEDULE_CFG.step_at], SCHEDULE_CFG.step_gamma),
             "cosine": lambda: torch.optim.lr_scheduler.CosineAnnealingLR(opt, total),
             "one_cycle": lambda: torch.optim.lr_scheduler.OneCycleLR(
                 opt, peak, total_steps=total, pct_start=SCHEDULE_CFG.onecycle_pct, anneal_strategy="cos",
                 cycle_momentum=False, div_factor=SCHEDULE_CFG.onecycle_div,
                 final_div_factor=SCHEDULE_CFG.onecycle_final_div)}[name]()
    lrs = []
    for _ in range(total):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


@pytest.mark.parametrize("name", ["step", "cosine", "one_cycle"])
@pytest.mark.parametrize("total", [40, 301])
def test_schedules_equal_torch_lr_scheduler(ns: dict, name: str, total: int) -> None:
    ours = [ns["lr_at"](name, t, total, 0.3, SCHEDULE_CFG) for t in range(total)]
    theirs = torch_schedule(name, total, 0.3)
    assert max(abs(a - b) for a, b in zip(ours, theirs)) < 1e-9 * 0.3


def test_warmup_cosine_ramps_then_decays(ns: dict) -> None:
    total, peak = 200, 0.5
    lrs = [ns["lr_at"]("warmup_cosine", t, total, peak, SCHEDULE_CFG) for t in range(total)]
    warm = int(SCHEDULE_CFG.warmup_frac * total)
    assert lrs[0] == pytest.approx(peak / warm)
    assert all(a < b for a, b in zip(lrs[:warm - 1], lrs[1:warm]))  # strictly rising during the warm-up
    assert max(lrs) == pytest.approx(peak)
    assert all(a >= b for a, b in zip(lrs[warm - 1:], lrs[warm:]))  # then never rising
    assert lrs[-1] < 1e-3 * peak
    assert all(ns["lr_at"]("constant", t, total, peak, SCHEDULE_CFG) == peak for t in range(total))
    with pytest.raises(ValueError):
        ns["lr_at"]("linear", 0, total, peak, SCHEDULE_CFG)


TRAIN_KEYS = ("train output", "input gradient", "gamma/beta gradient")


def test_batchnorm_equals_torch_in_training_and_eval_mode(ns: dict) -> None:
    for seed in range(2):
        gaps = ns["batchnorm_gaps"](ns["BatchNorm"], seed=seed)
        assert all(v < 1e-12 for v in gaps.values()), gaps
    assert set(dict(ns["BatchNorm"](3).named_buffers())) == {"running_mean", "running_var"}  # saved, not trained
    assert {k for k, _ in ns["BatchNorm"](3).named_parameters()} == {"weight", "bias"}


def test_the_batchnorm_comparison_catches_batch_statistics_in_eval_mode(ns: dict) -> None:
    class BatchStatsInEval(ns["BatchNorm"]):
        def forward(self, z):
            was = self.training
            self.train()
            try:
                return super().forward(z)
            finally:
                self.train(was)

    gaps = ns["batchnorm_gaps"](BatchStatsInEval)
    assert all(gaps[k] < 1e-12 for k in TRAIN_KEYS), gaps  # right in training mode ...
    assert gaps["eval output"] > 1e-3, gaps  # ... caught in eval mode


@pytest.mark.parametrize("wrong", ["unbiased variance in the forward pass", "biased variance in the running average"])
def test_the_batchnorm_comparison_catches_a_swapped_variance(ns: dict, wrong: str) -> None:
    class Swapped(ns["BatchNorm"]):
        def forward(self, z):
            if not self.training:
                return super().forward(z)
            biased, mean = torch.var_mean(z, dim=0, correction=0)
            unbiased = biased * len(z) / (len(z) - 1)
            used = unbiased if wrong.startswith("unbiased") else biased  # both places get the same one
            with torch.no_grad():
                self.running_mean.lerp_(mean, self.momentum)
                self.running_var.lerp_(used, self.momentum)
            return (z - mean) * torch.rsqrt(used + self.eps) * self.weight + self.bias

    gaps = ns["batchnorm_gaps"](Swapped)
    if wrong.startswith("unbiased"):
        assert gaps["train output"] > 1e-3, gaps
    else:
        assert gaps["train output"] < 1e-12 and gaps["running stats"] > 1e-3 and gaps["eval output"] > 1e-3, gaps


@pytest.fixture(scope="module")
def sweep() -> dict:
    return notebook_functions(NOTEBOOK, "next_lr", "lr_sweep", namespace={"math": math})


def fake_runs(accuracy_at: dict):
    """A train_at for lr_sweep: a run's validation accuracy from `accuracy_at` (None: diverged); records the calls."""
    calls = []

    def train_at(lr):
        calls.append(lr)
        acc = accuracy_at(lr)
        return {"diverged": acc is None, "val_accuracy": acc}, f"model@{lr:g}"

    return train_at, calls


def test_next_lr_walks_the_half_decade_ladder(sweep: dict) -> None:
    down = [0.03]
    for _ in range(4):
        down.append(sweep["next_lr"](down[-1], up=False))
    assert down == [0.03, 0.01, 0.003, 0.001, 0.0003]
    assert [sweep["next_lr"](x, up=True) for x in (0.003, 0.01, 1e-3, 3.0, 0.002)] == [0.01, 0.03, 0.003, 10.0, 0.003]


def test_lr_sweep_extends_past_an_edge_until_the_best_is_inside(sweep: dict) -> None:
    train_at, calls = fake_runs(lambda lr: 0.9 - abs(math.log10(lr) - math.log10(0.001)) / 10)  # peak at 0.001
    runs, chosen, at_edge = sweep["lr_sweep"](train_at, (0.01, 0.03, 0.1), 3)
    assert calls == [0.01, 0.03, 0.1, 0.003, 0.001, 0.0003] and chosen == 0.001 and not at_edge
    assert runs[0.001][1] == "model@0.001"


def test_lr_sweep_says_when_it_stops_at_an_edge(sweep: dict) -> None:
    train_at, calls = fake_runs(lambda lr: None if lr < 0.01 else lr)  # best at the top; diverges below 0.01
    runs, chosen, at_edge = sweep["lr_sweep"](train_at, (0.01, 0.03), 1)
    assert calls == [0.01, 0.03, 0.1] and chosen == 0.1 and at_edge
    train_at, calls = fake_runs(lambda lr: None)  # everything diverges: nothing chosen, nothing added
    assert sweep["lr_sweep"](train_at, (0.01, 0.03), 2)[1:] == (None, False) and calls == [0.01, 0.03]
    train_at, calls = fake_runs(lambda lr: 0.5)  # a flat curve: the first best (0.01) is at the edge, once
    assert sweep["lr_sweep"](train_at, (0.01, 0.03, 0.1), 2)[1:] == (0.01, False) and calls[3:] == [0.003]
