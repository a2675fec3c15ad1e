"""The ViT notebook's objective, optimisers, schedules, evaluation, blocks, pooling and cost counts, read from the
notebook itself (image_classification/vit/vit.ipynb); tests/test_vit.py covers the attention, the patch cut, the
position embeddings, ResNet-20's size, the rollout, the batches, the crops and flips and the mixing pairs.

The notebook's `model` cells run in the smoke preset on the CPU; the functions defined in cells that also train or
plot (`loss_fn`, `make_adamw`, `make_sgd`, `warmup_cosine`, `one_cycle`, `accuracy`, `mix`, `forward_flops`,
`describe`) are executed by name. Checked, against the notebook's prose and Dosovitskiy et al. 2020:

- `loss_fn` is lambda * CE(y) + (1 - lambda) * CE(y2) with label-smoothed targets (1 - s) one-hot + s / K (the
  Objective section), equal in value and in gradient to the cross-entropy against the mixed soft target computed
  in float64; with lambda = 1 and s = 0 it is plain cross-entropy; bf16 logits give an fp32 loss (Training: "the
  loss is computed in fp32");
- `make_adamw` decays exactly the weight matrices (the linear layers' weights), not the biases, LayerNorm gains,
  position embeddings or class token: one step with every gradient zero shrinks exactly those by 1 - lr * wd and
  moves nothing else; `make_sgd` puts its L2 penalty on exactly the ResNet's conv and linear weights (one Nesterov
  step with zero gradients shrinks them by 1 - lr * wd * (1 + momentum)), as the Config says;
- `warmup_cosine` rises linearly from 0 to the peak at `warmup_frac`, then follows a cosine down to `min_lr_frac`
  at the end (and starts at the peak with no warm-up); `one_cycle` rises linearly to 1 at the ResNet notebook's
  `warmup_frac` and falls linearly to 0;
- `accuracy` counts the right rows of every batch, the last partial one included, evaluates in eval mode (batch
  norm's running statistics, which it leaves untouched) and hands the model back in training mode;
- `Block` is pre-norm with residuals (Eq. 2, 3): with both output projections zeroed it is the identity, and each
  branch sees its input through a LayerNorm (scaling the block's input does not change a lone branch's update);
- the ViT's representation is Eq. 4: with `pool="cls"` the logits are head(LN(z_L^0)) and depend on the class
  token's final state only; with `pool="mean"` they are the head of the mean of the tokens after the final LN;
  the head starts at zero (Model: "the first predictions are uniform", so the first loss is log 10 whatever the
  smoothing or mixing); Xavier-uniform weights, zero biases, position embeddings from N(0, 0.02^2), a zero class
  token, as the Model section says;
- `mix`: a batch is mixed with probability `mix_prob`, by mixup half the time, and mixup's lambda follows
  Beta(mixup_alpha, mixup_alpha);
- `forward_flops` counts 2 * in * out FLOPs per token for a linear layer, 2 FLOPs per multiply-add for a
  convolution, and 2 * 2 T^2 D for a block's attention products (Size and cost): it equals the closed form of the
  ViT (both poolings) and of ResNet-20, and the `full` preset's ViT comes out at the 1.86 GFLOPs and about 14M
  parameters the notebook states (3 x 1.86 GFLOPs x 200 epochs of 45,000 images = 5.0e16 FLOPs).

Each check is paired with a control broken in exactly the way the check guards against, which must fail that very
check (`pytest.raises(AssertionError, match=<its message>)`); every control is the notebook's code with one or two
exact edits (each edited string must occur exactly once, so a stale control fails loudly): lambda on the wrong
label, smoothing dropped, the second label ignored, the loss in bf16, AdamW decaying every tensor of 2 or more
dimensions (position embeddings and class token too), SGD decaying every parameter, a cosine that decays to 0, a
cosine clocked from step 0, a one-cycle decay that starts below the peak, an `accuracy` that drops its last partial
batch, evaluates in training mode or leaves eval mode on, a block without its attention residual, a post-norm
block, a branch without its LayerNorm, a class-token readout from the last token, mean pooling before the final
LN, PyTorch's default head init, PyTorch's default linear init, a coin with its sides swapped, mixup drawing from
cutmix's Beta, and FLOP counts at 1 per multiply-add or without the attention products.

Tolerances: exact formulas are compared in float64 to 1e-12; float32 results to a few float32 epsilons (stated
where used); statistical checks allow 5 standard deviations (a correct implementation fails one with probability
about 6e-7), and the KS test a p-value of 1e-6. Every random draw is seeded with its own generator. Small tensors:
the file runs in seconds on two CPU cores.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats
from torch import nn

from notebook_cells import notebook_functions, preset_config, run_tagged

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "image_classification" / "vit" / "vit.ipynb"
RESNET_NOTEBOOK = ROOT / "image_classification" / "resnet" / "resnet.ipynb"
CPU = torch.device("cpu")
NAMES = ("mix", "forward_flops", "describe", "loss_fn", "make_adamw", "make_sgd", "warmup_cosine", "one_cycle",
         "accuracy")
MODEL_NAMES = ("patchify", "attention", "SelfAttention", "Block", "ViT")
Z = 5.0  # statistical bounds: 5 standard deviations, a two-sided chance of about 6e-7 of a false alarm
KS_P = 1e-6  # the KS test's false-alarm rate, of the same order
EXACT = 1e-12  # float64 evaluations of the same closed form
F32 = 1e-6  # about 8 float32 epsilons (1.2e-7): the few roundings of a float32 loss, step or product
K = 10  # CIFAR-10's classes


# --- the notebook's code, and controls made from it ---

@pytest.fixture(scope="module")
def vit() -> dict[str, Any]:
    """The namespace of the notebook's `model` cells (smoke preset, CPU) plus the functions of NAMES. The cells seed
    the global generators (`seed_everything`): conftest's module_random_state puts them back after the module."""
    return notebook_functions(NOTEBOOK, *NAMES, namespace=run_tagged(NOTEBOOK, "model", at_least=6, preset="smoke"))


def broken(vit: dict[str, Any], name: str, *edits: tuple[str, str]) -> dict[str, Any]:
    """A control: the notebook's functions and model classes with `name` edited, each (old, new) replacing a string
    that occurs exactly once in it; the functions that use `name` find the broken one."""
    return notebook_functions(NOTEBOOK, *MODEL_NAMES, *NAMES, namespace=dict(vit),
                              edits=[(name, old, new) for old, new in edits])


def smoke_cfg(vit: dict[str, Any], **changes: Any) -> Any:
    return dataclasses.replace(vit["cfg"], **changes)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- the objective: mixed, label-smoothed cross-entropy ---

def reference_loss(logits: torch.Tensor, y: torch.Tensor, y2: torch.Tensor, lam: float, s: float) -> torch.Tensor:
    """lambda * CE(q_y) + (1 - lambda) * CE(q_y2) with q_c = (1 - s) one-hot(c) + s / K, in float64, written as the
    cross-entropy against the mixed soft target (the two are equal: cross-entropy is linear in the target)."""
    def smoothed(labels: torch.Tensor) -> torch.Tensor:
        return (1 - s) * F.one_hot(labels, K).double() + s / K

    target = lam * smoothed(y) + (1 - lam) * smoothed(y2)  # (B, K), each row sums to 1
    return -(target * logits.double().log_softmax(1)).sum(1).mean()


def check_loss(loss_fn: Callable, lam: float, s: float, seed: int = 0) -> None:
    """loss_fn's value and gradient against the float64 reference, for labels y and y2 that differ everywhere."""
    g = gen(seed)
    logits = (3 * torch.randn(16, K, generator=g)).requires_grad_()
    y = torch.randint(0, K, (16,), generator=g)
    y2 = (y + torch.randint(1, K, (16,), generator=g)) % K  # a second label, never the first
    loss = loss_fn(logits, y, y2, lam, s)
    loss.backward()
    ref_logits = logits.detach().double().requires_grad_()
    ref = reference_loss(ref_logits, y, y2, lam, s)
    ref.backward()
    # float32 log-softmax of logits up to ~10: a few epsilons relative to the loss (order 1), F32 absolute
    assert abs(loss.item() - ref.item()) <= F32 * (1 + abs(ref.item())), \
        f"loss_fn at lambda={lam}, s={s} is {loss.item():.7f}, not the smoothed mixed cross-entropy {ref.item():.7f}"
    assert torch.allclose(logits.grad.double(), ref_logits.grad, rtol=0, atol=F32 / 16), \
        f"loss_fn's gradient at lambda={lam}, s={s} is not (softmax - mixed target) / B"


LOSS_CASES = [(1.0, 0.0), (1.0, 0.1), (0.7, 0.1), (0.3, 0.1), (0.3, 0.0), (0.0, 0.1)]


@pytest.mark.parametrize(("lam", "s"), LOSS_CASES)
def test_loss_is_the_lambda_weighted_smoothed_cross_entropy(vit: dict, lam: float, s: float) -> None:
    check_loss(vit["loss_fn"], lam, s)
    if lam == 1.0 and s == 0.0:  # no mixing, no smoothing: plain cross-entropy, -log p_y averaged
        g = gen(1)
        logits, y = torch.randn(8, K, generator=g), torch.randint(0, K, (8,), generator=g)
        plain = -logits.double().log_softmax(1)[torch.arange(8), y].mean().item()
        assert abs(vit["loss_fn"](logits, y, (y + 1) % K, 1.0, 0.0).item() - plain) <= F32 * (1 + plain)


LOSS_CONTROLS = {
    "lambda on the wrong label": (
        ("loss = lam * loss + (1 - lam) * F.cross_entropy", "loss = (1 - lam) * loss + lam * F.cross_entropy"),),
    "smoothing dropped": (
        ("smoothing: float) -> torch.Tensor:", "smoothing: float) -> torch.Tensor:\n    smoothing = 0.0"),),
    "second label ignored": (("logits.float(), y2, label_smoothing", "logits.float(), y, label_smoothing"),),
}


@pytest.mark.parametrize("control", list(LOSS_CONTROLS))
def test_loss_controls_fail(vit: dict, control: str) -> None:
    loss_fn = broken(vit, "loss_fn", *LOSS_CONTROLS[control])["loss_fn"]
    with pytest.raises(AssertionError, match="not the smoothed mixed cross-entropy"):
        for lam, s in LOSS_CASES:
            check_loss(loss_fn, lam, s)


def test_a_loss_whose_second_term_carries_no_gradient_fails_the_gradient_check(vit: dict) -> None:
    """Control of the gradient assertion: the same value, but no gradient through the second label's term."""
    second_term = "F.cross_entropy(logits.float(), y2, label_smoothing=smoothing)"
    loss_fn = broken(vit, "loss_fn", (second_term, second_term + ".detach()"))["loss_fn"]
    with pytest.raises(AssertionError, match="gradient at lambda=0.7"):
        check_loss(loss_fn, 0.7, 0.1)


def check_fp32_loss(loss_fn: Callable) -> None:
    g = gen(2)
    logits = (3 * torch.randn(64, K, generator=g)).bfloat16()  # autocast's logits on a GPU
    y, y2 = torch.randint(0, K, (64,), generator=g), torch.randint(0, K, (64,), generator=g)
    loss = loss_fn(logits, y, y2, 0.6, 0.1)
    ref = reference_loss(logits, y, y2, 0.6, 0.1).item()  # of the very bf16 logits, in float64
    assert loss.dtype == torch.float32 and abs(loss.item() - ref) <= F32 * (1 + ref), \
        f"the loss of bf16 logits is not computed in fp32: {loss.dtype}, {loss.item():.7f} against {ref:.7f}"


def test_the_loss_of_bf16_logits_is_computed_in_fp32(vit: dict) -> None:
    check_fp32_loss(vit["loss_fn"])
    control = broken(vit, "loss_fn", ("logits.float(), y,", "logits, y,"), ("logits.float(), y2,", "logits, y2,"))
    with pytest.raises(AssertionError, match="not computed in fp32"):
        check_fp32_loss(control["loss_fn"])


# --- the optimisers: which parameters are decayed ---

def randomised(model: nn.Module, seed: int) -> nn.Module:
    """Every parameter set to N(0, 1) draws, so that a zero bias or a unit LayerNorm gain could show a decay."""
    g = gen(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return model


def decay_after_zero_gradient_step(model: nn.Module, opt: torch.optim.Optimizer) -> dict[str, float | None]:
    """One optimiser step with every gradient zero: for each parameter, the factor it was multiplied by (None if
    it moved otherwise). With zero gradients Adam's and momentum's own updates vanish: only weight decay acts."""
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    factors: dict[str, float | None] = {}
    for n, p in model.named_parameters():
        ratio = (p.detach() / before[n]).flatten()
        factors[n] = ratio[0].item() if torch.allclose(ratio, ratio[0].expand_as(ratio), rtol=0, atol=F32) else None
    return factors


def check_decay(factors: dict[str, float | None], decayed: set[str], factor: float, what: str) -> None:
    wrong = sorted(n for n, f in factors.items()
                   if f is None or abs(f - (factor if n in decayed else 1.0)) > F32)  # float32 products
    assert not wrong, f"{what} does not decay exactly the weight matrices: {wrong[:6]}"


def linear_weights(model: nn.Module, kinds: tuple[type, ...] = (nn.Linear,)) -> set[str]:
    """The names of the weights of the model's `kinds` layers: the weight matrices, read off the module types."""
    return {f"{name}.weight" for name, m in model.named_modules() if isinstance(m, kinds)}


def check_adamw(ns: dict, cfg: Any) -> None:
    model = randomised(ns["ViT"](cfg), seed=3)
    names = dict(model.named_parameters())
    assert {"pos", "cls", "norm.weight", "blocks.0.ln1.weight", "embed.bias"} <= set(names)  # what must stay
    opt = ns["make_adamw"](model, cfg)
    assert opt.defaults["betas"] == cfg.betas
    factors = decay_after_zero_gradient_step(model, opt)
    check_decay(factors, linear_weights(model), 1 - cfg.lr * cfg.weight_decay, "AdamW")


def test_adamw_decays_the_weight_matrices_only(vit: dict) -> None:
    """The Objective section: decoupled decay on the weight matrices; biases, LayerNorm gains, the position
    embeddings and the class token are not decayed. The control decays every tensor of 2 or more dimensions, the
    ResNet's rule, which takes in the (1, T, D) position embeddings and class token."""
    cfg = smoke_cfg(vit, pool="cls", weight_decay=0.05, lr=2e-3)
    check_adamw(vit, cfg)
    control = broken(vit, "make_adamw", ('if p.dim() == 2 and n.endswith("weight")]', "if p.dim() >= 2]"),
                     ('if not (p.dim() == 2 and n.endswith("weight"))]', "if p.dim() < 2]"))
    with pytest.raises(AssertionError, match=r"AdamW does not decay exactly the weight matrices: \['cls', 'pos'\]"):
        check_adamw(control, cfg)


def check_sgd(ns: dict, cfg: Any) -> None:
    model = randomised(ns["resnet20"](cfg.resnet_width), seed=4)
    opt = ns["make_sgd"](model, cfg)
    assert opt.defaults["nesterov"] and opt.defaults["momentum"] == 0.9 and opt.defaults["lr"] == cfg.resnet_lr
    factors = decay_after_zero_gradient_step(model, opt)
    # first Nesterov step: buffer b = wd * p, update lr * (wd * p + 0.9 * b) = lr * wd * 1.9 * p
    check_decay(factors, linear_weights(model, (nn.Conv2d, nn.Linear)),
                1 - cfg.resnet_lr * cfg.resnet_weight_decay * 1.9, "SGD")


def test_sgd_decays_the_resnets_conv_and_linear_weights_only(vit: dict) -> None:
    """Config: "L2 penalty on its conv and linear weights". The control decays every parameter (batch norm too)."""
    cfg = smoke_cfg(vit)
    check_sgd(vit, cfg)
    control = broken(vit, "make_sgd", (" if p.dim() > 1]", "]"), (" if p.dim() <= 1]", " if False]"))
    with pytest.raises(AssertionError, match="SGD does not decay exactly the weight matrices"):
        check_sgd(control, cfg)


# --- the learning-rate schedules ---

def check_warmup_cosine(f: Callable[[float, float, float], float], w: float, m: float) -> None:
    grid = np.linspace(0, 1, 401)
    values = [f(p, w, m) for p in grid]
    if w > 0:
        assert abs(f(0.0, w, m)) <= EXACT, "warm-up does not start at 0"
        assert abs(f(w / 2, w, m) - 0.5) <= EXACT, "warm-up is not linear"
        assert all(a <= b + EXACT for a, b, p in zip(values, values[1:], grid) if p < w), "warm-up is not rising"
    assert abs(f(w, w, m) - 1.0) <= EXACT, "the schedule does not reach the peak at the end of warm-up"
    assert abs(f(1.0, w, m) - m) <= EXACT, "the cosine does not end at min_lr_frac"
    for u in (0.25, 0.5, 0.75):  # the cosine between the peak and the floor
        expected = m + (1 - m) * 0.5 * (1 + math.cos(math.pi * u))
        assert abs(f(w + u * (1 - w), w, m) - expected) <= EXACT, "the decay is not a cosine from 1 to min_lr_frac"
    assert all(b <= a + EXACT for a, b, p in zip(values, values[1:], grid) if p >= w), "the decay is not falling"
    assert all(v >= m - EXACT for v, p in zip(values, grid) if p >= w), "the decay goes below min_lr_frac"
    assert f(1 / 4000, w, m) > 0, "the first step (progress 1 / steps) has no learning rate"


@pytest.mark.parametrize(("w", "m"), [(0.05, 0.01), (0.1, 0.01), (0.0, 0.01), (0.05, 0.0)])
def test_warmup_cosine_rises_linearly_then_falls_as_a_cosine_to_its_floor(vit: dict, w: float, m: float) -> None:
    check_warmup_cosine(vit["warmup_cosine"], w, m)


@pytest.mark.parametrize(("control", "edit", "message"), [
    ("a cosine that decays to 0",
     ("return min_lr_frac + (1 - min_lr_frac) * 0.5 *", "return 0.5 *"), "does not end at min_lr_frac"),
    ("a cosine clocked from step 0",
     ("t = (progress - warmup_frac) / max(1e-9, 1 - warmup_frac)", "t = progress"), "does not reach the peak"),
])
def test_warmup_cosine_controls_fail(vit: dict, control: str, edit: tuple[str, str], message: str) -> None:
    f = broken(vit, "warmup_cosine", edit)["warmup_cosine"]
    with pytest.raises(AssertionError, match=message):
        check_warmup_cosine(f, 0.05, 0.01)


def check_one_cycle(f: Callable[..., float], w: float) -> None:
    grid = np.linspace(0, 1, 401)
    values = [f(p) for p in grid]
    assert abs(f(0.0)) <= EXACT and abs(f(w / 2) - 0.5) <= EXACT, "one-cycle does not rise linearly from 0"
    assert abs(f(w) - 1.0) <= EXACT, "one-cycle does not reach the peak at warmup_frac"
    assert abs(f((1 + w) / 2) - 0.5) <= EXACT and abs(f(1.0)) <= EXACT, "one-cycle does not fall linearly to 0"
    assert all(a <= b + EXACT for a, b, p in zip(values, values[1:], grid) if p < w), "one-cycle is not rising"
    assert all(b <= a + EXACT for a, b, p in zip(values, values[1:], grid) if p >= w), "one-cycle is not falling"


def test_one_cycle_is_the_resnet_notebooks_triangle(vit: dict) -> None:
    """Linear up over the ResNet notebook's warmup_frac (its `quick` Config), linear down to 0. The control starts
    the fall below the peak."""
    w = preset_config(RESNET_NOTEBOOK, "quick", {"device": CPU}).warmup_frac
    check_one_cycle(vit["one_cycle"], w)
    control = broken(vit, "one_cycle", ("(1 - progress) / (1 - warmup_frac)", "1 - progress"))["one_cycle"]
    with pytest.raises(AssertionError, match="does not reach the peak"):
        check_one_cycle(control, w)


# --- accuracy ---

class Standardise(nn.Module):
    """Logits = batch norm of the inputs: in eval mode (x - running mean) / sqrt(running var + eps), in training
    mode the batch's own statistics (and the running ones move)."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(K, affine=False)
        g = gen(seed)
        self.bn.running_mean.copy_(torch.randn(K, generator=g))
        self.bn.running_var.copy_(torch.rand(K, generator=g) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(x)


def check_accuracy(accuracy: Callable) -> None:
    model = Standardise(seed=5).train()
    g = gen(6)
    images = torch.randn(23, K, generator=g)  # 23 images in batches of 5: the last batch has 3
    stats_before = (model.bn.running_mean.clone(), model.bn.running_var.clone())
    eval_logits = (images - stats_before[0]) / (stats_before[1] + model.bn.eps).sqrt()
    labels = eval_logits.argmax(1)
    labels[::3] = (labels[::3] + 1) % K  # 8 of 23 wrong: accuracy 15/23
    expected = (eval_logits.argmax(1) == labels).sum().item() / len(images)
    acc = accuracy(model, images, labels, batch=5)
    assert torch.equal(model.bn.running_mean, stats_before[0]) and torch.equal(model.bn.running_var, stats_before[1]), \
        "accuracy ran the model in training mode: batch norm's running statistics moved"
    assert acc == expected, f"accuracy is {acc}, not the share of right rows {expected} (every batch counted)"
    assert model.training, "accuracy left the model in eval mode"


def test_accuracy_counts_every_batch_in_eval_mode_and_restores_training(vit: dict) -> None:
    check_accuracy(vit["accuracy"])


@pytest.mark.parametrize(("control", "edit", "message"), [
    ("the last partial batch dropped",
     ("range(0, len(images), batch)", "range(0, len(images) - batch + 1, batch)"), "not the share of right rows"),
    ("evaluated in training mode", ("model.eval()", "pass"), "running statistics moved"),
    ("eval mode left on", ("model.train()", "pass"), "left the model in eval mode"),
])
def test_accuracy_controls_fail(vit: dict, control: str, edit: tuple[str, str], message: str) -> None:
    with pytest.raises(AssertionError, match=message):
        check_accuracy(broken(vit, "accuracy", edit)["accuracy"])


# --- the encoder block (Eq. 2, 3) ---

def block(ns: dict, seed: int = 7) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # nn.Linear's initialisation draws from the global generator
        return ns["Block"](16, 2, 2.0).double().eval()


def tokens(seed: int) -> torch.Tensor:
    return torch.randn(3, 5, 16, generator=gen(seed), dtype=torch.float64)  # (B, T, D), unit-variance tokens


def zero_(*layers: nn.Linear) -> None:
    with torch.no_grad():
        for layer in layers:
            layer.weight.zero_()
            layer.bias.zero_()


def check_residuals(ns: dict) -> None:
    b = block(ns)
    zero_(b.attn.proj, b.mlp[2])  # both branches output 0
    z = tokens(8)
    with torch.no_grad():
        assert torch.allclose(b(z), z, rtol=0, atol=EXACT), \
            "with both branches zeroed the block is not the identity: a residual is missing or a norm sits on it"


def check_pre_norm(ns: dict, branch: str) -> None:
    """With the other branch zeroed, block(c z) - c z = branch(LN(c z)) = branch(LN(z)): the update does not depend
    on the scale of the residual stream. LayerNorm's eps (1e-6) moves LN(c z) from LN(z) by at most eps / (2 var)
    = 5e-7 relative for these unit-variance tokens; 1e-5 allows the branch's gain; a branch without its norm sees
    a 10x larger input and misses by order 1."""
    b = block(ns)
    zero_(b.mlp[2] if branch == "attention" else b.attn.proj)
    z, c = tokens(9), 10.0
    with torch.no_grad():
        assert torch.allclose(b(c * z) - c * z, b(z) - z, rtol=0, atol=1e-5), \
            f"the {branch} branch does not see its input through a LayerNorm (not pre-norm)"


def test_block_is_pre_norm_with_residuals(vit: dict) -> None:
    check_residuals(vit)
    check_pre_norm(vit, "attention")
    check_pre_norm(vit, "MLP")


@pytest.mark.parametrize(("control", "edits", "check", "message"), [
    ("no attention residual", (("z = z + self.attn(self.ln1(z))", "z = self.attn(self.ln1(z))"),),
     "residuals", "not the identity"),
    ("post-norm", (("z = z + self.attn(self.ln1(z))", "z = self.ln1(z + self.attn(z))"),
                   ("return z + self.mlp(self.ln2(z))", "return self.ln2(z + self.mlp(z))")),
     "residuals", "not the identity"),
    ("attention without its norm", (("self.attn(self.ln1(z))", "self.attn(z)"),), "attention", "not pre-norm"),
    ("MLP without its norm", (("self.mlp(self.ln2(z))", "self.mlp(z)"),), "MLP", "not pre-norm"),
])
def test_block_controls_fail(vit: dict, control: str, edits: tuple, check: str, message: str) -> None:
    ns = broken(vit, "Block", *edits)
    with pytest.raises(AssertionError, match=message):
        if check == "residuals":
            check_residuals(ns)
        else:
            check_pre_norm(ns, check)


# --- the representation (Eq. 4), the head and the initialisation ---

def vit_model(ns: dict, cfg: Any, seed: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the ViT's initialisation draws from the global generator
        return ns["ViT"](cfg)


def logits_from_final_states(model: nn.Module, states: torch.Tensor) -> torch.Tensor:
    """The ViT's logits when its last block outputs `states` (B, T, D) (a forward hook replaces z_L)."""
    handle = model.blocks[-1].register_forward_hook(lambda m, i, o: states)
    try:
        with torch.no_grad():
            return model(torch.zeros(len(states), 3, 32, 32, dtype=states.dtype))
    finally:
        handle.remove()


def check_readout(ns: dict, pool: str) -> None:
    cfg = smoke_cfg(ns, pool=pool)
    model = vit_model(ns, cfg, seed=10).double().eval()
    with torch.no_grad():
        model.head.weight.normal_(generator=gen(11))  # the head starts at zero: give it weights to read with
        model.norm.weight.uniform_(0.5, 1.5, generator=gen(12))  # a gain and shift that are not 1 and 0
        model.norm.bias.normal_(generator=gen(13))
    t = model.grid ** 2 + (pool == "cls")
    zl = torch.randn(2, t, cfg.dim, generator=gen(14), dtype=torch.float64)  # z_L
    logits = logits_from_final_states(model, zl)
    ln = F.layer_norm(zl, (cfg.dim,), model.norm.weight, model.norm.bias, eps=1e-6)  # the final LN, token by token
    y = ln[:, 0] if pool == "cls" else ln.mean(dim=1)  # Eq. 4, or the mean of the tokens after the final LN
    assert torch.allclose(logits, y @ model.head.weight.T + model.head.bias, rtol=0, atol=EXACT), \
        f"the {pool} logits are not the head of {'LN(z_L^0)' if pool == 'cls' else 'the mean of LN(z_L)'}"
    other = zl.clone()
    other[:, 1:] = torch.randn(2, t - 1, cfg.dim, generator=gen(15), dtype=torch.float64)  # every token but the 0th
    moved = not torch.allclose(logits_from_final_states(model, other), logits, rtol=0, atol=1e-6)
    if pool == "cls":
        assert not moved, "the cls logits read the patch tokens' final states, not the class token's alone"
    else:
        assert moved, "the mean logits ignore the patch tokens' final states"


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_the_representation_is_eq4_or_the_mean_after_the_final_norm(vit: dict, pool: str) -> None:
    check_readout(vit, pool)


@pytest.mark.parametrize(("pool", "control", "edit"), [
    ("cls", "the last token read out", ("y = z[:, 0] if", "y = z[:, -1] if")),
    ("mean", "mean pooling before the final LN",
     ("z = self.norm(z)\n        y = z[:, 0] if self.cls is not None else z.mean(dim=1)",
      "y = self.norm(z[:, 0] if self.cls is not None else z.mean(dim=1))")),
])
def test_readout_controls_fail(vit: dict, pool: str, control: str, edit: tuple[str, str]) -> None:
    with pytest.raises(AssertionError, match=f"the {pool} logits are not the head of"):
        check_readout(broken(vit, "ViT", edit), pool)


def check_uniform_start(ns: dict) -> None:
    for pool in ("cls", "mean"):
        model = vit_model(ns, smoke_cfg(ns, pool=pool), seed=16)
        x = torch.randn(4, 3, 32, 32, generator=gen(17))
        with torch.no_grad():
            logits = model(x)
        y, y2 = torch.tensor([0, 3, 5, 9]), torch.tensor([1, 1, 2, 2])
        # uniform predictions: every cross-entropy is log K, whatever the target's smoothing or mixing
        loss = ns["loss_fn"](logits, y, y2, 0.4, 0.1).item()
        assert torch.count_nonzero(logits) == 0 and abs(loss - math.log(K)) <= F32, \
            f"a fresh ViT's predictions are not uniform ({pool}): first loss {loss:.6f}, not log 10"


def test_the_head_starts_at_zero_so_the_first_loss_is_log_10(vit: dict) -> None:
    check_uniform_start(vit)
    control = broken(vit, "ViT", ("nn.init.zeros_(self.head.weight)", "pass"))  # PyTorch's default head init
    with pytest.raises(AssertionError, match="predictions are not uniform"):
        check_uniform_start(control)


def check_init(ns: dict) -> None:
    """The Model section's init: Xavier-uniform linear weights (bound a = sqrt(6 / (fan_in +
    fan_out)), variance a^2 / 3), zero biases, position embeddings N(0, 0.02^2), a zero class token. The variance of
    n uniform draws w^2 has standard error sqrt(4/45) a^2 / sqrt(n); that of n normal draws 0.02^2 sqrt(2 / n)."""
    model = vit_model(ns, smoke_cfg(ns, pool="cls", dim=64, depth=2), seed=18)
    faults = []
    for name, m in model.named_modules():
        if not isinstance(m, nn.Linear):
            continue
        if torch.count_nonzero(m.bias):
            faults.append(f"{name}.bias is not zero")
        if name == "head":
            continue  # zeroed: test_the_head_starts_at_zero...
        w, a = m.weight.detach().double(), math.sqrt(6 / (m.in_features + m.out_features))
        se = math.sqrt(4 / 45) * a ** 2 / math.sqrt(w.numel())
        if w.abs().max() > a or abs(w.pow(2).mean().item() - a ** 2 / 3) > Z * se:
            faults.append(f"{name}.weight is not Xavier-uniform")
    pos = model.pos.detach().double()
    if abs(pos.pow(2).mean().item() - 0.02 ** 2) > Z * 0.02 ** 2 * math.sqrt(2 / pos.numel()):
        faults.append("pos is not N(0, 0.02^2)")
    if torch.count_nonzero(model.cls):
        faults.append("cls is not zero")
    assert not faults, f"the ViT's initialisation is not the Model section's: {faults}"


def test_the_initialisation_is_the_one_the_model_section_states(vit: dict) -> None:
    check_init(vit)
    control = broken(vit, "ViT", ("nn.init.xavier_uniform_(m.weight)", "pass"))  # PyTorch's default linear init
    with pytest.raises(AssertionError, match="is not Xavier-uniform"):
        check_init(control)
    for edit, fault in [(("nn.init.zeros_(m.bias)", "pass"), "bias is not zero"),
                        (("cfg.dim) * 0.02)", "cfg.dim) * 0.2)"), "pos is not N"),
                        (("nn.Parameter(torch.zeros(1, 1, cfg.dim))", "nn.Parameter(torch.randn(1, 1, cfg.dim))"),
                         "cls is not zero")]:
        with pytest.raises(AssertionError, match=fault):
            check_init(broken(vit, "ViT", edit))


# --- mixing: the coin and mixup's lambda ---

def check_mix_draws(mix: Callable, cfg: Any, n: int = 2000) -> None:
    """n batches of 16 images (label i marks image i): how many were mixed, how many by mixup, and mixup's lambdas.
    A mixup output is the lambda-blend of each image with its partner; cutmix (a box, lambda the area kept, or
    nothing pasted with lambda 1 and the labels shuffled) and no mixing (lambda 1, the labels kept) are not."""
    x, y = torch.randn(16, 1, 8, 8, generator=gen(19)), torch.arange(16)
    mixed, mixup_lams = 0, []
    for seed in range(n):
        out, y2, lam = mix(x, y, cfg, np.random.default_rng(seed), gen(seed))
        if lam == 1.0 and torch.equal(y2, y):
            continue  # not mixed (a shuffle of 16 that is the identity: chance 5e-14)
        mixed += 1
        if lam < 1.0 and torch.allclose(out, lam * x + (1 - lam) * x[y2], rtol=0, atol=F32):
            mixup_lams.append(lam)
    p = cfg.mix_prob
    assert abs(mixed - n * p) <= Z * math.sqrt(n * p * (1 - p)), \
        f"{mixed} of {n} batches mixed: not a coin of probability mix_prob = {p}"
    m = len(mixup_lams)
    assert abs(m - mixed / 2) <= Z * math.sqrt(mixed / 4), f"{m} of {mixed} mixed batches by mixup: not half"
    ks = stats.kstest(mixup_lams, stats.beta(cfg.mixup_alpha, cfg.mixup_alpha).cdf)
    assert ks.pvalue > KS_P, f"mixup's lambda is not Beta({cfg.mixup_alpha}, {cfg.mixup_alpha}): KS p {ks.pvalue:.1e}"


def test_mix_mixes_with_probability_mix_prob_and_draws_mixups_lambda_from_beta(vit: dict) -> None:
    """mix_prob 0.25 (not 1/2, where a coin with its sides swapped would look right) and mixup_alpha 0.2 (a strongly
    U-shaped Beta, far from cutmix's Beta(1, 1) = uniform, which the control draws from instead)."""
    cfg = smoke_cfg(vit, mix_prob=0.25, mixup_alpha=0.2, cutmix_alpha=1.0)
    check_mix_draws(vit["mix"], cfg)
    swapped = broken(vit, "mix", ("if rng.random() >= cfg.mix_prob:", "if rng.random() < cfg.mix_prob:"))
    with pytest.raises(AssertionError, match="not a coin of probability mix_prob"):
        check_mix_draws(swapped["mix"], cfg)
    cutmix_beta = broken(vit, "mix", ("rng.beta(cfg.mixup_alpha, cfg.mixup_alpha)",
                                      "rng.beta(cfg.cutmix_alpha, cfg.cutmix_alpha)"))
    with pytest.raises(AssertionError, match="mixup's lambda is not Beta"):
        check_mix_draws(cutmix_beta["mix"], cfg)


# --- the FLOP count (Size and cost) ---

def vit_flops_closed_form(cfg: Any, image: int = 32, classes: int = K) -> int:
    """Forward FLOPs per image, 2 per multiply-add: the patch embedding on N patches, per block the q, k, v and
    output projections (8 T D^2), the MLP (4 T D H) and the attention products (2 * 2 T^2 D), and the head on one
    vector of D."""
    n = (image // cfg.patch_size) ** 2
    t = n + (cfg.pool == "cls")
    d, h = cfg.dim, int(cfg.mlp_ratio * cfg.dim)
    per_block = 8 * t * d * d + 4 * t * d * h + 4 * t * t * d
    return 2 * n * (3 * cfg.patch_size ** 2) * d + cfg.depth * per_block + 2 * d * classes


def resnet20_flops_closed_form(width: int, classes: int = K) -> int:
    """2 * H_out * W_out * C_out * C_in * 9 summed over ResNet-20's 19 3x3 convolutions (He et al. Section 4.2: 16,
    32, 64 filters on 32x32, 16x16, 8x8 maps; option A shortcuts have no conv), plus the linear layer."""
    convs = [(32, width, 3)]  # the stem: (output side, C_out, C_in)
    c_in = width
    for side, c_out in ((32, width), (16, 2 * width), (8, 4 * width)):
        for _ in range(3):
            convs += [(side, c_out, c_in), (side, c_out, c_out)]
            c_in = c_out
    return sum(2 * s * s * co * ci * 9 for s, co, ci in convs) + 2 * 4 * width * classes


def check_flops(ns: dict) -> None:
    layer = nn.Linear(5, 7)
    per_image = ns["forward_flops"](layer, torch.zeros(2, 3, 5))  # 2 "images" of 3 tokens
    assert per_image == 3 * 2 * 5 * 7, f"a linear layer costs {per_image / 3} FLOPs per token, not 2 * in * out"
    for pool in ("cls", "mean"):
        cfg = smoke_cfg(ns, pool=pool)
        model = vit_model(ns, cfg, seed=20)
        assert ns["forward_flops"](model, torch.zeros(2, 3, 32, 32)) == vit_flops_closed_form(cfg), \
            f"the ViT's FLOPs ({pool}) are not the closed form"
    resnet = ns["resnet20"](16)
    assert ns["forward_flops"](resnet, torch.zeros(2, 3, 32, 32)) == resnet20_flops_closed_form(16), \
        "ResNet-20's FLOPs are not the closed form"


def test_forward_flops_is_the_closed_form(vit: dict) -> None:
    check_flops(vit)


@pytest.mark.parametrize(("control", "edit", "message"), [
    ("1 FLOP per multiply-add",
     ("total[0] += 2 * out.numel() * m.in_features", "total[0] += out.numel() * m.in_features"),
     "not 2 \\* in \\* out"),
    ("no attention products", ("total[0] += 2 * 2 * b * t * t * d", "total[0] += 0"), "ViT's FLOPs \\(cls\\)"),
    ("convolutions at 1 FLOP per multiply-add",
     ("total[0] += 2 * out.numel() * m.in_channels", "total[0] += out.numel() * m.in_channels"),
     "ResNet-20's FLOPs"),
])
def test_forward_flops_controls_fail(vit: dict, control: str, edit: tuple[str, str], message: str) -> None:
    with pytest.raises(AssertionError, match=message):
        check_flops(broken(vit, "forward_flops", edit))


def test_the_full_presets_vit_costs_the_stated_flops(vit: dict) -> None:
    """Size and cost / the runs section: the `full` ViT (patch 4, D = 384, 8 blocks) has about 14M parameters and
    costs 1.86 GFLOPs per image forward, so 3 x 1.86 GFLOPs x 200 epochs of 45,000 images = 5.0e16 FLOPs. `describe`
    prints the count it returns; at 1 FLOP per multiply-add (the control) the count would be half."""
    cfg = preset_config(NOTEBOOK, "full", {"device": CPU})
    assert (cfg.patch_size, cfg.dim, cfg.depth, cfg.pool) == (4, 384, 8, "mean")
    flops = vit_flops_closed_form(cfg)
    assert round(flops / 1e9, 2) == 1.86 and round(3 * flops * 200 * 45_000 / 1e16, 1) == 5.0
    model = vit_model(vit, cfg, seed=21)
    assert round(sum(p.numel() for p in model.parameters()) / 1e6) == 14
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        described = vit["describe"]("full ViT", model)
    assert described == flops and f"{flops / 1e6:.0f} MFLOPs per image" in printed.getvalue()
