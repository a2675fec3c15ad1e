"""The mathematics of the two diffusion notebooks, checked on their own functions: DDPM with DDIM sampling
(image_generation/ddpm, Ho, Jain and Abbeel 2020; Song et al. 2020; Nichol and Dhariwal 2021; Salimans and Ho 2022)
and flow matching (image_generation/flow_matching, Lipman et al. 2022, rectified flow of Liu et al. 2022).

DDPM. `make_schedule`: alpha_bar is the running product of 1 - beta, index t is step t (beta_0 = 0, alpha_bar_0 = 1),
alpha_bar falls strictly inside (0, 1); the linear betas run from 1e-4 to 0.02 over T = 1000 (Section 4, rescaled by
1000 / T); the cosine alpha_bar is f(t) / f(0) (Nichol and Dhariwal, Eq. 17) with beta clipped at 0.999. `q_sample`
(Eq. 4) noises each image at its own t, and its moments are those of running the chain of Eq. 2 step by step.
`split_prediction` inverts the true eps and v of a known (x0, eps), keeps x_t = sqrt(abar) x0_hat + sqrt(1 - abar)
eps_hat when it clips x0_hat, and makes the v loss the eps loss weighted by 1 + 1/SNR (the Objective's claim).
`diffusion_loss` is zero for a network that returns the true eps or v, draws t from {1, ..., T} and drops labels at
rate p_uncond. Guidance (`predict`, and flow matching's `velocity`) mixes (1 + w) cond - w null. With a network that
knows the clean image, DDIM (eta = 0) keeps every state on q's path of the noise it started from and ends exactly at
x0, and every ancestral step is Algorithm 2's mean plus sqrt(beta_t) times the generator's next draw.

Flow matching. `sample_times` draws uniform or logit-normal times; `flow_matching_loss` is zero for the exact
conditional velocity (x1 - x) / (1 - t) of the path x_t = (1 - t) x0 + t x1 (Eqs. 21-23); the clip in `velocity` does
nothing when the velocity points inside [-1, 1] and lands on the clip otherwise; Euler and Heun carry noise along the
straight line to a single target exactly, on any `time_grid`; `time_grid` runs from 0 to 1 and its shift divides the
odds t / (1 - t); `straightness` is zero for a straight constant-speed path and takes its exact value on two others;
`independent_pairs` are uncorrelated, `reflow_pairs` keep the rows of their coupling.

Each check is paired with a control broken in exactly the way the check guards against, made by one string
replacement in the notebook function's source (the string must occur exactly once, so a control breaks loudly when
the notebook changes), and the control must fail the same check: a cumsum for the cumprod, unrescaled or
mis-indexed linear betas, betas from alpha_bar instead of its ratios, a (B,) alpha_bar broadcast over the width,
swapped square roots, a v of the wrong sign, an eps inversion without its square root, the raw eps returned after
the clip, a target noise other than the one in x_t, t drawn from {0, ..., T - 1}, the dropout inverted, the label
halves swapped, DDIM re-noising with alpha_bar_t or with fresh noise, Eq. 7 with alpha_bar_t for alpha_bar_{t-1},
rand for randn, the interpolation convention reversed, the velocity target negated, the time scale dropped, the clip
aiming with t for 1 - t, a uniform step on a shifted grid, Heun's corrector evaluated at t, the shift reversed, the
straightness without its 1/h, and pairs drawn with two indices. Stand-in 'networks' with analytically known outputs
replace the U-Net; tolerances are float32 or float64 rounding (unit roundoff 2^-24, 2^-53) times the amplification
the formulas apply, or five standard errors for the statistical checks, every draw seeded. Well under 10 s on a CPU.
"""

from __future__ import annotations

import math
import types
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from notebook_cells import notebook_functions

REPO_ROOT = Path(__file__).resolve().parent.parent
DDPM = REPO_ROOT / "image_generation" / "ddpm" / "ddpm.ipynb"
FLOW = REPO_ROOT / "image_generation" / "flow_matching" / "flow_matching.ipynb"
DDPM_NAMES = ("make_schedule", "q_sample", "diffusion_loss", "split_prediction", "predict", "ddim_sample",
              "ancestral_sample")
FLOW_NAMES = ("sample_times", "flow_matching_loss", "velocity", "time_grid", "ode_sample", "two_moons",
              "independent_pairs", "reflow_pairs", "straightness")
T = 1000  # the notebooks' num_timesteps in quick and full (Ho et al., Section 4)
NULL = 10  # the null label: MNIST's ten classes, then one more row
U32 = 2.0 ** -24  # unit roundoff of float32: one rounding moves a value by at most this much, relatively
U64 = 2.0 ** -53  # unit roundoff of float64
SIGMAS = 5.0  # statistical checks: a deviation of five standard errors (a 1-in-1.7-million event) fails


def load(notebook: Path, broken: tuple[str, str, str] | None = None) -> dict:
    """A fresh namespace with the notebook's functions; with broken = (name, old, new), the function `name` has `old`,
    which must occur exactly once in it, replaced by `new` (its callers, which look it up in this namespace, use the
    broken one)."""
    names = DDPM_NAMES if notebook == DDPM else FLOW_NAMES
    return notebook_functions(notebook, *names, namespace={"torch": torch, "nn": nn, "F": F, "math": math},
                              edits=[broken] if broken is not None else [])


def fails(check: Callable[..., None], *args: object) -> bool:
    """Whether check(*args) fails (raises AssertionError). The arguments, a broken namespace among them, are built
    before the call, so a control whose replacement no longer matches the notebook errors instead of 'failing'."""
    try:
        check(*args)
    except AssertionError:
        return True
    return False


@pytest.fixture(scope="module")
def ddpm() -> dict:
    return load(DDPM)


@pytest.fixture(scope="module")
def flow() -> dict:
    return load(FLOW)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def assert_within(got: torch.Tensor, want: torch.Tensor, tol: float | torch.Tensor, what: str) -> None:
    """|got - want| <= tol elementwise (tol broadcast), in float64."""
    err = (got.double() - want.double()).abs()
    tol = torch.as_tensor(tol, dtype=torch.float64)
    assert (err <= tol).all(), f"{what}: off by {err.max().item():.3g} (worst ratio to the tolerance " \
                               f"{(err / tol).max().item():.3g})"


# ---------------------------------------------------------------------------------------------------------- schedule


def check_cumulative_product(ns: dict, kind: str) -> None:
    sched = ns["make_schedule"](kind, T)
    assert set(sched) == {"betas", "alphas", "alpha_bars"}
    assert all(v.shape == (T + 1,) and v.dtype == torch.float64 for v in sched.values())
    betas, alphas, ab = sched["betas"], sched["alphas"], sched["alpha_bars"]
    assert betas[0] == 0 and ab[0] == 1, "index t is step t: t = 0 is the clean image"
    assert torch.equal(alphas, 1 - betas)
    running, product = 1.0, []
    for a in alphas.tolist():
        running *= a
        product.append(running)
    # two sequential float64 products of t factors differ by at most 2 t roundings, relatively
    tol = 2 * torch.arange(1, T + 2, dtype=torch.float64) * U64 * torch.tensor(product, dtype=torch.float64)
    assert_within(ab, torch.tensor(product, dtype=torch.float64), tol, f"{kind} alpha_bar against prod(1 - beta)")
    inner = ab[1:]
    assert ((inner > 0) & (inner < 1)).all() and (inner[1:] < inner[:-1]).all(), \
        f"{kind}: alpha_bar must fall strictly inside (0, 1)"


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_alpha_bar_is_the_running_product_of_one_minus_beta_inside_0_1(ddpm: dict, kind: str) -> None:
    """Eq. 4's alpha_bar_t = prod_{s <= t} (1 - beta_s), indexed by step, strictly falling inside (0, 1).
    Control: a cumsum for the cumprod."""
    check_cumulative_product(ddpm, kind)
    control = load(DDPM, ("make_schedule", "torch.cumprod(alphas, 0)", "torch.cumsum(alphas, 0)"))
    assert fails(check_cumulative_product, control, kind)


def check_linear(ns: dict) -> None:
    for steps in (1000, 50):  # the paper's T and the smoke preset's
        betas = ns["make_schedule"]("linear", steps)["betas"]
        assert betas.shape == (steps + 1,) and betas[0] == 0, "betas[t] is beta_t of step t, beta_0 = 0"
        scale = 1000 / steps  # the notebook's rescaling, the identity at T = 1000
        want = torch.linspace(1e-4 * scale, 0.02 * scale, steps, dtype=torch.float64)
        # float64 linspace, its rounding: a few units of the largest value
        assert_within(betas[1:], want, 4 * U64 * 0.02 * scale, f"linear betas at T = {steps}")
        assert betas[1].item() == pytest.approx(1e-4 * scale, rel=1e-12)
        assert betas[steps].item() == pytest.approx(0.02 * scale, rel=1e-12)


def test_linear_betas_run_from_1e_4_to_0_02_over_the_steps(ddpm: dict) -> None:
    """Ho et al., Section 4: beta_1 = 1e-4 to beta_T = 0.02, evenly spaced, over T = 1000 steps (scaled by 1000 / T
    for other T, as the notebook states). Controls: endpoints not rescaled (fails at T = 50), and betas without the
    beta_0 row (index t would be step t + 1)."""
    check_linear(ddpm)
    old = "torch.linspace(1e-4 * 1000 / T, 0.02 * 1000 / T, T,"
    assert fails(check_linear, load(DDPM, ("make_schedule", old, "torch.linspace(1e-4, 0.02, T,")))
    prepend = "betas = torch.cat([torch.zeros(1, dtype=torch.float64), betas])"
    assert fails(check_linear, load(DDPM, ("make_schedule", prepend, "betas = betas")))


def check_cosine(ns: dict) -> None:
    sched = ns["make_schedule"]("cosine", T)
    ab, alphas, betas = sched["alpha_bars"], sched["alphas"], sched["betas"]
    s = 0.008
    theta = torch.tensor([(t / T + s) / (1 + s) * math.pi / 2 for t in range(T + 1)], dtype=torch.float64)
    f = torch.tensor([math.cos(x) ** 2 for x in theta.tolist()], dtype=torch.float64)
    want = f / f[0]  # Nichol and Dhariwal, Eq. 17
    # relative rounding: a few units per step of the product of ratios f(t) / f(t - 1) and of 1 - (1 - ratio) (each
    # divided by alpha_t), plus cos^2 evaluated near its zero (relative error ~ u / (pi/2 - theta))
    rtol = 4 * U64 * (torch.cumsum(1 / alphas, 0) + 1 / (math.pi / 2 - theta))
    assert_within(ab[:T], want[:T], (rtol * want)[:T], "cosine alpha_bar against f(t) / f(0)")
    assert betas.max() == 0.999 and (betas[1:T] < 0.999).all(), "only the last beta (f(T) = 0) is clipped"
    assert ab[T].item() == pytest.approx(0.001 * ab[T - 1].item(), rel=1e-12), "alpha_bar_T = (1 - 0.999) abar_T-1"


def test_cosine_alpha_bar_is_f_t_over_f_0_with_beta_clipped_at_0_999(ddpm: dict) -> None:
    """Nichol and Dhariwal (Eq. 17): alpha_bar_t = f(t) / f(0), f(t) = cos^2((t/T + s)/(1 + s) pi/2), s = 0.008, with
    beta_t = 1 - alpha_bar_t / alpha_bar_{t-1} clipped at 0.999 (only the last step, where f(T) = 0).
    Control: beta_t = 1 - alpha_bar_t (the ratio to f(0) instead of to f(t - 1))."""
    check_cosine(ddpm)
    assert fails(check_cosine, load(DDPM, ("make_schedule", "f[1:] / f[:-1]", "f[1:] / f[0]")))


# --------------------------------------------------------------------------------------------------------- q_sample


def check_q_sample_per_image(ns: dict, alpha_bars: torch.Tensor) -> None:
    t = torch.tensor([1, 250, 700, 1000])
    # (B, C, H, W) with W = B, so that a (B,) alpha_bar broadcast over the width runs without an error
    x0 = torch.rand(4, 3, 5, 4, generator=gen(0), dtype=torch.float64) * 2 - 1
    eps = torch.randn(4, 3, 5, 4, generator=gen(1), dtype=torch.float64)
    got = ns["q_sample"](x0, t, eps, alpha_bars)
    for i, ti in enumerate(t.tolist()):
        a = alpha_bars[ti].item()
        want = math.sqrt(a) * x0[i] + math.sqrt(1 - a) * eps[i]
        assert_within(got[i], want, 4 * U64 * (1 + eps.abs().max().item()), f"image {i} at t = {ti}")


def test_q_sample_noises_each_image_at_its_own_timestep(ddpm: dict) -> None:
    """Eq. 4 per image: x_t[i] = sqrt(abar_{t_i}) x0[i] + sqrt(1 - abar_{t_i}) eps[i], alpha_bar broadcast over
    (C, H, W). Control: alpha_bar[t] left as (B,), which broadcasts over the width instead."""
    alpha_bars = ddpm["make_schedule"]("cosine", T)["alpha_bars"]
    check_q_sample_per_image(ddpm, alpha_bars)
    control = load(DDPM, ("q_sample", "alpha_bars[t].view(-1, 1, 1, 1)", "alpha_bars[t]"))
    assert fails(check_q_sample_per_image, control, alpha_bars)


def test_q_sample_has_the_moments_of_the_forward_chain(ddpm: dict) -> None:
    """Running Eq. 2's chain x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) z step by step from a fixed x0 gives, at
    every t, mean sqrt(abar_t) x0 and variance 1 - abar_t: the mean and standard deviation q_sample gives (its output
    with eps = 0, and with x0 = 0 and eps = 1) agree with the chain's sample moments within five standard errors.
    Control: q_sample with its two square roots swapped."""
    sched = ddpm["make_schedule"]("cosine", T)
    x0 = torch.tensor([-1.0, -0.3, 0.5, 1.0], dtype=torch.float64)
    n, checkpoints = 4_000, (50, 250, 500)  # abar = 0.99, 0.74, 0.31 (cosine)
    g, x, moments = gen(2), x0.expand(n, -1).clone(), {}
    for t in range(1, max(checkpoints) + 1):
        beta = sched["betas"][t].item()
        x = math.sqrt(1 - beta) * x + math.sqrt(beta) * torch.randn(x.shape, generator=g, dtype=torch.float64)
        if t in checkpoints:
            moments[t] = (x.mean(0), x.var(0))

    def check(ns: dict) -> None:
        for t, (mean, var) in moments.items():
            tt, image = torch.tensor([t]), x0.view(1, 4, 1, 1)
            want_mean = ns["q_sample"](image, tt, torch.zeros_like(image), sched["alpha_bars"]).flatten()
            zero, one = torch.zeros_like(image), torch.ones_like(image)
            want_std = ns["q_sample"](zero, tt, one, sched["alpha_bars"]).flatten()
            assert_within(mean, want_mean, SIGMAS * want_std / math.sqrt(n), f"chain mean at t = {t}")
            assert_within(var, want_std ** 2, SIGMAS * want_std ** 2 * math.sqrt(2 / (n - 1)), f"chain var at t = {t}")

    check(ddpm)
    swapped = load(DDPM, ("q_sample", "ab.sqrt() * x0 + (1 - ab).sqrt() * eps",
                          "(1 - ab).sqrt() * x0 + ab.sqrt() * eps"))
    assert fails(check, swapped)


# ------------------------------------------------------------------------------------------------- split_prediction

SPLIT_TS = (1, 10, 500, 990, 1000)  # from the least noisy step to the most (abar_T ~ 2.4e-9 in the cosine schedule)


def pair(t: int, alpha_bars: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(x0 inside [-1, 1], eps, x_t, v, abar_t) of a known pair at step t, in float64, computed here (not by the
    notebook): x_t by Eq. 4, v = sqrt(abar) eps - sqrt(1 - abar) x0 (Salimans and Ho 2022)."""
    x0 = torch.rand(3, 1, 4, 4, generator=gen(t), dtype=torch.float64) * 1.8 - 0.9
    eps = torch.randn(3, 1, 4, 4, generator=gen(t + 1), dtype=torch.float64)
    ab = alpha_bars[t]
    return x0, eps, ab.sqrt() * x0 + (1 - ab).sqrt() * eps, ab.sqrt() * eps - (1 - ab).sqrt() * x0, ab


def check_split_inverts(ns: dict, prediction: str, alpha_bars: torch.Tensor) -> None:
    for t in SPLIT_TS:
        x0, eps, x_t, v, ab = pair(t, alpha_bars)
        x0_hat, eps_hat = ns["split_prediction"](eps if prediction == "eps" else v, x_t, ab, prediction)
        # float64 rounding, divided by sqrt(abar) (x0 from eps) or sqrt(1 - abar) (eps from x0): a few units times both
        tol = 16 * U64 * (1 + eps.abs().max().item()) / (ab.sqrt() * (1 - ab).sqrt()).item()
        assert_within(x0_hat, x0, tol, f"{prediction}: x0 at t = {t}")
        assert_within(eps_hat, eps, tol, f"{prediction}: eps at t = {t}")


@pytest.mark.parametrize(("prediction", "old", "new"), [
    ("eps", "(x_t - (1 - ab).sqrt() * out) / ab.sqrt()", "(x_t - (1 - ab) * out) / ab.sqrt()"),
    ("v", "ab.sqrt() * x_t - (1 - ab).sqrt() * out", "ab.sqrt() * x_t + (1 - ab).sqrt() * out"),
], ids=["eps", "v"])
def test_split_prediction_inverts_the_true_eps_and_v(ddpm: dict, prediction: str, old: str, new: str) -> None:
    """Given the true eps (or v) of a known (x0, eps) at x_t, split_prediction returns that (x0, eps), at every noise
    level. Controls: eps solved for x0 without the square root of 1 - abar; v read with the wrong sign
    (v = sqrt(1 - abar) x0 - sqrt(abar) eps)."""
    alpha_bars = ddpm["make_schedule"]("cosine", T)["alpha_bars"]
    check_split_inverts(ddpm, prediction, alpha_bars)
    assert fails(check_split_inverts, load(DDPM, ("split_prediction", old, new)), prediction, alpha_bars)


def check_split_keeps_x_t(ns: dict, prediction: str, alpha_bars: torch.Tensor) -> None:
    clipped = False
    for t in SPLIT_TS:
        x_t = torch.randn(3, 1, 4, 4, generator=gen(t), dtype=torch.float64) * 2
        out = torch.randn(3, 1, 4, 4, generator=gen(t + 1), dtype=torch.float64) * 3  # a poor prediction: x0 clips
        ab = alpha_bars[t]
        x0_hat, eps_hat = ns["split_prediction"](out, x_t, ab, prediction)
        assert x0_hat.abs().max() <= 1
        clipped |= bool((x0_hat.abs() == 1).any())
        tol = 16 * U64 * (1 + x_t.abs().max().item())  # sqrt(abar) x0 + sqrt(1 - abar) (x_t - sqrt(abar) x0) / ...
        assert_within(ab.sqrt() * x0_hat + (1 - ab).sqrt() * eps_hat, x_t, tol, f"{prediction}: x_t at t = {t}")
    assert clipped, "the check needs predictions whose x0 falls outside [-1, 1]"


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_split_prediction_keeps_x_t_when_it_clips_x0(ddpm: dict, prediction: str) -> None:
    """After clipping x0_hat to [-1, 1], the eps returned is the one consistent with it: sqrt(abar) x0_hat +
    sqrt(1 - abar) eps_hat = x_t, so DDIM re-noises along a direction the clip did not break (the Evaluation's
    DDIM paragraph). Control: the network's raw output returned as the eps (for eps: eps_theta itself)."""
    alpha_bars = ddpm["make_schedule"]("cosine", T)["alpha_bars"]
    check_split_keeps_x_t(ddpm, prediction, alpha_bars)
    control = load(DDPM, ("split_prediction", "return x0, (x_t - ab.sqrt() * x0) / (1 - ab).sqrt()", "return x0, out"))
    assert fails(check_split_keeps_x_t, control, prediction, alpha_bars)


def check_v_weighting(ns: dict, alpha_bars: torch.Tensor) -> None:
    for t in (1, 100, 500, 900):
        x0, eps, x_t, v, ab = pair(t, alpha_bars)
        v_theta = v + 0.05 * torch.randn(v.shape, generator=gen(7), dtype=torch.float64)  # an imperfect v: no clip
        _, eps_hat = ns["split_prediction"](v_theta, x_t, ab, "v")
        snr = (ab / (1 - ab)).item()
        v_loss, eps_loss = (v - v_theta).pow(2).sum().item(), (eps - eps_hat).pow(2).sum().item()
        assert v_loss == pytest.approx((1 + 1 / snr) * eps_loss, rel=1e-9), f"t = {t}"  # float64: ~1e-15 relative


def test_v_loss_is_the_eps_loss_weighted_by_one_plus_inverse_snr(ddpm: dict) -> None:
    """The Objective's claim: ||v - v_theta||^2 = (1 + 1/SNR(t)) ||eps - eps_hat||^2, with eps_hat the eps that
    split_prediction derives from v_theta. Control: v read with the wrong sign."""
    alpha_bars = ddpm["make_schedule"]("cosine", T)["alpha_bars"]
    check_v_weighting(ddpm, alpha_bars)
    control = load(DDPM, ("split_prediction", "ab.sqrt() * x_t - (1 - ab).sqrt() * out",
                          "ab.sqrt() * x_t + (1 - ab).sqrt() * out"))
    assert fails(check_v_weighting, control, alpha_bars)


# ---------------------------------------------------------------------------------------------------- training loss


class TrueTarget(nn.Module):
    """A DDPM 'network' that knows the clean batch x0: it returns the exact eps (or v) of the x_t it is fed, in
    float64, and remembers the largest output."""

    def __init__(self, x0: torch.Tensor, alpha_bars: torch.Tensor, prediction: str) -> None:
        super().__init__()
        self.x0, self.alpha_bars, self.prediction, self.largest = x0, alpha_bars, prediction, 0.0

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        ab = self.alpha_bars[t].view(-1, 1, 1, 1)
        eps = (x.double() - ab.sqrt() * self.x0) / (1 - ab).sqrt()
        out = eps if self.prediction == "eps" else ab.sqrt() * eps - (1 - ab).sqrt() * self.x0
        self.largest = max(self.largest, out.abs().max().item())
        return out


def check_loss_zero(ns: dict, prediction: str, alpha_bars: torch.Tensor) -> None:
    x0 = torch.rand(512, 1, 4, 4, generator=gen(3), dtype=torch.float64) * 2 - 1
    net = TrueTarget(x0, alpha_bars, prediction)
    with torch.random.fork_rng():
        torch.manual_seed(4)
        loss = ns["diffusion_loss"](net, x0, torch.zeros(512, dtype=torch.long), alpha_bars, NULL, 0.5, prediction)
    # the loss casts the output to float32: one rounding, u |out|, the float64 error (~1e-13 at t = 1) far below
    assert loss.item() <= (2 * U32 * net.largest) ** 2, f"{prediction}: loss {loss.item():.3g} for the true target"


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_diffusion_loss_is_zero_for_the_true_eps_or_v(ddpm: dict, prediction: str) -> None:
    """Eq. 14 (or its v form) vanishes for a network that returns the true eps (or v) of the x_t it is shown: x_t is
    Eq. 4 of the same noise and timestep as the target. Controls: the target v with the wrong sign; x_t noised with
    another draw than the target's noise."""
    alpha_bars = ddpm["make_schedule"]("cosine", T)["alpha_bars"]
    check_loss_zero(ddpm, prediction, alpha_bars)
    other_noise = ("diffusion_loss", "q_sample(x0, t, eps, alpha_bars)",
                   "q_sample(x0, t, torch.randn_like(x0), alpha_bars)")
    assert fails(check_loss_zero, load(DDPM, other_noise), prediction, alpha_bars)
    if prediction == "v":
        sign = ("diffusion_loss", "ab.sqrt() * eps - (1 - ab).sqrt() * x0", "(1 - ab).sqrt() * x0 - ab.sqrt() * eps")
        assert fails(check_loss_zero, load(DDPM, sign), prediction, alpha_bars)


class Recorder(nn.Module):
    """Records the timesteps and labels it is shown; predicts zeros."""

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.t, self.y = t, y
        return torch.zeros_like(x)


def check_draws(ns: dict, alpha_bars: torch.Tensor) -> None:
    n, p = 20_000, 0.3
    net = Recorder()
    with torch.random.fork_rng():
        torch.manual_seed(5)
        ns["diffusion_loss"](net, torch.zeros(n, 1, 1, 1), torch.arange(n) % 10, alpha_bars, NULL, p, "eps")
    t = net.t.double()
    # all of {1, ..., T}: each end is missed by 20,000 draws with probability (1 - 1/T)^20000 = e^-20
    assert net.t.min() == 1 and net.t.max() == T, f"t drawn from {net.t.min()} to {net.t.max()}, not 1 to {T}"
    assert abs(t.mean().item() - (T + 1) / 2) <= SIGMAS * math.sqrt((T ** 2 - 1) / 12 / n)
    dropped = net.y == NULL
    assert abs(dropped.double().mean().item() - p) <= SIGMAS * math.sqrt(p * (1 - p) / n)
    assert torch.equal(net.y[~dropped], (torch.arange(n) % 10)[~dropped]), "the kept labels must be the given ones"


def test_diffusion_loss_draws_t_from_1_to_T_and_drops_labels_at_p_uncond(ddpm: dict) -> None:
    """t ~ U{1, ..., T} (Eq. 14: never t = 0, where there is no noise to predict) and a share p_uncond of the labels
    replaced by the null label (Ho and Salimans, Algorithm 1). Controls: t from {0, ..., T - 1}; a label dropped with
    probability 1 - p_uncond."""
    alpha_bars = ddpm["make_schedule"]("cosine", T)["alpha_bars"]
    check_draws(ddpm, alpha_bars)
    shifted = ("diffusion_loss", "torch.randint(1, len(alpha_bars),", "torch.randint(0, len(alpha_bars) - 1,")
    assert fails(check_draws, load(DDPM, shifted), alpha_bars)
    inverted = ("diffusion_loss", "< p_uncond", "> p_uncond")
    assert fails(check_draws, load(DDPM, inverted), alpha_bars)


# --------------------------------------------------------------------------------------------------------- guidance


class LabelNet(nn.Module):
    """An output that depends on the label (the null one too) and on t: 0.1 (1 + y) x + 0.001 t; records batch sizes."""

    def __init__(self) -> None:
        super().__init__()
        self.batches = []

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.batches.append(x.shape[0])
        return 0.1 * (1 + y.to(x.dtype)).view(-1, 1, 1, 1) * x + 0.001 * t.to(x.dtype).view(-1, 1, 1, 1)


def guided(notebook: Path, ns: dict, net: nn.Module, x: torch.Tensor, y: torch.Tensor, w: float) -> torch.Tensor:
    if notebook == DDPM:
        return ns["predict"](net, x, 500, y, w, NULL)
    cfg = types.SimpleNamespace(clip_x1=False, time_scale=1000.0)  # no clip: the mix itself
    return ns["velocity"](net, x, 0.5, y, w, NULL, cfg)


def check_guidance(notebook: Path, ns: dict) -> None:
    x = torch.randn(4, 1, 5, 5, generator=gen(6))
    y = torch.tensor([0, 3, 7, 9])
    for w in (0.0, 1.0, 3.0):
        net = LabelNet()
        got = guided(notebook, ns, net, x, y, w)
        assert net.batches == [4 if w == 0 else 8], "one network call: B images, or 2B when guided"
        reference = LabelNet()
        t = 500 if notebook == DDPM else 500.0  # the time the network sees: t, or t * time_scale
        cond = reference(x, torch.full((4,), t), y).double()
        null = reference(x, torch.full((4,), t), torch.full_like(y, NULL)).double()
        # float32: the two products and the difference each round once, on values up to (1 + w) |out|
        tol = 4 * (1 + 2 * w) * U32 * max(cond.abs().max().item(), null.abs().max().item())
        assert_within(got, (1 + w) * cond - w * null, tol, f"guidance w = {w}")


@pytest.mark.parametrize("notebook", [DDPM, FLOW], ids=["ddpm_predict", "flow_matching_velocity"])
def test_guidance_mixes_one_plus_w_conditional_minus_w_null(notebook: Path, ddpm: dict, flow: dict) -> None:
    """Ho and Salimans (Eq. 6): (1 + w) out(x, t, y) - w out(x, t, null) in one batch of 2B, the plain conditional
    output at w = 0. Control: the label halves of the batch swapped (the null output taken as the conditional one)."""
    check_guidance(notebook, ddpm if notebook == DDPM else flow)
    name = "predict" if notebook == DDPM else "velocity"
    control = load(notebook, (name, "torch.cat([y, torch.full_like(y, null)])",
                              "torch.cat([torch.full_like(y, null), y])"))
    assert fails(check_guidance, notebook, control)


# --------------------------------------------------------------------------------------------------------- samplers


class CleanImageOracle(TrueTarget):
    """TrueTarget that also records every (t, x_t) it is shown, for the samplers (B, 1, 28, 28)."""

    def __init__(self, x0: torch.Tensor, alpha_bars: torch.Tensor, prediction: str) -> None:
        super().__init__(x0, alpha_bars, prediction)
        self.seen = []

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        assert (t == t[0]).all()
        self.seen.append((int(t[0]), x.clone()))
        return super().forward(x, t, y)


def amplification(prediction: str, ab_from: float, ab_to: float) -> float:
    """How much a float32 rounding of x_t or of the network's output at abar_from grows on its way into x at abar_to:
    x0_hat divides by sqrt(abar_from) for eps (the Objective: an eps error reaches x0_hat times 1/sqrt(SNR)), not for
    v; the re-noising multiplies x0_hat by sqrt(abar_to)."""
    return 1 + (math.sqrt(ab_to / ab_from) if prediction == "eps" else 1)


def check_ddim(ns: dict, prediction: str, steps: int, t_start: int | None, sched: dict) -> None:
    ab = sched["alpha_bars"]
    x0 = torch.rand(2, 1, 28, 28, generator=gen(8), dtype=torch.float64) * 1.8 - 0.9  # inside [-1, 1]: no clip
    net = CleanImageOracle(x0, ab, prediction)
    with torch.random.fork_rng():  # seeds the global generator too (the fresh-noise control draws from it)
        torch.manual_seed(10)  # not the sampler's seed: a fresh draw differs from the start at once
        out = ns["ddim_sample"](net, torch.full((2,), NULL), steps, ab, 0.0, NULL, prediction, gen(9), t_start)
    start = T if t_start is None else t_start
    (t0, x_start), *_ = net.seen
    assert t0 == start and torch.equal(x_start, torch.randn(2, 1, 28, 28, generator=gen(9))), "x_start ~ N(0, I)"
    eps_star = (x_start.double() - ab[start].sqrt() * x0) / (1 - ab[start]).sqrt()  # the noise in x_start
    states = net.seen + [(0, out)]
    assert len(net.seen) == steps and states[-1][0] == 0
    big = x0.abs().max().item() + eps_star.abs().max().item()
    bound = 0.0
    for (t_prev, _), (t, x) in zip([(start, None)] + states[:-1], states):
        bound += amplification(prediction, ab[t_prev].item(), ab[t].item())  # errors add up, never grow (x0 exact)
        want = ab[t].sqrt() * x0 + (1 - ab[t]).sqrt() * eps_star  # q's path of eps_star, Eq. 4
        assert_within(x, want, 8 * U32 * big * bound, f"{prediction}, {steps} steps: x at t = {t}")


@pytest.mark.parametrize(("prediction", "steps", "t_start"), [
    ("eps", 1, None), ("eps", 10, None), ("eps", 50, None), ("v", 10, None), ("v", 50, None), ("eps", 7, 500),
])
def test_ddim_with_the_true_eps_stays_on_q_path_of_its_starting_noise(
        ddpm: dict, prediction: str, steps: int, t_start: int | None) -> None:
    """Deterministic DDIM (Song et al., Eq. 12, sigma = 0) with a network that returns the true eps (or v) of one
    known clean image: every state it visits is sqrt(abar_t) x0 + sqrt(1 - abar_t) eps*, with eps* the noise in its
    starting x ~ N(0, I), for any number of steps and any start, and it returns x0 exactly. Controls (10 steps):
    re-noising x0_hat to alpha_bar_t instead of alpha_bar_{t_next}; re-noising with fresh noise (which still ends at
    x0, since alpha_bar_0 = 1: the states in between catch it)."""
    sched = ddpm["make_schedule"]("cosine", T)
    check_ddim(ddpm, prediction, steps, t_start, sched)
    if steps == 10:
        for old, new in [("alpha_bars[t_next].sqrt() * x0", "alpha_bars[t].sqrt() * x0"),
                         ("(1 - alpha_bars[t_next]).sqrt() * eps",
                          "(1 - alpha_bars[t_next]).sqrt() * torch.randn_like(eps)")]:
            control = load(DDPM, ("ddim_sample", old, new))
            assert fails(check_ddim, control, prediction, steps, t_start, sched), new


def check_ancestral(ns: dict, prediction: str, sched: dict) -> None:
    betas, alphas, ab = sched["betas"], sched["alphas"], sched["alpha_bars"]
    x0 = torch.rand(2, 1, 28, 28, generator=gen(10), dtype=torch.float64) * 1.8 - 0.9
    net = CleanImageOracle(x0, ab, prediction)
    out, kept = ns["ancestral_sample"](net, torch.full((2,), NULL), sched, NULL, prediction, gen(11),
                                       list(range(T + 1)))
    draws = gen(11)  # the sampler's generator, replayed: x_T, then z_T, ..., z_2
    assert torch.equal(kept[T], torch.randn(2, 1, 28, 28, generator=draws)), "x_T ~ N(0, I) from the generator"
    big = 1 + max(x.abs().max().item() for x in kept.values()) + x0.abs().max().item()
    for t in range(T, 0, -1):
        x_t = kept[t].double()
        eps = (x_t - ab[t].sqrt() * x0) / (1 - ab[t]).sqrt()  # the network's eps, exact
        mean = (x_t - betas[t] / (1 - ab[t]).sqrt() * eps) / alphas[t].sqrt()  # Algorithm 2, line 4
        z = torch.randn(2, 1, 28, 28, generator=draws) if t > 1 else torch.zeros(2, 1, 28, 28)
        # float32 rounding of x_t, the output and the update, with the x0_hat error (amplification) times Eq. 7's
        # x0 coefficient sqrt(abar_{t-1}) beta_t / (1 - abar_t)
        coef = (ab[t - 1].sqrt() * betas[t] / (1 - ab[t])).item()
        grow = amplification(prediction, ab[t].item(), 1.0) * coef
        assert_within(kept[t - 1], mean + betas[t].sqrt() * z, 8 * U32 * big * (1 + grow),
                      f"{prediction}: x_{t - 1} against Algorithm 2")
    assert torch.equal(out, kept[0])
    assert_within(out, x0, 8 * U32 * big * 2, f"{prediction}: x_0")  # the last mean is x0_hat at t = 1, no noise


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_ancestral_step_is_algorithm_2_with_sigma_squared_beta(ddpm: dict, prediction: str) -> None:
    """With a network that returns the true eps (or v) of one clean image, every step of the notebook's ancestral
    sampler (Eq. 7's posterior mean through x0_hat) equals Algorithm 2's x_{t-1} = (x_t - beta_t / sqrt(1 - abar_t)
    eps) / sqrt(alpha_t) + sqrt(beta_t) z with z the generator's next draw (none at t = 1), as the Evaluation says it
    does without clipping; the sample is x0. Controls: Eq. 7 with alpha_bar_t for alpha_bar_{t-1}, in the x0
    coefficient or in the x_t one."""
    sched = ddpm["make_schedule"]("cosine", T)
    check_ancestral(ddpm, prediction, sched)
    if prediction == "eps":
        for old, new in [("ab[t - 1].sqrt() * betas[t] * x0", "ab[t].sqrt() * betas[t] * x0"),
                         ("(1 - ab[t - 1]) * x)", "(1 - ab[t]) * x)")]:
            assert fails(check_ancestral, load(DDPM, ("ancestral_sample", old, new)), prediction, sched), new


# ---------------------------------------------------------------------------------------------------- refused values


class ZeroNet(nn.Module):
    """A network that predicts 0 everywhere: enough to run a sampler or a loss end to end."""

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


def check_refused(call: Callable[[], object], what: str) -> None:
    """call() must raise ValueError: a value the notebook would otherwise read as something else."""
    try:
        call()
    except ValueError:
        return
    raise AssertionError(f"{what} was accepted")


def misspelt_prediction(ns: dict, name: str) -> Callable[[], object]:
    ab = ns["make_schedule"]("cosine", T)["alpha_bars"]
    x = torch.zeros(2, 1, 28, 28)
    if name == "split_prediction":
        return lambda: ns["split_prediction"](x, x, ab[10], "epsilon")
    return lambda: ns["diffusion_loss"](ZeroNet(), x, torch.zeros(2, dtype=torch.long), ab, NULL, 0.0, "epsilon")


@pytest.mark.parametrize("name", ["split_prediction", "diffusion_loss"])
def test_a_misspelt_prediction_is_refused(ddpm: dict, name: str) -> None:
    """`prediction` other than "eps" or "v" (here "epsilon") raises ValueError: before, every value but "eps" was read
    as "v", so a misspelt "eps" trained and sampled a v-model without a word. Control: the guard removed, which
    accepts it again."""
    check_refused(misspelt_prediction(ddpm, name), f"{name} with prediction 'epsilon'")
    control = load(DDPM, (name, 'if prediction not in ("eps", "v"):', "if False:"))
    assert fails(check_refused, misspelt_prediction(control, name), name)


def ddim_call(ns: dict, steps: int, t_start: int) -> Callable[[], object]:
    ab = ns["make_schedule"]("cosine", T)["alpha_bars"]
    return lambda: ns["ddim_sample"](ZeroNet(), torch.full((2,), NULL), steps, ab, 0.0, NULL, "eps", gen(0), t_start)


def test_ddim_refuses_more_steps_than_t_start(ddpm: dict) -> None:
    """DDIM with more steps than t_start (which would repeat rounded timesteps and, from 2 t_start on, step at t = 0,
    where eps is 0/0) or with none raises ValueError; t_start steps run (each at its own timestep). Control: the guard
    removed: 2 t_start + 1 steps from t_start run, and return NaN."""
    t_start = 6
    for steps in (t_start + 1, 2 * t_start + 1, 0):
        check_refused(ddim_call(ddpm, steps, t_start), f"{steps} DDIM steps from t_start {t_start}")
    assert torch.isfinite(ddim_call(ddpm, t_start, t_start)()).all()
    control = load(DDPM, ("ddim_sample", "if not 1 <= steps <= t_start:", "if False:"))
    assert fails(check_refused, ddim_call(control, 2 * t_start + 1, t_start), "control")
    assert torch.isnan(ddim_call(control, 2 * t_start + 1, t_start)()).any(), "the NaN the guard keeps out"


# ---------------------------------------------------------------------------------------------------- flow matching


def check_times(ns: dict) -> None:
    n = 100_000
    with torch.random.fork_rng():
        torch.manual_seed(12)
        uniform = ns["sample_times"](n, "uniform", torch.device("cpu")).double()
        logit_normal = ns["sample_times"](n, "logit_normal", torch.device("cpu")).double()
    assert ((uniform >= 0) & (uniform < 1)).all(), "uniform times outside [0, 1)"
    assert ((logit_normal > 0) & (logit_normal < 1)).all(), "logit-normal times outside (0, 1)"
    assert abs(uniform.mean().item() - 0.5) <= SIGMAS * math.sqrt(1 / 12 / n), "uniform: mean not 1/2"
    # the variance of (t - 1/2)^2 is 1/80 - 1/144 = 1/180
    assert abs(uniform.var().item() - 1 / 12) <= SIGMAS * math.sqrt(1 / 180 / n), "uniform: variance not 1/12"
    logit = torch.log(logit_normal / (1 - logit_normal))  # N(0, 1) for Esser et al.'s logit-normal (m = 0, s = 1)
    assert abs(logit.mean().item()) <= SIGMAS / math.sqrt(n), f"logit-normal: logit mean {logit.mean().item():.3g}"
    assert abs(logit.std().item() - 1) <= SIGMAS / math.sqrt(2 * n), f"logit-normal: logit std {logit.std().item():.3g}"


def test_sample_times_are_uniform_or_logit_normal(flow: dict) -> None:
    """"uniform": t ~ U[0, 1) (mean 1/2, variance 1/12); "logit_normal": logit(t) ~ N(0, 1) (Esser et al. 2024,
    Section 3.1). Controls: rand for randn in the logit-normal draw, randn for rand in the uniform one."""
    check_times(flow)
    for old, new in [("torch.sigmoid(torch.randn(n,", "torch.sigmoid(torch.rand(n,"),
                     ("torch.rand(n, device=device)", "torch.randn(n, device=device)")]:
        assert fails(check_times, load(FLOW, ("sample_times", old, new))), new


class ConditionalVelocity(nn.Module):
    """The exact conditional velocity of the straight path to known data x1 (Lipman et al. Eq. 21, sigma_min = 0):
    u_t(x | x1) = (x1 - x) / (1 - t), in float64, with t read from the network's input t * time_scale."""

    def __init__(self, x1: torch.Tensor, time_scale: float) -> None:
        super().__init__()
        self.x1, self.time_scale, self.largest, self.t_max = x1, time_scale, 0.0, 0.0

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        t = t.double().view(-1, 1, 1, 1) / self.time_scale
        out = (self.x1 - x.double()) / (1 - t)
        self.largest, self.t_max = max(self.largest, out.abs().max().item()), max(self.t_max, t.max().item())
        return out


def check_flow_loss(ns: dict, t_sampling: str) -> None:
    # a power of two: t * time_scale and back is exact in float32, so the stand-in sees the loss's own t
    cfg = types.SimpleNamespace(t_sampling=t_sampling, p_uncond=0.5, time_scale=1024.0)
    x1 = torch.rand(512, 1, 4, 4, generator=gen(13), dtype=torch.float64) * 2 - 1
    net = ConditionalVelocity(x1, cfg.time_scale)
    with torch.random.fork_rng():
        torch.manual_seed(14)
        loss = ns["flow_matching_loss"](net, x1, torch.zeros(512, dtype=torch.long), cfg, NULL).item()
    # the output's float32 rounding (u |out|), and float64 rounding of x_t divided by 1 - t
    tol = (2 * U32 * net.largest + 8 * U64 * (2 + net.largest) / (1 - net.t_max)) ** 2
    assert loss <= tol, f"{t_sampling}: loss {loss:.3g} for the exact conditional velocity"


@pytest.mark.parametrize("t_sampling", ["uniform", "logit_normal"])
def test_flow_matching_loss_is_zero_for_the_conditional_velocity(flow: dict, t_sampling: str) -> None:
    """Eq. 23 vanishes for the field (x1 - x) / (1 - t): x_t = (1 - t) x0 + t x1 (Eq. 22, t = 0 noise, t = 1 data, as
    the Model section states), target x1 - x0, and the network shown t * time_scale. Controls: the path reversed
    (x_t = t x0 + (1 - t) x1), the target negated (x0 - x1), the time scale dropped."""
    check_flow_loss(flow, t_sampling)
    for old, new in [("(1 - tt) * x0 + tt * x1", "tt * x0 + (1 - tt) * x1"), ("x1 - x0)", "x0 - x1)"),
                     ("t * cfg.time_scale", "t")]:
        assert fails(check_flow_loss, load(FLOW, ("flow_matching_loss", old, new)), t_sampling), new


class FixedOutput(nn.Module):
    def __init__(self, out: torch.Tensor) -> None:
        super().__init__()
        self.out = out

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.out


def check_clip(ns: dict) -> None:
    cfg = types.SimpleNamespace(clip_x1=True, time_scale=1024.0)
    y = torch.zeros(3, dtype=torch.long)
    x = torch.randn(3, 1, 4, 4, generator=gen(15))
    target = torch.rand(3, 1, 4, 4, generator=gen(16)) * 1.8 - 0.9  # inside [-1, 1]
    for t in (0.0, 0.25, 0.875):  # dyadic: exact in float32
        v = (target - x) / (1 - t)
        got = ns["velocity"](FixedOutput(v), x, t, y, 0.0, NULL, cfg)
        tol = 8 * U32 * (1 + v.abs().max().item())  # x + (1 - t) v and back: a few roundings of |v|
        assert_within(got, v, tol, f"clip of a velocity pointing inside [-1, 1], t = {t}")
        wild = 4 * torch.randn(3, 1, 4, 4, generator=gen(17))  # points far outside [-1, 1]
        got = ns["velocity"](FixedOutput(wild), x, t, y, 0.0, NULL, cfg)
        landing = (x + (1 - t) * wild).clamp(-1, 1)
        assert_within(x + (1 - t) * got, landing, 8 * U32 * (1 + wild.abs().max().item()), f"clipped landing, t = {t}")
    wild = 4 * torch.randn(3, 1, 4, 4, generator=gen(17))
    assert torch.equal(ns["velocity"](FixedOutput(wild), x, 1.0, y, 0.0, NULL, cfg), wild), "no clip at t = 1"


def test_velocity_clip_keeps_velocities_that_point_inside_the_data_range(flow: dict) -> None:
    """The clip (clip_x1) replaces v by (clip(x + (1 - t) v) - x) / (1 - t): unchanged when the image it points at,
    x + (1 - t) v, is inside [-1, 1]; landing exactly on the clipped image otherwise; not applied at t = 1.
    Control: the image aimed at with t instead of 1 - t."""
    check_clip(flow)
    control = load(FLOW, ("velocity", "(x + (1 - t) * v).clamp(-1, 1)", "(x + t * v).clamp(-1, 1)"))
    assert fails(check_clip, control)


def check_transport(ns: dict, solver: str, nfe: int, shift: float) -> None:
    cfg = types.SimpleNamespace(clip_x1=True, time_scale=1000.0, time_shift=shift)
    x1 = torch.rand(2, 1, 28, 28, generator=gen(18), dtype=torch.float64) * 1.8 - 0.9
    net = ConditionalVelocity(x1, cfg.time_scale)  # the marginal field when the data is the one image x1
    steps = nfe if solver == "euler" else (nfe + 1) // 2
    out, kept = ns["ode_sample"](net, torch.zeros(2, dtype=torch.long), nfe, solver, 0.0, NULL, cfg, gen(19),
                                 list(range(steps + 1)))
    x0 = torch.randn(2, 1, 28, 28, generator=gen(19)).double()  # the sampler's noise, replayed
    grid = ns["time_grid"](steps, shift)
    assert len(kept) == steps + 1 and torch.equal(kept[-1], out)
    big = x0.abs().max().item() + x1.abs().max().item()
    for k, (t, x) in enumerate(zip(grid, kept)):
        # float32 state and t: a few roundings per step, not amplified (the field pulls errors back onto the line)
        assert_within(x, (1 - t) * x0 + t * x1, 8 * U32 * big * (k + 1),
                      f"{solver} {nfe}, shift {shift}: x at t = {t:.3f}")


@pytest.mark.parametrize(("solver", "nfe"), [("euler", 1), ("euler", 4), ("heun", 1), ("heun", 7)])
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_ode_solvers_carry_noise_along_the_straight_line_to_one_target(flow: dict, solver: str, nfe: int,
                                                                       shift: float) -> None:
    """Where the data is a single image x1, the field is (x1 - x) / (1 - t) and its paths are the straight lines
    (1 - t) x0 + t x1 at constant speed: Euler and Heun follow them exactly, every grid point on the line, ending at
    x1 (one Euler step suffices: the Reflow section's 'a straight trajectory is integrated exactly by one Euler
    step'). Controls: a uniform step 1/K on the shifted grid; Heun's corrector evaluated at t instead of t_next."""
    check_transport(flow, solver, nfe, shift)
    if shift == 3.0 and nfe > 1:
        old, new = (("h = t_next - t", "h = 1 / steps") if solver == "euler" else
                    ("velocity(model, x_trial, t_next,", "velocity(model, x_trial, t,"))
        assert fails(check_transport, load(FLOW, ("ode_sample", old, new)), solver, nfe, shift), new


def check_grid(ns: dict) -> None:
    for steps in (1, 5, 20):
        even = [k / steps for k in range(steps + 1)]
        assert ns["time_grid"](steps, 1.0) == pytest.approx(even, abs=4 * U64), "shift 1: evenly spaced"
        for shift in (0.5, 3.0):
            grid = ns["time_grid"](steps, shift)
            assert len(grid) == steps + 1 and grid[0] == 0.0 and grid[-1] == 1.0
            assert all(a < b for a, b in zip(grid, grid[1:]))
            for t, s in zip(grid[1:-1], even[1:-1]):
                assert (t < s) == (shift > 1), "shift > 1 puts every point closer to the noise end, t = 0"
                # the odds t / (1 - t), i.e. signal over noise scale on this path, are divided by the shift
                assert t / (1 - t) == pytest.approx(s / (1 - s) / shift, rel=1e-12)


def test_time_grid_runs_from_0_to_1_and_its_shift_divides_the_odds(flow: dict) -> None:
    """0 = t_0 < ... < t_K = 1; shift 1 is evenly spaced; shift > 1 moves every interior point towards the noise
    (t = 0), as the docstring says, by dividing t / (1 - t) by the shift. Control: the shift applied the other way
    (towards the data)."""
    check_grid(flow)
    control = load(FLOW, ("time_grid", "s / (s + shift * (1 - s))", "shift * s / (shift * s + (1 - s))"))
    assert fails(check_grid, control)


def check_straightness(ns: dict) -> None:
    k, b = 100, 64  # the notebook measures along 100-step Euler paths
    z0 = torch.randn(b, 2, generator=gen(20), dtype=torch.float64)
    z1 = torch.randn(b, 2, generator=gen(21), dtype=torch.float64)
    s = torch.linspace(0, 1, k + 1, dtype=torch.float64).view(-1, 1, 1)
    chord2 = (z1 - z0).pow(2).sum(-1).mean().item()
    midpoint = 1 / 3 - 1 / (3 * k ** 2)  # mean over steps of (1 - 2 t_mid)^2: the midpoint rule on int (1 - 2t)^2
    straight = ns["straightness"](z0 + s * (z1 - z0))
    # rounding of the points, ~u |z|, divided by the step 1/K, squared
    assert straight <= (8 * U64 * k * (1 + z0.abs().max().item() + z1.abs().max().item())) ** 2, straight
    assert ns["straightness"](z0 + s ** 2 * (z1 - z0)) == pytest.approx(chord2 * midpoint, rel=1e-9), \
        "a straight path at changing speed: S = mean ||z1 - z0||^2 (1/3 - 1/(3K^2))"
    a = torch.randn(b, generator=gen(22), dtype=torch.float64).view(1, -1)
    arc = torch.stack([s.view(-1, 1).expand(-1, b), a * s.view(-1, 1) * (1 - s.view(-1, 1))], dim=-1)
    assert ns["straightness"](arc) == pytest.approx(a.pow(2).mean().item() * midpoint, rel=1e-9), \
        "the arc (t, a t (1 - t)): S = mean a^2 (1/3 - 1/(3K^2))"


def test_straightness_is_zero_only_for_straight_constant_speed_paths(flow: dict) -> None:
    """Liu et al.'s S(Z) = int E ||(Z_1 - Z_0) - dZ_t/dt||^2 dt along K-step paths: 0 for a straight path at constant
    speed, and exactly mean ||z1 - z0||^2 (1/3 - 1/(3K^2)) for the same line at speed 2t, mean a^2 (1/3 - 1/(3K^2))
    for the arc (t, a t (1 - t)). Control: the step displacement taken for the velocity (no factor K = 1/h)."""
    check_straightness(flow)
    control = load(FLOW, ("straightness", "(path[1:] - path[:-1]) * steps", "(path[1:] - path[:-1])"))
    assert fails(check_straightness, control)


def check_independent(x0: torch.Tensor, x1: torch.Tensor) -> None:
    n = x0.shape[0]
    assert abs(x0.mean(0)).max().item() <= SIGMAS / math.sqrt(n), "noise of mean 0"
    cov = torch.cov(x0.T)
    assert_within(cov, torch.eye(2), SIGMAS * math.sqrt(2 / n), "noise of covariance I")
    cross = ((x0 - x0.mean(0)).T @ (x1 - x1.mean(0))) / n  # (2, 2) covariance of noise with data
    assert_within(cross, torch.zeros(2, 2), SIGMAS * x1.std(0).view(1, 2) / math.sqrt(n), "noise-data covariance")


def check_coupling(draw: Callable, z0: torch.Tensor, z1: torch.Tensor) -> None:
    a, b = draw(5_000, gen(24))
    rows = torch.cdist(a, z0).argmin(1)
    assert torch.equal(a, z0[rows]) and torch.equal(b, z1[rows]), "each drawn pair is one row of the coupling"
    assert len(set(rows.tolist())) > len(z0) // 2, "rows drawn at random from the whole coupling"


def test_independent_pairs_are_uncorrelated_and_reflow_pairs_keep_their_rows(flow: dict) -> None:
    """independent_pairs (Eq. 23's pairs): standard normal noise, uncorrelated with its two-moons points (five
    standard errors on 20,000 pairs); reflow_pairs draws whole rows of its fixed coupling (z0, z1) (Liu et al.'s
    reflow). Controls: the reflow coupling z1 = phi(z0) fails the independence check, as it must; a reflow_pairs
    drawing z0 and z1 with two indices breaks the rows."""
    x0, x1 = flow["independent_pairs"](20_000, gen(23))
    assert x0.shape == x1.shape == (20_000, 2)
    check_independent(x0.double(), x1.double())
    z0 = torch.randn(1_000, 2, generator=gen(25))
    z1 = 0.5 * z0 + flow["two_moons"](1_000, gen(26))  # a coupling in which z1 depends on z0
    check_coupling(flow["reflow_pairs"](z0, z1), z0, z1)
    coupled = flow["reflow_pairs"](z0, z1)(20_000, gen(27))
    assert fails(check_independent, *(p.double() for p in coupled))
    control = load(FLOW, ("reflow_pairs", "return x0[idx], x1[idx]",
                          "return x0[idx], x1[torch.randint(len(x1), (n,), generator=gen)]"))
    assert fails(check_coupling, control["reflow_pairs"](z0, z1), z0, z1)
