"""The GAN notebook's lesson code (image_generation/gan) does what its prose and Goodfellow et al. 2014 say.

Checked, each on the notebook's own functions:

- Proposition 1: for a fixed G, the logits that minimise `discriminator_loss` with the baseline's loss (-V of Eq. 1)
  give D*(x) = p_data(x) / (p_data(x) + p_g(x)), on two discrete distributions; Theorem 1: there, -L_D equals
  -log 4 + 2 JSD(p_data || p_g), the Jensen-Shannon divergence computed directly.
- `generator_loss`: "saturating" is log(1 - D(G(z))) of Eq. 1 and the baseline's is -log D(G(z)) of Section 3,
  against an independent float64 formula; both fall as D's logit a on a fake rises; the non-saturating gradient is
  e^(-a) times the saturating one, so more than 100 times stronger at a confident D (a = -6).
- The hinge loss: L_D is zero exactly when every real logit is >= 1 and every fake one <= -1, and the margin
  violation otherwise; L_G is -mean(D(G(z))).
- `dcgan_init`: every convolution and linear weight is a N(0, 0.02^2) sample (for a spectral-norm discriminator the
  original, pre-normalisation weight), every bias zero.
- `update_ema`: theta_EMA <- decay theta_EMA + (1 - decay) theta for every parameter.
- `calibrate_batch_norm`: every batch norm's running mean and variance become the plain averages of the calibration
  batches' statistics, and the model ends in evaluation mode, where an image no longer depends on its batch.
- Shapes: G maps (B, J) noise to (B, 1, 28, 28) images in [-1, 1] with either final layer, D maps images to (B,)
  with every norm, `generate` gives (G(z) + 1) / 2; the two VARIANTS differ only in their loss.

Each check is paired with a control broken in exactly the way the check guards against, which must fail it: the
fake term's sign flipped in L_D; the saturating loss's sign flipped; the non-saturating branch replaced by the
saturating loss; the hinge without its margin; the hinge generator loss's sign flipped; `dcgan_init` without its
spectral-norm branch; decay and 1 - decay swapped in the EMA; the calibration with the default momentum 0.1, without
its reset, or left in training mode; G without its tanh; D without its squeeze; `generate` without its map to
[0, 1]; a variant that also changes D's norm. The controls are the notebook's source with one exact string
replaced (which must occur exactly once, so a control breaks loudly when the notebook changes).

The functions are taken from the notebook's code cells by name (tests/notebook_cells.py) and executed in a fresh
namespace. Small networks, float64 where precision matters, every random draw seeded, nothing written anywhere.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from common import autocast, fp32_exact
from notebook_cells import notebook_functions, notebook_literal

NOTEBOOK = Path(__file__).resolve().parent.parent / "image_generation" / "gan" / "gan.ipynb"
NAMES = ("Generator", "Discriminator", "dcgan_init", "discriminator_loss", "generator_loss", "update_ema",
         "calibrate_batch_norm", "generate")
EPS64 = torch.finfo(torch.float64).eps
EPS32 = torch.finfo(torch.float32).eps
CPU = torch.device("cpu")
LossFn = Callable[..., torch.Tensor]


# --- the notebook's code, and one-line controls of it ---

def namespace() -> dict:
    """The modules and `common` names the notebook's functions use when they are called."""
    return {"torch": torch, "nn": nn, "F": F, "math": math, "copy": copy, "fp32_exact": fp32_exact,
            "autocast": autocast}


@pytest.fixture(scope="module")
def ns() -> dict:
    return notebook_functions(NOTEBOOK, *NAMES, namespace=namespace())


def broken(name: str, old: str, new: str) -> Callable:
    """The notebook's `name` with `old` (which must occur exactly once in it) replaced by `new`, beside fresh copies
    of the other functions (so the module fixture stays intact)."""
    return notebook_functions(NOTEBOOK, *NAMES, namespace=namespace(), edits=[(name, old, new)])[name]


def variants() -> dict[str, dict[str, str]]:
    """The notebook's VARIANTS, a module-level dict of literals, read without running its cell."""
    return notebook_literal(NOTEBOOK, "VARIANTS")


BCE, HINGE = variants()["baseline"]["loss"], variants()["hinge"]["loss"]  # the names the notebook trains with


# --- Proposition 1 and Theorem 1 ---

# Two distributions on five points, as counts out of 20: a batch of 20 real outputs holds point k's logit p_k * 20
# times, so the notebook's means over the batches are expectations under p_data and p_g.
P_DATA = torch.tensor([6, 5, 4, 3, 2])
P_G = torch.tensor([1, 3, 4, 5, 7])
N_DRAWS = 20
assert int(P_DATA.sum()) == int(P_G.sum()) == N_DRAWS and (P_DATA > 0).all() and (P_G > 0).all()


def expected_loss(loss_fn: LossFn, logits: torch.Tensor) -> torch.Tensor:
    """L_D of one free logit per point: the real batch draws the points by P_DATA, the fake batch by P_G."""
    return loss_fn(logits.repeat_interleave(P_DATA), logits.repeat_interleave(P_G), BCE)


def minimising_logits(loss_fn: LossFn) -> torch.Tensor:
    """The logits that minimise `loss_fn` (float64): L-BFGS from 0 near the minimum, then Newton steps (the Hessian
    by autograd), which converge quadratically and take the gradient down to its rounding error."""
    logits = torch.zeros(len(P_DATA), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([logits], max_iter=100, tolerance_grad=1e-6, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = expected_loss(loss_fn, logits)
        loss.backward()
        return loss
    opt.step(closure)
    x = logits.detach()
    for _ in range(5):
        grad = torch.autograd.functional.jacobian(lambda v: expected_loss(loss_fn, v), x)
        hess = torch.autograd.functional.hessian(lambda v: expected_loss(loss_fn, v), x)
        x = x - torch.linalg.solve(hess, grad)
    return x


def optimal_d() -> torch.Tensor:
    """D*(x) = p_data(x) / (p_data(x) + p_g(x)), Eq. 2."""
    return P_DATA.double() / (P_DATA + P_G).double()


# At the minimum, dL/dl_k = (p_k + q_k)(sigmoid(l_k) - D*_k) (p, q the probabilities), and Newton's method takes the
# gradient to zero within its rounding error: a sum of at most 20 float64 terms below 1/20 each, so |dL/dl_k| < 64 eps
# and |sigmoid(l_k) - D*_k| < 64 eps / min_k (p_k + q_k), plus an ulp each for sigmoid and D*.
D_STAR_TOL = 64 * EPS64 / float(((P_DATA + P_G) / N_DRAWS).min()) + 2 * EPS64


def d_star_gap(loss_fn: LossFn) -> float:
    """max_x |D(x) - D*(x)| for the D that minimises `loss_fn`."""
    return (torch.sigmoid(minimising_logits(loss_fn)) - optimal_d()).abs().max().item()


def test_the_discriminator_that_minimises_minus_v_is_p_data_over_p_data_plus_p_g(ns: dict) -> None:
    """Proposition 1 (Eq. 2). Control: L_D with the fake term's sign flipped, softplus(-D(G(z))), rewards calling
    the fakes real too: its minimiser says "real" everywhere, not D*."""
    assert d_star_gap(ns["discriminator_loss"]) <= D_STAR_TOL
    flipped = broken("discriminator_loss", "F.softplus(-real_out).mean() + F.softplus(fake_out).mean()",
                     "F.softplus(-real_out).mean() + F.softplus(-fake_out).mean()")
    assert d_star_gap(flipped) > 0.1 > D_STAR_TOL  # D* is at most 6/7 here, and the control's D is 1


def jensen_shannon(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """JSD(p || q) = KL(p || m) / 2 + KL(q || m) / 2 with m = (p + q) / 2, for discrete p, q > 0."""
    m = (p + q) / 2
    return 0.5 * (p * (p / m).log()).sum() + 0.5 * (q * (q / m).log()).sum()


# V at D* is a sum of 10 float64 terms of order 1, each within a few ulps: 64 eps bounds its rounding.
V_TOL = 64 * EPS64


def theorem_1_gap(loss_fn: LossFn, p_counts: torch.Tensor = P_DATA, q_counts: torch.Tensor = P_G) -> float:
    """|V(D*, G) - (-log 4 + 2 JSD(p_data || p_g))|, V = -L_D evaluated at the logits of D*, log(p / q)."""
    p, q = p_counts.double() / N_DRAWS, q_counts.double() / N_DRAWS
    d_star_logits = (p / q).log()
    value = -loss_fn(d_star_logits.repeat_interleave(p_counts), d_star_logits.repeat_interleave(q_counts), BCE)
    return (value - (-math.log(4) + 2 * jensen_shannon(p, q))).abs().item()


def test_at_the_optimal_discriminator_the_value_is_minus_log_4_plus_twice_the_jsd(ns: dict) -> None:
    """Theorem 1, and its equilibrium p_g = p_data, where L_D = log 4. Control: the flipped fake term's value at D*
    is not -log 4 + 2 JSD."""
    p, q = P_DATA.double() / N_DRAWS, P_G.double() / N_DRAWS
    assert 2 * jensen_shannon(p, q).item() > 1e6 * V_TOL, "the distributions must differ for the check to bite"
    assert theorem_1_gap(ns["discriminator_loss"]) <= V_TOL
    assert theorem_1_gap(ns["discriminator_loss"], P_DATA, P_DATA) <= V_TOL  # JSD = 0: -V = log 4
    # the minimiser found numerically reaches the same value: V is flat (second order) around D*
    logits = minimising_logits(ns["discriminator_loss"])
    assert abs(-expected_loss(ns["discriminator_loss"], logits).item()
               - (-math.log(4) + 2 * jensen_shannon(p, q).item())) <= V_TOL
    flipped = broken("discriminator_loss", "F.softplus(-real_out).mean() + F.softplus(fake_out).mean()",
                     "F.softplus(-real_out).mean() + F.softplus(-fake_out).mean()")
    assert theorem_1_gap(flipped) > 1e6 * V_TOL


# --- the generator's losses: saturating (Eq. 1) and non-saturating (Section 3) ---

# D's logits on generated images, from a very confident D (-30: D(G(z)) ~ 1e-13) to a fooled one.
LOGITS = (-30.0, -20.0, -12.5, -6.0, -2.0, -0.5, 0.0, 0.5, 2.0, 5.0)


def sigmoid(a: float) -> float:
    return 1 / (1 + math.exp(-a))


def test_the_generator_losses_are_eq_1_and_section_3(ns: dict) -> None:
    """generator_loss(a, "saturating") = log(1 - sigmoid(a)) (Eq. 1) and the baseline's = -log sigmoid(a) (Section 3),
    against the naive formulas in Python floats. Tolerances: for a <= 5 the naive 1 - sigmoid(a) loses at most
    1 / (1 - sigmoid(5)) ~ 150 ulps to cancellation (rtol 1e-12 covers it 30 times over), F.softplus's linear
    cut-off above 20 drops at most e^-30 relative at a = -30, and where log(1 - sigmoid(a)) ~ -1e-13 the naive
    1 - sigmoid(a) is rounded to an ulp of 1 (atol eps)."""
    for a in LOGITS:
        x = torch.tensor([a], dtype=torch.float64)
        saturating = ns["generator_loss"](x, "saturating").item()
        non_saturating = ns["generator_loss"](x, BCE).item()
        assert saturating == pytest.approx(math.log(1 - sigmoid(a)), rel=1e-12, abs=EPS64), a
        assert non_saturating == pytest.approx(-math.log(sigmoid(a)), rel=1e-12, abs=EPS64), a


def loss_gradients(loss_fn: LossFn, name: str) -> torch.Tensor:
    """d generator_loss / d a at every logit of LOGITS (one batch: the mean's 1/B is the same factor for each)."""
    a = torch.tensor(LOGITS, dtype=torch.float64, requires_grad=True)
    grad, = torch.autograd.grad(loss_fn(a, name), a)
    return grad * len(LOGITS)


def rising_losses(loss_fn: LossFn) -> list[str]:
    """The generator losses whose gradient is not negative at every logit: those that do not push D(G(z)) up."""
    return [name for name in ("saturating", BCE) if not (loss_gradients(loss_fn, name) < 0).all()]


def test_both_generator_losses_push_d_of_g_z_up(ns: dict) -> None:
    """Section 3: both losses fall as D's logit on the fakes rises (the same direction, the same fixed point); only
    the size of the gradient differs. Control: the saturating loss with its sign flipped, softplus(a) = -log(1 - D),
    which G would lower by making its fakes look faker."""
    assert rising_losses(ns["generator_loss"]) == []
    flipped = broken("generator_loss", "return -F.softplus(fake_out)", "return F.softplus(fake_out)")
    assert rising_losses(flipped) == ["saturating"]


def gradient_ratio_errors(loss_fn: LossFn) -> list[float]:
    """The logits where |d(-log D)/da| / |d log(1 - D)/da| is not e^(-a) (sigmoid(-a) / sigmoid(a)). Both gradients
    are float64 sigmoids (relative error a few ulps; F.softplus's gradient above its cut-off of 20 is 1 instead of
    1 - e^-30): rtol 1e-12."""
    ratio = loss_gradients(loss_fn, BCE) / loss_gradients(loss_fn, "saturating")
    return [a for a, r in zip(LOGITS, ratio.tolist()) if r != pytest.approx(math.exp(-a), rel=1e-12)]


def test_the_non_saturating_gradient_is_over_100_times_stronger_at_a_confident_discriminator(ns: dict) -> None:
    """The Objective's claim: at logit a the non-saturating gradient is e^(-a) times the saturating one, over 100
    times at a = -6 (D(G(z)) = 0.0025). Control: the non-saturating branch returning Eq. 1's saturating loss."""
    assert gradient_ratio_errors(ns["generator_loss"]) == []
    ratio = loss_gradients(ns["generator_loss"], BCE) / loss_gradients(ns["generator_loss"], "saturating")
    assert ratio[LOGITS.index(-6.0)] > 100
    same = broken("generator_loss", "return F.softplus(-fake_out).mean()", "return -F.softplus(fake_out).mean()")
    assert -6.0 in gradient_ratio_errors(same)


# --- the hinge loss ---

def hinge_errors(loss_fn: LossFn) -> list[str]:
    """Where L_D(hinge) is not mean(max(0, 1 - real)) + mean(max(0, 1 + fake)): zero when every real logit is >= 1
    and every fake one <= -1 (the margins included), and the mean violation of the margin otherwise."""
    gen = torch.Generator().manual_seed(0)
    n = 8
    real = 1 + 3 * torch.rand(n, generator=gen, dtype=torch.float64)
    fake = -1 - 3 * torch.rand(n, generator=gen, dtype=torch.float64)
    real[0], fake[0] = 1.0, -1.0  # on the margins
    errors = [] if loss_fn(real, fake, HINGE).item() == 0.0 else ["beyond the margins"]
    # one logit moved inside its margin by each amount: a right but unconfident verdict (0.5), a wrong one (1.5)
    for which, v in (("real", 0.5), ("real", -0.5), ("fake", -0.5), ("fake", 0.5)):
        r, f = real.clone(), fake.clone()
        (r if which == "real" else f)[3] = v
        violation = (1 - v) if which == "real" else (1 + v)
        if loss_fn(r, f, HINGE).item() != pytest.approx(violation / n, rel=4 * EPS64):  # a mean of 8 exact terms
            errors.append(f"{which} logit {v}")
    r, f = torch.randn(n, generator=gen, dtype=torch.float64), torch.randn(n, generator=gen, dtype=torch.float64)
    expected = sum(max(0.0, 1 - x) for x in r.tolist()) / n + sum(max(0.0, 1 + x) for x in f.tolist()) / n
    if loss_fn(r, f, HINGE).item() != pytest.approx(expected, rel=16 * EPS64):  # 16 terms, an ulp each
        errors.append("random logits")
    return errors


def test_the_hinge_discriminator_loss_is_zero_exactly_beyond_the_margins(ns: dict) -> None:
    """Lim and Ye's hinge (Miyato et al. Eq. 16): zero exactly when real >= 1 and fake <= -1, the margin violation
    otherwise. Control: the hinge without its margin, max(0, -real) + max(0, fake), which stops at the decision
    boundary and so misses the unconfident but right verdicts."""
    assert hinge_errors(ns["discriminator_loss"]) == []
    no_margin = broken("discriminator_loss", "F.relu(1 - real_out).mean() + F.relu(1 + fake_out).mean()",
                       "F.relu(-real_out).mean() + F.relu(fake_out).mean()")
    errors = hinge_errors(no_margin)
    assert errors[0] != "beyond the margins" and "real logit 0.5" in errors and "fake logit -0.5" in errors


def hinge_generator_loss_matches(loss_fn: LossFn) -> bool:
    """generator_loss(fake, hinge) = -mean(fake), whose gradient is -1/B at every logit: it never saturates."""
    fake = torch.tensor(LOGITS, dtype=torch.float64, requires_grad=True)
    loss = loss_fn(fake, HINGE)
    grad, = torch.autograd.grad(loss, fake)
    return (loss.item() == pytest.approx(-sum(LOGITS) / len(LOGITS), rel=16 * EPS64)  # 10 terms, an ulp each
            and torch.equal(grad, torch.full_like(grad, -1 / len(LOGITS))))


def test_the_hinge_generator_loss_is_minus_the_mean_logit(ns: dict) -> None:
    """Control: the sign flipped, which G would lower by making its fakes look faker."""
    assert hinge_generator_loss_matches(ns["generator_loss"])
    assert not hinge_generator_loss_matches(broken("generator_loss", "return -fake_out.mean()",
                                                   "return fake_out.mean()"))


# --- DCGAN's initialisation ---

def init_violations(model: nn.Module) -> list[str]:
    """The convolution and linear parameters that are not DCGAN's: weights (for a spectral-norm layer its original,
    pre-normalisation weight, the parameter that is trained) not a N(0, 0.02^2) sample, biases not 0. A sample of n
    values has a mean within 5 standard errors 0.02 / sqrt(n) of 0 and a standard deviation within 5 standard errors
    0.02 / sqrt(2n) of 0.02 (a false alarm about once in a million per layer; the draws are seeded)."""
    out = []
    for layer_name, m in model.named_modules():
        if not isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            continue
        for name, p in m.named_parameters():  # recursive: a spectral norm's original weight lives in m.parametrizations
            if name == "bias":
                if p.abs().max() != 0:
                    out.append(f"{layer_name}.bias")
                continue
            assert name in ("weight", "parametrizations.weight.original"), name
            w, n = p.detach().double(), p.numel()
            mean_off, std_off = abs(w.mean().item()), abs(w.std().item() - 0.02)
            if mean_off > 5 * 0.02 / math.sqrt(n) or std_off > 5 * 0.02 / math.sqrt(2 * n):
                out.append(f"{layer_name}.{name}")
    return out


def dcgan_models(ns: dict) -> dict[str, nn.Module]:
    """Both generators and the discriminator with each norm (c = 16, so the smallest layer has 256 weights)."""
    return {"G conv": ns["Generator"](16, 16, "conv"), "G transposed": ns["Generator"](16, 16, "transposed"),
            **{f"D {norm}": ns["Discriminator"](16, norm) for norm in ("batch", "spectral", "none")}}


def test_dcgan_init_draws_every_weight_from_n_0_002_and_zeroes_the_biases(ns: dict) -> None:
    """Control: `dcgan_init` without its spectral-norm branch writes into `m.weight`, which for a spectral-norm layer
    is recomputed from the original weight at every access: the original keeps PyTorch's default initialisation."""
    torch.manual_seed(0)
    models = dcgan_models(ns)
    assert all(init_violations(m) for m in models.values()), "PyTorch's default initialisation is not DCGAN's"
    for name, model in models.items():
        ns["dcgan_init"](model)
        assert init_violations(model) == [], name
    without_branch = broken("dcgan_init", 'm.parametrizations.weight.original if hasattr(m, "parametrizations") '
                                              'else m.weight', "m.weight")
    torch.manual_seed(0)
    spectral = ns["Discriminator"](16, "spectral")
    without_branch(spectral)
    assert "net.0.parametrizations.weight.original" in init_violations(spectral)


# --- the EMA of the generator ---

def small_generator(ns: dict) -> nn.Module:
    """A small generator of the notebook's (J = 8, c = 8), DCGAN-initialised."""
    model = ns["Generator"](8, 8, "conv")
    ns["dcgan_init"](model)
    return model


def ema_errors(update: Callable, decay: float, ns: dict) -> list[str]:
    """The parameters where one `update(ema, model, decay)` does not give decay * ema + (1 - decay) * model. float64:
    the fused lerp and the formula round differently by a few ulps of the larger operand (8 eps)."""
    torch.manual_seed(1)
    model = small_generator(ns).double()
    ema = copy.deepcopy(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))  # the trained weights move away from the average
    before = {name: p.detach().clone() for name, p in ema.named_parameters()}
    update(ema, model, decay)
    errors = []
    for (name, got), p in zip(ema.named_parameters(), model.parameters()):
        want = decay * before[name] + (1 - decay) * p.detach()
        scale = torch.maximum(before[name].abs(), p.detach().abs())
        if not ((got - want).abs() <= 8 * EPS64 * scale).all():
            errors.append(name)
    return errors


@pytest.mark.parametrize("decay", [0.9, 0.999])
def test_update_ema_moves_every_parameter_one_minus_decay_of_the_way(ns: dict, decay: float) -> None:
    """theta_EMA <- decay * theta_EMA + (1 - decay) * theta. Control: decay and 1 - decay swapped, an EMA that
    forgets its past in one step."""
    assert ema_errors(ns["update_ema"], decay, ns) == []
    swapped = broken("update_ema", "params, 1 - decay)", "params, decay)")
    assert ema_errors(swapped, decay, ns) != []


# --- batch-norm calibration and evaluation ---

CALIBRATION = {"batches": 3, "batch_size": 16, "seed": 11}


def calibration_statistics(model: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per batch norm, the plain averages over the calibration batches of each batch's mean and unbiased variance
    (what BatchNorm's running_var holds), recomputed from the same noise draws in float64 on a copy of the model."""
    twin = copy.deepcopy(model).train()
    norms = {name: m for name, m in twin.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    inputs = {name: [] for name in norms}
    hooks = [m.register_forward_hook(lambda m, inp, out, name=name: inputs[name].append(inp[0].detach().double()))
             for name, m in norms.items()]
    gen = torch.Generator().manual_seed(CALIBRATION["seed"])
    with torch.no_grad():
        for _ in range(CALIBRATION["batches"]):
            twin(torch.randn(CALIBRATION["batch_size"], twin.latent_dim, generator=gen))
    for h in hooks:
        h.remove()
    out = {}
    for name, xs in inputs.items():
        dims = [0, *range(2, xs[0].dim())]  # every dimension but the channels
        out[name] = (torch.stack([x.mean(dims) for x in xs]).mean(0),
                     torch.stack([x.var(dims, unbiased=True) for x in xs]).mean(0))
    return out


def calibration_errors(calibrate: Callable, ns: dict) -> list[str]:
    """What is wrong after `calibrate(model, ...)` on a generator whose batch norms hold stale statistics: running
    means and variances that are not the plain averages of the batches' statistics, a batch count that is not the
    number of batches, a model not in evaluation mode. Tolerance: float32 reductions over at most 16 * 28 * 28 values
    (pairwise: about log2(12,544) < 14 ulps) and 3 rounded updates: 64 float32 ulps of the largest statistic."""
    torch.manual_seed(2)
    model = small_generator(ns)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):  # stale statistics from "training"
            m.running_mean.fill_(3.0)
            m.running_var.fill_(7.0)
            m.num_batches_tracked.fill_(50)
    want = calibration_statistics(model)
    calibrate(model, CALIBRATION["batches"], CALIBRATION["batch_size"], CPU, CALIBRATION["seed"])
    errors = [f"{name or 'model'} in training mode" for name, m in model.named_modules() if m.training]
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            for what, got, expected in (("mean", m.running_mean, want[name][0]), ("var", m.running_var, want[name][1])):
                if not torch.allclose(got.double(), expected, rtol=0, atol=64 * EPS32 * expected.abs().max().item()):
                    errors.append(f"{name} running {what}")
            if int(m.num_batches_tracked) != CALIBRATION["batches"]:
                errors.append(f"{name} batch count")
    return errors


@pytest.mark.parametrize("old", ["m.momentum = None", "m.reset_running_stats()", "model.eval()"])
def test_calibrate_batch_norm_averages_the_batches_statistics_and_leaves_eval_mode(ns: dict, old: str) -> None:
    """Controls, one each: the default momentum 0.1 (an exponential average that keeps 0.9^3 of the reset
    statistics), no reset (the stale statistics stay in the average), the model left in training mode."""
    assert calibration_errors(ns["calibrate_batch_norm"], ns) == []
    control = broken("calibrate_batch_norm", old, "pass")
    errors = calibration_errors(control, ns)
    if old == "model.eval()":
        assert errors and all(e.endswith("in training mode") for e in errors)
    else:
        assert any(e.endswith("running mean") for e in errors) and any(e.endswith("running var") for e in errors)


# Two batchings of one computation may sum in different orders: float32 rounding of sums of at most 16 * 16 = 256
# products per layer, over 4 layers, is below 4 * 256 eps = 1.2e-4 on a pixel in [0, 1].
BATCHING_TOL = 4 * 256 * EPS32


def batch_dependence(calibrate: Callable, ns: dict) -> float:
    """max |image generated in batches of 2 - the same image generated in one batch of 6| after `calibrate`."""
    torch.manual_seed(3)
    model = small_generator(ns)
    calibrate(model, CALIBRATION["batches"], CALIBRATION["batch_size"], CPU, CALIBRATION["seed"])
    z = torch.randn(6, model.latent_dim, generator=torch.Generator().manual_seed(4))
    return (ns["generate"](model, z, 2) - ns["generate"](model, z, 6)).abs().max().item()


def test_after_calibration_an_image_does_not_depend_on_the_others_in_its_batch(ns: dict) -> None:
    """The Model section's reason for the calibration. Control: calibration that leaves the model in training mode,
    where batch norm normalises with the statistics of the batch."""
    assert batch_dependence(ns["calibrate_batch_norm"], ns) <= BATCHING_TOL
    assert batch_dependence(broken("calibrate_batch_norm", "model.eval()", "pass"), ns) > 100 * BATCHING_TOL


# --- shapes and ranges ---

def image_range_violation(generator_class: type, final_layer: str) -> str | None:
    """What is wrong with G's output for a batch of 4: not (4, 1, 28, 28), or outside [-1, 1]. The last layer's
    weights are scaled 100-fold, so that the values before the tanh reach far beyond [-1, 1] and the check can fail."""
    torch.manual_seed(5)
    model = generator_class(8, 8, final_layer)
    last = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))][-1]
    with torch.no_grad():
        last.weight.mul_(100)
        x = model(torch.randn(4, 8))
    if x.shape != (4, 1, 28, 28):
        return f"shape {tuple(x.shape)}"
    return None if x.min() >= -1 and x.max() <= 1 else f"range [{x.min().item():.1f}, {x.max().item():.1f}]"


@pytest.mark.parametrize("final_layer", ["conv", "transposed"])
def test_the_generator_maps_noise_to_28x28_images_in_minus_1_1(ns: dict, final_layer: str) -> None:
    """Control: G without its final tanh."""
    assert image_range_violation(ns["Generator"], final_layer) is None
    no_tanh = broken("Generator", "nn.Sequential(*layers, nn.Tanh())", "nn.Sequential(*layers)")
    assert (image_range_violation(no_tanh, final_layer) or "").startswith("range")


def logit_shapes(discriminator_class: type) -> dict[str, tuple[int, ...]]:
    """D's output shape on a batch of 4 images, for each norm."""
    torch.manual_seed(6)
    x = torch.rand(4, 1, 28, 28) * 2 - 1
    with torch.no_grad():
        return {norm: tuple(discriminator_class(8, norm)(x).shape) for norm in ("batch", "spectral", "none")}


def test_the_discriminator_gives_one_logit_per_image_with_every_norm(ns: dict) -> None:
    """(B, 1, 28, 28) -> (B,), which the losses need: a (B, 1) logit against (B,) targets would broadcast.
    Control: D without its squeeze."""
    assert logit_shapes(ns["Discriminator"]) == {"batch": (4,), "spectral": (4,), "none": (4,)}
    no_squeeze = broken("Discriminator", ".squeeze(1)", "")
    assert set(logit_shapes(no_squeeze).values()) == {(4, 1)}


def generate_error(generate: Callable, ns: dict) -> float:
    """max |generate(G, z) - (G(z) + 1) / 2| for a calibrated, eval-mode generator whose images span [-1, 1] (the
    last layer's weights scaled 100-fold); `generate` must also give (N, 1, 28, 28) images in [0, 1]. G(z) is taken in
    the same batches as `generate` takes it (batching is the test above's), so the two are the same float32
    operations on the same numbers."""
    torch.manual_seed(7)
    model = small_generator(ns)
    last = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))][-1]
    with torch.no_grad():
        last.weight.mul_(100)
    ns["calibrate_batch_norm"](model, CALIBRATION["batches"], CALIBRATION["batch_size"], CPU, CALIBRATION["seed"])
    z = torch.randn(7, 8, generator=torch.Generator().manual_seed(8))
    images = generate(model, z, 3)  # batches of 3, 3 and 1
    assert images.shape == (7, 1, 28, 28) and images.min() >= 0 and images.max() <= 1
    with torch.no_grad():
        g = torch.cat([model(z[i:i + 3]) for i in range(0, len(z), 3)])
    assert g.min() < -0.99 and g.max() > 0.99, "G's images should span [-1, 1] for the check to bite"
    return (images - (g + 1) / 2).abs().max().item()


def test_generate_maps_the_generator_s_minus_1_1_to_0_1(ns: dict) -> None:
    """The Data section's convention: G draws in [-1, 1], plots and FID read [0, 1]. Control: `generate` without the
    map, only clamping G's images to [0, 1] (every dark pixel black)."""
    assert generate_error(ns["generate"], ns) <= EPS32  # an ulp at most, see generate_error
    clamp_only = broken("generate", "(model(z[i:i + batch]) + 1) / 2", "model(z[i:i + batch])")
    assert generate_error(clamp_only, ns) > 0.4


def differing_settings(variants: dict[str, dict[str, str]]) -> set[str]:
    """The settings on which the variants do not all agree."""
    keys = set().union(*variants.values())
    return {k for k in keys if len({v.get(k) for v in variants.values()}) > 1}


def test_the_two_variants_differ_only_in_their_loss(ns: dict) -> None:
    """The Config section: "Only the loss differs", and the two names select Eq. 1's -V and the hinge. Control: a
    hinge variant that also switches D to spectral normalisation (exercise 2's recipe)."""
    assert differing_settings(variants()) == {"loss"}
    real, fake = torch.tensor([0.3, 2.0], dtype=torch.float64), torch.tensor([-0.2, -3.0], dtype=torch.float64)
    minus_v = -(math.log(sigmoid(0.3)) + math.log(sigmoid(2.0))) / 2 - (math.log(1 - sigmoid(-0.2))
                                                                       + math.log(1 - sigmoid(-3.0))) / 2
    assert ns["discriminator_loss"](real, fake, BCE).item() == pytest.approx(minus_v, rel=1e-12)  # see the G losses
    assert ns["discriminator_loss"](real, fake, HINGE).item() == pytest.approx((0.7 + 0.0) / 2 + (0.8 + 0.0) / 2,
                                                                                rel=4 * EPS64)
    assert differing_settings({**variants(), "hinge": {**variants()["hinge"], "norm": "spectral"}}) == {"loss", "norm"}


# --- names: a misspelt loss is refused ---

def loss_call(fn: LossFn, name: str, loss: str) -> Callable[[], torch.Tensor]:
    out = torch.linspace(-2.0, 2.0, 8)
    return (lambda: fn(out, -out, loss)) if name == "discriminator_loss" else (lambda: fn(out, loss))


@pytest.mark.parametrize(("name", "guard"), [("discriminator_loss", 'if loss in ("bce", "saturating"):'),
                                             ("generator_loss", 'if loss == "bce":')])
def test_a_misspelt_loss_is_refused(ns: dict, name: str, guard: str) -> None:
    """Both losses take "hinge", "bce" and "saturating" (every name VARIANTS and the failure-mode run use) and raise
    ValueError on any other ("non-saturating" here): before, any unknown name silently trained the cross-entropy
    losses. Control: the guard made to accept everything, which takes the unknown name again."""
    used = {v["loss"] for v in variants().values()} | {"saturating"}
    assert used <= {"hinge", "bce", "saturating"}
    for loss in sorted(used):
        assert torch.isfinite(loss_call(ns[name], name, loss)()), loss
    with pytest.raises(ValueError):
        loss_call(ns[name], name, "non-saturating")()
    control = broken(name, guard, "if True:")
    assert torch.isfinite(loss_call(control, name, "non-saturating")())


@pytest.mark.parametrize(("name", "guard", "misspelt"), [
    ("Generator", 'if final_layer not in ("conv", "transposed"):', "convolution"),
    ("Discriminator", 'if norm not in ("batch", "spectral", "none"):', "Batch")])
def test_a_misspelt_network_option_is_refused(ns: dict, name: str, guard: str, misspelt: str) -> None:
    """Generator(final_layer=...) takes "conv" or "transposed" and Discriminator(norm=...) "batch", "spectral"
    (exercise 2's) or "none"; any other raises ValueError: before, a misspelt "conv" built the transposed output layer and a
    misspelt "batch" a D without normalisation. Control: the guard removed, which builds the wrong network."""
    cls = ns[name]
    build = (lambda c, option: c(16, 8, option)) if name == "Generator" else (lambda c, option: c(8, option))
    for option in (("conv", "transposed") if name == "Generator" else ("batch", "spectral", "none")):
        build(cls, option)
    with pytest.raises(ValueError):
        build(cls, misspelt)
    assert isinstance(build(broken(name, guard, "if False:"), misspelt), nn.Module)
