"""The initialisation, the deep MLP, the per-layer statistics, the data pipeline and the bookkeeping helpers of
image_classification/training_deep_nets do what the notebook's prose, Glorot and Bengio 2010 and He et al. 2015 say.
(Its optimisers, schedules, batch norm and learning-rate sweep are tests/test_training_deep_nets.py's.)

Checked, each on the notebook's own code:

- `init_std` is 1 for "naive" (N(0, 1)), sqrt(2 / (n_in + n_out)) for "xavier" (Eq. 2: the variance of Glorot and
  Bengio's uniform Eq. 16, drawn from a normal here) and sqrt(2 / n_in) for "he" (Eq. 3, He et al.'s Eq. 10), the
  three names of Config.inits.
- `deep_mlp` draws every linear layer's weights, the output layer's included, with the variance of its scheme (the
  mean square of the weights within a chi-square bound) and zero biases; builds `depth` hidden layers of `width`,
  784 -> ... -> 10, each [Linear, norm, activation, dropout] in Eq. 1's order, with the notebook's BatchNorm
  (bn_momentum, bn_eps), LayerNorm (bn_eps) and Dropout(p) where asked; and starts every network of a comparison from
  the same weights: the same for every activation, norm and dropout, the same standard-normal draws scaled by the
  scheme's std for every scheme, whatever the global random state, and others for another seed.
- `layer_stats` reports, per hidden layer, the std of the activation h_l = phi(z_l) and of dL/dW_l, as recomputed
  here from the weights alone.
- The lesson of section 1a, on the `full` preset's 20 x 512 ReLU network: with He init the variance of h_l stays
  within a constant factor across depth, and with Glorot/Xavier it halves per layer, each within a statistical bound
  for a finite width (the log of one layer's factor has variance 5 / width).
- `standardise` is (x / 255 - mean) / std of each image's pixels in row-major order, and gives the split whose
  statistics it gets zero mean and unit variance.
- `epoch_order` is a permutation fixed by (seed, epoch) alone (not by the global generator or the cache), another
  for another epoch or seed; `get_batch` pages through it: an epoch's batches are full and disjoint, labels stay with
  their images, the next epoch is reshuffled, and the batch (augmented too) is a function of the step; the epoch
  orders, the augmentations and the initial weights of seeds 0, 1, 2 and 1337 never share a random stream.
- `augment` returns each image flipped left-right or not and shifted by at most `max_shift` pixels, the uncovered
  border black (the batch's darkest value, not 0), about half of the images flipped and every shift drawn.
- `ranking` is best first, ties in their order, diverged (None) last; `spread` is (mean, min, max) of the runs that
  did not diverge; `best_of` picks the highest validation accuracy; `val_accuracy_or_chance` counts a diverged run as
  chance (0.1); `lr_area` is the mean accuracy above chance over log10(lr): 0 for a variant that never learns, 0.9
  for one at 100% everywhere; `weight_norm` is the L2 norm of the linear layers' weights alone, None if diverged.

Each check is paired with a control broken in exactly the way the check guards against, which must fail that very
check (pytest.raises(AssertionError, match=the check's message)). The controls are the notebook's code with one
exact string replaced (it must occur exactly once, so a control breaks loudly when the notebook changes): He from
the fan-out, Glorot's uniform bound taken as the std, "naive" as N(0, 0.01^2); deep_mlp with its arguments to
init_std swapped, with PyTorch's default init left in place, with its biases left random, one layer short, with its
input size left at 784, with the norm after the nonlinearity, with dropout only before the classifier or given the
keep probability, with BatchNorm's momentum and eps swapped, unseeded, with a fixed seed; layer_stats recording z_l
instead of h_l, or the gradients of the wrong layers; He without ReLU's factor 2 (LeCun's std) and Glorot's bound as
the std in the depth experiment; standardise without the / 255, or flattening column-major; epoch_order from the
global generator, ignoring the epoch, ignoring the seed; get_batch without reshuffling, with overlapping batches,
with unshuffled labels, augmenting from the global generator or from an unseeded one (the same draws at every step)
or from step t's epoch order's stream, and the seeding before 30 November 2026 (a seed's initial weights drawn
from an epoch order's stream);
augment with circular or zero padding, a vertical flip, over-wide padding, no flip, one shift per batch; ranking
worst first or with diverged runs as 0; spread with diverged runs as 0, or (0, 0, 0) when all diverged; best_of
taking the lowest; lr_area over the grid index, without the division by the decades, with diverged runs as 0;
weight_norm over every parameter, or ignoring divergence.

Tolerances: statistical checks allow Z = 5 standard deviations (a false alarm with chance below about 1e-6, the
derivation beside each); exact properties are checked exactly, float arithmetic to within a rounding bound written
next to it. Every random draw is seeded (its own torch.Generator, or the global one inside torch.random.fork_rng).
Small tensors and networks on the CPU (the largest, the full preset's 20 x 512 MLP, a few times on 64 inputs); no data
set is read and nothing is written.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from common import host_to_device, stream_seed
from notebook_cells import notebook_functions, preset_config
from test_preset_seed_device import first_draws

NOTEBOOK = (Path(__file__).resolve().parent.parent / "image_classification" / "training_deep_nets"
            / "training_deep_nets.ipynb")
NAMES = ("BatchNorm", "init_std", "deep_mlp", "layer_stats", "standardise", "epoch_order", "augment", "get_batch",
         "ranking", "val_accuracy_or_chance", "lr_area", "weight_norm", "spread", "best_of")
ASSIGNMENTS = ("ACTIVATIONS", "NORMS")  # module-level constants deep_mlp and layer_stats read
CPU = torch.device("cpu")
Z = 5.0  # statistical bounds: 5 standard deviations, a two-sided chance of about 6e-7 of a false alarm
EPS32 = torch.finfo(torch.float32).eps
EPS64 = torch.finfo(torch.float64).eps
Edit = tuple[str, str, str]


# --- the notebook's code, and controls made from it ---------------------------------------------------------------

def load(*edits: Edit, torch_module: Any = torch) -> dict[str, Any]:
    """The notebook's NAMES and ASSIGNMENTS executed in a fresh namespace; each edit (name, old, new) replaces the one
    occurrence of `old` in `name` (a control, broken in exactly that way; the other functions use the broken one).
    `torch_module` is what the code sees as `torch` (a stand-in that logs, say)."""
    namespace = {"torch": torch_module, "nn": nn, "F": F, "math": math, "functools": functools,
                 "stream_seed": stream_seed, "host_to_device": host_to_device}
    return notebook_functions(NOTEBOOK, *NAMES, *ASSIGNMENTS, namespace=namespace, edits=edits)


@pytest.fixture(scope="module")
def nb() -> dict[str, Any]:
    return load()


@functools.lru_cache(maxsize=None)
def preset(name: str) -> Any:
    """The notebook's Config as the preset `name` sets it."""
    return preset_config(NOTEBOOK, name)


def config(name: str = "smoke", **changes: Any) -> Any:
    return dataclasses.replace(preset(name), **changes)


def build(ns: dict, cfg: Any, global_seed: int = 0, **kw: Any) -> nn.Sequential:
    """ns's deep_mlp(cfg, CPU, **kw), the global generator (which nn.Linear's own init draws from) seeded with
    `global_seed` inside fork_rng, so nothing leaks out."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(global_seed)
        return ns["deep_mlp"](cfg, CPU, **kw)


def linears(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


# --- init_std: Eqs. 2-3 ---------------------------------------------------------------------------------------------

def paper_variance(scheme: str, n_in: int, n_out: int) -> float:
    """The weight variance of Eq. 2 (Glorot and Bengio), Eq. 3 (He et al.'s Eq. 10) and N(0, 1), written here."""
    return {"naive": 1.0, "xavier": 2.0 / (n_in + n_out), "he": 2.0 / n_in}[scheme]


SHAPES = [(784, 128), (128, 128), (512, 10), (784, 32), (3, 1000)]


def check_init_std(init_std) -> None:
    """init_std(scheme, n_in, n_out)^2 equals the paper's variance for each scheme of Config.inits. The std is
    sqrt(one rounded quotient), squared here: at most 4 roundings of float64, so within 4 eps64 relative."""
    assert set(config().inits) == {"naive", "xavier", "he"}, "Config.inits names other schemes"
    messages = {"naive": "naive is not N(0, 1)", "xavier": "Glorot variance is not 2 / (n_in + n_out)",
                "he": "He variance is not 2 / n_in"}
    for scheme, message in messages.items():
        for n_in, n_out in SHAPES:
            variance = init_std(scheme, n_in, n_out) ** 2
            assert abs(variance / paper_variance(scheme, n_in, n_out) - 1) <= 4 * EPS64, message


@pytest.mark.parametrize(("old", "new", "message"), [
    ('"he": math.sqrt(2.0 / n_in)', '"he": math.sqrt(2.0 / n_out)', "He variance"),  # fan-out He
    ("2.0 / (n_in + n_out)", "6.0 / (n_in + n_out)", "Glorot variance"),  # Eq. 16's uniform bound taken as the std
    ('"naive": 1.0', '"naive": 0.01', "naive"),  # the "small random numbers" N(0, 0.01^2), not torch.randn's
], ids=["he-fan-out", "glorot-bound-as-std", "naive-0.01"])
def test_init_std_is_eq_2_and_eq_3(nb: dict, old: str, new: str, message: str) -> None:
    check_init_std(nb["init_std"])
    with pytest.raises(AssertionError, match=message):
        check_init_std(load(("init_std", old, new))["init_std"])


# --- deep_mlp: the initial weights ----------------------------------------------------------------------------------

def check_initial_weights(model: nn.Module, scheme: str) -> None:
    """Every linear layer, the output layer included: biases exactly 0, and the N = n_in * n_out weights iid
    N(0, sigma^2) with the paper's sigma^2, so mean(w^2) / sigma^2 is chi^2_N / N, of mean 1 and standard deviation
    sqrt(2 / N): within Z of them (N >= 640 here, where chi^2_N is close to normal)."""
    for layer in linears(model):
        assert torch.count_nonzero(layer.bias) == 0, "bias is not zero"
        w = layer.weight.detach().double()
        ratio = w.pow(2).mean().item() / paper_variance(scheme, layer.in_features, layer.out_features)
        assert abs(ratio - 1) <= Z * math.sqrt(2 / w.numel()), \
            f"weight variance of {layer} is {ratio:.3g} x the scheme's"


WEIGHT_CFG = {"depth": 3, "width": 64}  # 784 -> 64 -> 64 -> 64 -> 10: fan-in and fan-out differ at both ends
SCHEMES = ("naive", "xavier", "he")


@pytest.mark.parametrize("scheme", SCHEMES)
def test_deep_mlp_draws_each_schemes_variance_and_zero_biases(nb: dict, scheme: str) -> None:
    """Control: the scheme never applied, PyTorch's default init left in place (variance 1 / (3 n_in), uniform)."""
    cfg = config(**WEIGHT_CFG)
    check_initial_weights(build(nb, cfg, init=scheme), scheme)
    default = load(("deep_mlp", "layer.weight.normal_(0.0, init_std(init, layer.in_features, layer.out_features), "
                                "generator=gen)", "pass"))
    with pytest.raises(AssertionError, match="weight variance"):
        check_initial_weights(build(default, cfg, init=scheme), scheme)


def test_deep_mlp_he_uses_each_layers_fan_in_and_zeroes_biases(nb: dict) -> None:
    """Controls: init_std called with the layer's fan-out for its fan-in (He from the fan-out: 784 / 64 times too
    large at the input layer), and biases left at PyTorch's random default."""
    cfg = config(**WEIGHT_CFG)
    check_initial_weights(build(nb, cfg, init="he"), "he")
    swapped = load(("deep_mlp", "init_std(init, layer.in_features, layer.out_features)",
                    "init_std(init, layer.out_features, layer.in_features)"))
    with pytest.raises(AssertionError, match="weight variance"):
        check_initial_weights(build(swapped, cfg, init="he"), "he")
    random_bias = load(("deep_mlp", "layer.bias.zero_()", "pass"))
    with pytest.raises(AssertionError, match="bias is not zero"):
        check_initial_weights(build(random_bias, cfg, init="he"), "he")


# --- deep_mlp: the layers (Eq. 1) -----------------------------------------------------------------------------------

def check_structure(ns: dict, model: nn.Sequential, cfg: Any, act: str, norm: str, dropout: float) -> None:
    """784 -> depth x [Linear, norm, phi, dropout] -> 10: depth + 1 linear layers of the right sizes, one Dropout(p)
    after each hidden nonlinearity, the notebook's BatchNorm (bn_momentum, bn_eps) or LayerNorm (bn_eps), in Eq. 1's
    order h_l = phi(norm(z_l))."""
    sizes = [(m.in_features, m.out_features) for m in linears(model)]
    assert len(sizes) == cfg.depth + 1, f"depth: {len(sizes) - 1} hidden layers, not {cfg.depth}"
    assert sizes == [(784, cfg.width)] + [(cfg.width, cfg.width)] * (cfg.depth - 1) + [(cfg.width, 10)], "width"
    drops = [m for m in model if isinstance(m, nn.Dropout)]
    assert len(drops) == (cfg.depth if dropout > 0 else 0) and all(m.p == dropout for m in drops), "dropout"
    norms = [m for m in model if isinstance(m, (ns["BatchNorm"], nn.LayerNorm, nn.BatchNorm1d))]
    if norm == "batchnorm":
        settings = {(type(m), m.momentum, m.eps) for m in norms}
        assert settings == {(ns["BatchNorm"], cfg.bn_momentum, cfg.bn_eps)}, "norm settings"
    if norm == "layernorm":
        assert {(type(m), m.eps, m.normalized_shape) for m in norms} == {(nn.LayerNorm, cfg.bn_eps, (cfg.width,))}, \
            "norm settings"
    norm_type = {"none": [], "batchnorm": [ns["BatchNorm"]], "layernorm": [nn.LayerNorm]}[norm]
    block = [nn.Linear, *norm_type, ns["ACTIVATIONS"][act], *([nn.Dropout] if dropout > 0 else [])]
    assert [type(m) for m in model] == block * cfg.depth + [nn.Linear], "order"


CASES = [("relu", "none", 0.0), ("sigmoid", "none", 0.0), ("tanh", "none", 0.0), ("gelu", "none", 0.0),
         ("relu", "batchnorm", 0.0), ("relu", "layernorm", 0.0), ("relu", "none", 0.2), ("relu", "none", 0.5)]


@pytest.mark.parametrize(("act", "norm", "dropout"), CASES, ids=[f"{a}-{n}-{p:g}" for a, n, p in CASES])
def test_deep_mlp_builds_eq_1s_layers(nb: dict, act: str, norm: str, dropout: float) -> None:
    cfg = config()
    assert act in cfg.activations and norm in cfg.norms and dropout in (0.0, *config("quick").dropouts)
    check_structure(nb, build(nb, cfg, act=act, norm=norm, dropout=dropout), cfg, act, norm, dropout)


NORM_AFTER_ACT = ("deep_mlp", "            layers.append(NORMS[norm](cfg.width, cfg))\n"
                              "        layers.append(ACTIVATIONS[act]())",
                  "            pass\n        layers.append(ACTIVATIONS[act]())\n"
                  "        if norm != \"none\":\n            layers.append(NORMS[norm](cfg.width, cfg))")
STRUCTURE_CONTROLS = {
    "one-layer-short": (("deep_mlp", "for _ in range(cfg.depth):", "for _ in range(cfg.depth - 1):"),
                        ("relu", "none", 0.0), "depth"),
    "norm-after-phi": (NORM_AFTER_ACT, ("relu", "batchnorm", 0.0), "order"),
    "input-size-not-updated": (("deep_mlp", "        n_in = cfg.width\n", ""), ("relu", "none", 0.0), "width"),
    "dropout-before-classifier-only": (("deep_mlp", "if dropout > 0:", "if dropout > 0 and _ == cfg.depth - 1:"),
                                       ("relu", "none", 0.5), "dropout"),
    "dropout-keep-probability": (("deep_mlp", "nn.Dropout(dropout)", "nn.Dropout(1 - dropout)"),
                                 ("relu", "none", 0.2), "dropout"),
    "bn-momentum-eps-swapped": (("NORMS", "BatchNorm(n, cfg.bn_momentum, cfg.bn_eps)",
                                 "BatchNorm(n, cfg.bn_eps, cfg.bn_momentum)"), ("relu", "batchnorm", 0.0),
                                "norm settings"),
}


@pytest.mark.parametrize("control", list(STRUCTURE_CONTROLS))
def test_the_structure_check_catches(control: str) -> None:
    edit, (act, norm, dropout), message = STRUCTURE_CONTROLS[control]
    ns, cfg = load(edit), config()
    with pytest.raises(AssertionError, match=message):
        check_structure(ns, build(ns, cfg, act=act, norm=norm, dropout=dropout), cfg, act, norm, dropout)


# --- deep_mlp: every run of a comparison starts from the same weights -----------------------------------------------

def check_same_start(ns: dict, cfg: Any) -> None:
    """Every activation, norm and dropout gives the very same weights, each built under another global random state;
    across schemes they are the same standard-normal draws times the scheme's std (each weight one
    float32 product z * std: within 4 eps32 relative after the division here, which adds none); another seed gives
    other weights."""
    def weights(global_seed: int, **kw: Any) -> list[torch.Tensor]:
        return [m.weight.detach().double() for m in linears(build(ns, cfg, global_seed, **kw))]

    ref = weights(0)  # ReLU, He, no norm, no dropout
    for k, (act, norm, p) in enumerate([(a, n, p) for a in cfg.activations for n in cfg.norms for p in (0.0, 0.5)]):
        assert all(torch.equal(a, b) for a, b in zip(ref, weights(k + 1, act=act, norm=norm, dropout=p))), \
            "not the same initial weights"
    draws = [w / math.sqrt(paper_variance("he", w.shape[1], w.shape[0])) for w in ref]
    for k, scheme in enumerate(cfg.inits):
        z = [w / math.sqrt(paper_variance(scheme, w.shape[1], w.shape[0])) for w in weights(100 + k, init=scheme)]
        assert all(((a - b).abs() <= 4 * EPS32 * b.abs()).all() for a, b in zip(z, draws)), \
            "not the same initial weights"
    other = [m.weight.detach() for m in linears(build(ns, dataclasses.replace(cfg, seed=cfg.seed + 1)))]
    assert all(not torch.equal(a.double(), b) for a, b in zip(other, weights(0))), "the seed does not set the weights"


def test_every_run_of_a_comparison_starts_from_the_same_weights(nb: dict) -> None:
    """Controls: an unseeded deep_mlp (the global generator), and one whose generator ignores cfg.seed."""
    cfg = config(depth=3, width=16)
    check_same_start(nb, cfg)
    with pytest.raises(AssertionError, match="not the same initial weights"):
        check_same_start(load(("deep_mlp", 'gen = torch.Generator().manual_seed(stream_seed(cfg.seed, "init"))',
                               "gen = None")), cfg)
    with pytest.raises(AssertionError, match="the seed does not set the weights"):
        check_same_start(load(("deep_mlp", "stream_seed(cfg.seed, ", "stream_seed(0, ")), cfg)


# --- layer_stats ------------------------------------------------------------------------------------------------------

def gaussian_batch(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 784) float64 standard-normal inputs (unit variance, like the standardised images) and (n,) labels."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 784, generator=gen, dtype=torch.float64), torch.randint(0, 10, (n,), generator=gen)


def check_layer_stats(ns: dict, act: str) -> None:
    """layer_stats of a float64 network without norm equals, per hidden layer l, the std of h_l = phi(W_l h_{l-1} +
    b_l) and of dL/dW_l, recomputed here from the weights (Eq. 1, Eq. 6). The two differ only in the order of
    float64 roundings: through at most depth + 1 products of <= 784 terms, relatively far below 1e-9."""
    cfg = config()
    model = build(ns, cfg, act=act, init="he" if act == "relu" else "xavier").double()
    x, y = gaussian_batch(64, seed=3)
    act_std, grad_std = ns["layer_stats"](model, x, y)
    layers = linears(model)
    weights = [layer.weight.detach().clone().requires_grad_(True) for layer in layers]
    phi = {"relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid, "gelu": F.gelu}[act]
    h, hidden = x, []
    for w, layer in zip(weights[:-1], layers[:-1]):
        h = phi(h @ w.T + layer.bias.detach())
        hidden.append(h.std().item())
    loss = F.cross_entropy(h @ weights[-1].T + layers[-1].bias.detach(), y)
    grads = [g.std().item() for g in torch.autograd.grad(loss, weights[:-1])]
    assert len(act_std) == cfg.depth and all(math.isclose(a, b, rel_tol=1e-9) for a, b in zip(act_std, hidden)), \
        "not the std of the activations h_l"
    assert len(grad_std) == cfg.depth and all(math.isclose(a, b, rel_tol=1e-9) for a, b in zip(grad_std, grads)), \
        "not the std of dL/dW_l of the hidden layers"


@pytest.mark.parametrize("act", ["relu", "tanh"])
def test_layer_stats_reports_the_std_of_h_l_and_of_dl_dw_l(nb: dict, act: str) -> None:
    """Controls: the pre-activations z_l recorded (and the logits with them), and the gradients of layers 2 to the
    output layer instead of layers 1 to depth."""
    check_layer_stats(nb, act)
    with pytest.raises(AssertionError, match="not the std of the activations"):
        check_layer_stats(load(("layer_stats", "if isinstance(layer, tuple(ACTIVATIONS.values())):",
                                "if isinstance(layer, nn.Linear):")), act)
    with pytest.raises(AssertionError, match="not the std of dL/dW_l"):
        check_layer_stats(load(("layer_stats", "[:-1]", "[1:]")), act)


# --- section 1a: the variance of h_l through a deep ReLU network ----------------------------------------------------

def check_variance_factor(act_std: list[float], width: int, factor: float) -> None:
    """Given h_{l-1}, each unit of z_l = W_l h_{l-1} is N(0, sigma^2 |h_{l-1}|^2), independently, so a ReLU layer
    multiplies the mean square of h by F = (n sigma^2 / 2) * (2 / n) sum_j xi_j, xi_j = g_j^2 1{g_j > 0} with mean 1/2
    and variance 5/4: E F = n sigma^2 / 2 = `factor`, Var(log F) ~ 5 / n, E log F ~ log(factor) - 5 / (2n)
    (summed over layers: beta = 5 sum 1/n_l; averaging over a batch can only lower the variance). Over layers 1 -> l, with
    beta = 5 (l - 1) / n: |log(v_l / v_1) - (l - 1) log(factor)| <= Z sqrt(beta) + beta, the last beta covering the
    mean's drift and that of the std (what layer_stats reports) against the root mean square (a constant 1 - 1/pi of
    it for a zero-mean Gaussian z_l, moved by the spread of |h| across the batch, itself of variance <= beta)."""
    v = [s * s for s in act_std]
    for l in range(2, len(v) + 1):
        beta = 5 * (l - 1) / width
        drift = math.log(v[l - 1] / v[0]) - (l - 1) * math.log(factor)
        assert abs(drift) <= Z * math.sqrt(beta) + beta, \
            f"activation variance: layer {l} is {math.exp(drift):.3g} x the predicted {factor:g}^{l - 1} of layer 1's"


def relu_stats(ns: dict, scheme: str, seed: int) -> list[float]:
    """layer_stats' activation stds of the full preset's ReLU network (20 x 512) under `scheme`, in float64 on 64
    Gaussian inputs (the smoke preset's stats_batch)."""
    cfg = config("full", seed=seed)
    model = build(ns, cfg, act="relu", init=scheme).double()
    return ns["layer_stats"](model, *gaussian_batch(config().stats_batch, seed=11))[0]


@pytest.mark.parametrize(("scheme", "factor", "control"), [
    ("he", 1.0, ('"he": math.sqrt(2.0 / n_in)', '"he": math.sqrt(1.0 / n_in)')),  # LeCun's std: no ReLU factor 2
    ("xavier", 0.5, ("2.0 / (n_in + n_out)", "6.0 / (n_in + n_out)")),  # Glorot's uniform bound as the std: 3/2
], ids=["he-keeps-it", "xavier-halves-it"])
def test_he_keeps_the_activation_variance_and_xavier_halves_it_per_relu_layer(
        nb: dict, scheme: str, factor: float, control: tuple[str, str]) -> None:
    """Eq. 3's point (n sigma^2 / 2 = 1: flat across depth) and section 1a's "ReLU under Xavier loses half its
    variance per layer" (n sigma^2 / 2 = 1/2 between the 512-unit layers), for the notebook's seed and the next.
    Control: the scheme's variance off by the factor each derivation is about, which moves the per-layer factor to
    1/2 (He without ReLU's 2) or 3/2 (Glorot's bound), 19 layers over."""
    width = config("full").width
    for seed in (0, 1):
        check_variance_factor(relu_stats(nb, scheme, seed), width, factor)
    with pytest.raises(AssertionError, match="activation variance"):
        check_variance_factor(relu_stats(load(("init_std", *control)), scheme, 0), width, factor)


# --- standardise ------------------------------------------------------------------------------------------------------

def check_standardise(standardise) -> None:
    """(N, 1, 28, 28) uint8 -> (N, 784) float32 (x / 255 - mean) / std, each image's pixels in row-major order (the
    order augment's (28, 28) view assumes). float32 rounds x / 255 (|x / 255| <= 1), mean (<= 1), the difference and
    the quotient once each: within eps32 (|out| + 3 / std) of the float64 value. With the images' own statistics
    (float32 reductions of 12,544 values, relative error ~ log2(n) eps32 ~ 2e-6), mean 0 and std 1 within 1e-5."""
    gen = torch.Generator().manual_seed(5)
    x = torch.randint(0, 256, (16, 1, 28, 28), generator=gen, dtype=torch.uint8)
    x[:, :, :14] //= 4  # darker top halves: the row order matters
    flat = x.reshape(16, -1).float() / 255
    mean, std = flat.mean().item(), flat.std().item()
    out = standardise(x, mean, std)
    ref = (x.double().view(16, 784) / 255 - mean) / std
    assert out.shape == (16, 784) and out.dtype == torch.float32, "shape"
    assert ((out.double() - ref).abs() <= EPS32 * (ref.abs() + 3 / std)).all(), "not (x / 255 - mean) / std, row-major"
    assert abs(out.double().mean().item()) < 1e-5 and abs(out.double().std().item() - 1) < 1e-5, "not standardised"


@pytest.mark.parametrize(("old", "new"), [
    ("x_u8.reshape(len(x_u8), -1).float() / 255", "x_u8.reshape(len(x_u8), -1).float()"),
    ("x_u8.reshape(len(x_u8), -1)", "x_u8.transpose(2, 3).reshape(len(x_u8), -1)"),
], ids=["no-divide-by-255", "column-major"])
def test_standardise_is_x_over_255_less_mean_over_std(nb: dict, old: str, new: str) -> None:
    check_standardise(nb["standardise"])
    with pytest.raises(AssertionError, match="not \\(x / 255 - mean\\) / std"):
        check_standardise(load(("standardise", old, new))["standardise"])


# --- epoch_order and get_batch ----------------------------------------------------------------------------------------

def check_epoch_order(epoch_order) -> None:
    """A permutation of range(n), the same from a cleared cache under another global random state (a resumed run in a
    new process), another for the next epoch and for another seed (two uniform permutations of 1,000 agree with
    chance 1 / 1000!)."""
    n = 1000
    clear = getattr(epoch_order, "cache_clear", lambda: None)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        first = epoch_order(n, 0, 0).clone()
        clear()
        torch.manual_seed(2)
        again = epoch_order(n, 0, 0).clone()
    assert torch.equal(first.sort().values, torch.arange(n)), "not a permutation"
    assert torch.equal(first, again), "not fixed by (seed, epoch)"
    assert not torch.equal(first, epoch_order(n, 0, 1)), "not reshuffled each epoch"
    assert not torch.equal(first, epoch_order(n, 1, 0)), "the seed does not set the order"


@pytest.mark.parametrize(("old", "new", "message"), [
    ('torch.randperm(n, generator=torch.Generator().manual_seed(stream_seed(seed, f"epoch {epoch}")))',
     "torch.randperm(n)", "not fixed by"),
    ('f"epoch {epoch}"', '"epoch"', "not reshuffled"),
    ("stream_seed(seed, ", "stream_seed(0, ", "the seed does not set"),
], ids=["global-generator", "epoch-ignored", "seed-ignored"])
def test_epoch_order_is_a_permutation_fixed_by_seed_and_epoch(nb: dict, old: str, new: str, message: str) -> None:
    check_epoch_order(nb["epoch_order"])
    with pytest.raises(AssertionError, match=message):
        check_epoch_order(load(("epoch_order", old, new))["epoch_order"])


def check_get_batch(get_batch, cfg: Any) -> None:
    """Rows that carry their index (x[r] = r, label r): over the n // B steps of an epoch the batches are full and
    disjoint (every image once per epoch, the last n mod B left out), each label is its image's, the next epoch
    visits the rows in another order (chance 1 / (5B)! of the same), and a step's batch does not depend on the calls
    before it or on the global generator."""
    n, b = 5 * cfg.batch_size + 3, cfg.batch_size
    x, y = torch.arange(n, dtype=torch.float32)[:, None].expand(n, 784), torch.arange(n)
    epochs = []
    for epoch in range(2):
        rows = []
        for step in range(5 * epoch, 5 * epoch + 5):
            xb, yb = get_batch(step, x, y, cfg)
            assert xb.shape == (b, 784) and yb.shape == (b,), "not a full batch"
            assert torch.equal(xb[:, 0].long(), yb), "labels are not their images'"
            rows += yb.tolist()
        assert len(set(rows)) == len(rows) == 5 * b, "an image repeats within an epoch"
        epochs.append(rows)
    assert epochs[0] != epochs[1], "not reshuffled each epoch"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(9)
        later = get_batch(7, x, y, cfg)[1]
    assert torch.equal(later, torch.tensor(epochs[1][2 * b:3 * b])), "the batch is not fixed by the step"


@pytest.mark.parametrize(("old", "new", "message"), [
    ("epoch, i = divmod(step, per_epoch)", "epoch, i = 0, step % per_epoch", "not reshuffled"),
    ("[i * cfg.batch_size:(i + 1) * cfg.batch_size]", "[i:i + cfg.batch_size]", "repeats within an epoch"),
    ("xb, yb = x[rows], y[rows]", "xb, yb = x[rows], y[i * cfg.batch_size:(i + 1) * cfg.batch_size]",
     "labels are not"),
], ids=["same-order-every-epoch", "overlapping-batches", "labels-not-shuffled"])
def test_get_batch_pages_through_the_epoch_order(nb: dict, old: str, new: str, message: str) -> None:
    cfg = config(batch_size=8)
    check_get_batch(nb["get_batch"], cfg)
    with pytest.raises(AssertionError, match=message):
        check_get_batch(load(("get_batch", old, new))["get_batch"], cfg)


# --- augment ------------------------------------------------------------------------------------------------------

BLACK = -0.8125  # black after standardisation, (0 - mean) / std (about -0.81 for Fashion-MNIST), not 0; dyadic, so
# that augment's (x - black) + black gives the codes back exactly and copies can be compared bit for bit
CODES = 1.0 + torch.arange(784, dtype=torch.float64)  # pixel (r, c) of the coordinate image holds 1 + 28 r + c


def coordinate_batch(k: int) -> torch.Tensor:
    """k copies of the coordinate image, then one black image: the batch's darkest value, which augment fills with."""
    return torch.cat([CODES.expand(k, 784), torch.full((1, 784), BLACK, dtype=torch.float64)])


def candidate(flip: int, a: int, b: int) -> torch.Tensor:
    """The coordinate image flipped left-right (flip = 1) or not, then shifted so that output pixel (r, c) shows the
    flipped image's (r + a, c + b), BLACK where that lies outside: (784,)."""
    img = CODES.view(28, 28).flip(1) if flip else CODES.view(28, 28)
    out = torch.full((28, 28), BLACK, dtype=torch.float64)
    rows, cols = slice(max(0, -a), 28 - max(0, a)), slice(max(0, -b), 28 - max(0, b))
    out[rows, cols] = img[max(0, a):28 - max(0, -a), max(0, b):28 - max(0, -b)]
    return out.reshape(784)


def locate(out: torch.Tensor) -> list[tuple[int, int, int]] | None:
    """For each coordinate image that augment returned, the (flip, a, b) whose candidate it equals exactly; None if
    one equals none. The centre pixel (14, 14) shows source pixel (14 + a, 14 + b), or (14 + a, 13 - b) flipped, and
    its right neighbour the next column (+1) or the one before (-1, flipped): that names the one candidate to
    compare with (shifts of up to 13 pixels keep the centre in view)."""
    centre, right = (out[:, 14 * 28 + 14] - 1).long(), (out[:, 14 * 28 + 15] - 1).long()
    found = []
    for image, c, step in zip(out, centre.tolist(), (right - centre).tolist()):
        if c < 0 or step not in (1, -1):
            return None
        flip, a = int(step == -1), c // 28 - 14
        b = 13 - c % 28 if flip else c % 28 - 14
        if not torch.equal(image, candidate(flip, a, b)):
            return None
        found.append((flip, a, b))
    return found


def check_augment(augment, max_shift: int = 2, k: int = 512) -> None:
    """Each of k coordinate images comes out as exactly one (flip, shift) of it, the border filled with BLACK; every
    shift within max_shift; the number flipped within Z sqrt(k) / 2 of k / 2 (Binomial(k, 1/2)); and each of the
    (2 s + 1)^2 shifts drawn (a uniform shift misses one of 25 with chance <= 25 (24/25)^512, 2e-8)."""
    out = augment(coordinate_batch(k), max_shift, torch.Generator().manual_seed(0))
    assert out.shape == (k + 1, 784), "shape"
    found = locate(out[:k])
    assert found is not None, "not a left-right flipped, shifted copy filled with black"
    assert all(abs(a) <= max_shift and abs(b) <= max_shift for _, a, b in found), "shift beyond max_shift"
    flipped = sum(flip for flip, _, _ in found)
    assert abs(flipped - k / 2) <= Z * math.sqrt(k) / 2, f"{flipped} of {k} flipped, not about half"
    shifts = {(a, b) for _, a, b in found}
    assert len(shifts) == (2 * max_shift + 1) ** 2, f"only {len(shifts)} shifts drawn, not every one"


AUGMENT_CONTROLS = {
    "circular-padding": ("F.pad(img - black, (s, s, s, s))", 'F.pad(img - black, (s, s, s, s), mode="circular")',
                         "not a left-right flipped"),
    "zero-fill": ("F.pad(img - black, (s, s, s, s)) + black", "F.pad(img, (s, s, s, s))", "not a left-right flipped"),
    "vertical-flip": ("img.flip(2)", "img.flip(1)", "not a left-right flipped"),
    "padding-too-wide": ("F.pad(img - black, (s, s, s, s))", "F.pad(img - black, (2 * s, 2 * s, 2 * s, 2 * s))",
                         "shift beyond max_shift"),
    "never-flips": ("< 0.5", "< 0.0", "not about half"),
    "one-shift-per-batch": ("(2, b)", "(2, 1)", "not every one"),
}


@pytest.mark.parametrize("control", list(AUGMENT_CONTROLS))
def test_augment_flips_and_shifts_with_black_fill(nb: dict, control: str) -> None:
    check_augment(nb["augment"])
    old, new, message = AUGMENT_CONTROLS[control]
    with pytest.raises(AssertionError, match=message):
        check_augment(load(("augment", old, new))["augment"])


def check_augmented_batches(get_batch, cfg: Any) -> None:
    """Augmented, a step's batch has the unaugmented batch's labels and is fixed by the step (not by the global
    generator), and consecutive steps draw other flips and shifts: on a split of identical coordinate images, the
    batches of steps 0 and 1 differ (chance 1 / 50^B of the same 50 (flip, shift) draws)."""
    n = 4 * cfg.batch_size
    x, y = coordinate_batch(n)[:n].float(), torch.arange(n)
    x[:, 0] = BLACK  # every image has a black pixel, as standardised images do
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        first = get_batch(0, x, y, cfg, augmented=True)
        torch.manual_seed(2)
        again = get_batch(0, x, y, cfg, augmented=True)
    assert torch.equal(first[1], get_batch(0, x, y, cfg)[1]), "labels are not the batch's"
    assert torch.equal(first[0], again[0]), "the augmentation is not fixed by the step"
    assert not torch.equal(first[0], get_batch(1, x, y, cfg, augmented=True)[0]), "the same augmentation every step"


@pytest.mark.parametrize(("new", "message"), [
    ("torch.default_generator", "not fixed by the step"),
    ("torch.Generator()", "the same augmentation every step"),
], ids=["global-generator", "unseeded-generator"])
def test_get_batch_augments_from_a_generator_seeded_by_the_step(nb: dict, new: str, message: str) -> None:
    cfg = config(batch_size=8)
    check_augmented_batches(nb["get_batch"], cfg)
    broken = load(("get_batch", 'torch.Generator().manual_seed(stream_seed(cfg.seed, f"augmentation {step}"))', new))
    with pytest.raises(AssertionError, match=message):
        check_augmented_batches(broken["get_batch"], cfg)


class SeedLog(torch.Generator):
    """A torch.Generator that logs every seed it is given (in `seeds`, shared by all instances)."""

    seeds: list[int] = []

    def manual_seed(self, seed: int) -> torch.Generator:
        SeedLog.seeds.append(int(seed))
        return super().manual_seed(seed)


class TorchWithSeedLog:
    """torch, except that torch.Generator is SeedLog: what the notebook's functions see in place of torch."""

    Generator = SeedLog

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)


def check_streams_apart(ns: dict, cfg: Any, seeds: tuple[int, ...] = (0, 1, 2, 1337), k: int = 100) -> None:
    """The epoch orders of epochs 0..k-1, the augmentations of steps 0..k-1 and the initial weights of the seeds
    `seeds` all draw from different random streams: no step's flips and shifts repeat an epoch's shuffle, and no
    seed's initial weights repeat another seed's shuffle (section 3 trains seeds 0, 1, 2). The epoch orders' and the
    initialisation's seeds are logged by SeedLog, the augmentations' read from the generator `augment` is given; with
    a split of one batch, step t is epoch t."""
    x, y = torch.zeros(cfg.batch_size, 784), torch.zeros(cfg.batch_size, dtype=torch.long)
    augment, flips, streams = ns["augment"], [], {}
    ns["augment"] = lambda xb, max_shift, gen: flips.append(gen.initial_seed()) or augment(xb, max_shift, gen)
    try:
        for seed in seeds:
            run = dataclasses.replace(cfg, seed=seed)
            ns["epoch_order"].cache_clear()
            SeedLog.seeds, flips[:] = [], []
            for epoch in range(k):
                ns["epoch_order"](len(x), seed, epoch)
            streams.update({first_draws(s): f"seed {seed}'s epoch order" for s in SeedLog.seeds})
            for step in range(k):
                ns["get_batch"](step, x, y, run, augmented=True)
            augmentations = {first_draws(s) for s in flips}
            assert not augmentations & set(streams), f"an augmentation draws an epoch order's random stream ({seed})"
            streams.update({d: f"seed {seed}'s augmentation" for d in augmentations})
            SeedLog.seeds = []
            build(ns, dataclasses.replace(run, depth=1, width=4))
            init = {first_draws(s) for s in SeedLog.seeds}
            assert not init & set(streams), f"seed {seed}'s initial weights draw {streams[min(init & set(streams))]}"
            streams.update({d: f"seed {seed}'s initial weights" for d in init})
        assert len(streams) == len(seeds) * (2 * k + 1), "a stream repeats within the epoch orders or augmentations"
    finally:
        ns["augment"] = augment


@pytest.mark.parametrize(("edits", "message"), [
    ((("get_batch", 'f"augmentation {step}"', 'f"epoch {step}"'),), "draws an epoch order's random stream"),
    ((("deep_mlp", 'stream_seed(cfg.seed, "init")', "cfg.seed"),
      ("epoch_order", 'stream_seed(seed, f"epoch {epoch}")', "seed * 100_003 + epoch")),
     "initial weights draw seed 0's epoch order"),
], ids=["augmentation-named-like-the-epoch", "seeded-as-before-2026-11-30"])
def test_epoch_orders_augmentations_and_initial_weights_never_share_a_random_stream(edits: tuple, message: str) -> None:
    """Controls: the augmentation of step t named like epoch t's stream; and the seeding before 30 November 2026
    (the initial weights from `seed`, epoch e's order from seed * 100_003 + e), under which seed 0's initial weights
    were its own epoch-0 shuffle's stream and seed 1's were seed 0's epoch-1 shuffle's."""
    cfg = config(batch_size=4, max_shift=2)
    check_streams_apart(load(torch_module=TorchWithSeedLog()), cfg)
    with pytest.raises(AssertionError, match=message):
        check_streams_apart(load(*edits, torch_module=TorchWithSeedLog()), cfg)


# --- ranking, spread, best_of -------------------------------------------------------------------------------------

def check_ranking(ranking) -> None:
    """Best first (ties in their given order), diverged (None) after every score, even a zero one."""
    scores = {"sgd": 0.80, "adam": None, "nesterov": 0.84, "momentum": 0.80, "rmsprop": 0.0, "adamw": None}
    order = ranking(scores)
    assert [k for k in order if scores[k] is not None] == ["nesterov", "sgd", "momentum", "rmsprop"], "not best first"
    assert order[4:] == ["adam", "adamw"], "diverged runs are not last"


@pytest.mark.parametrize(("old", "new", "message"), [
    (", reverse=True)", ")", "not best first"),
    ("-1.0 if scores[k] is None", "0.0 if scores[k] is None", "diverged runs are not last"),
], ids=["worst-first", "diverged-as-zero"])
def test_ranking_is_best_first_with_diverged_runs_last(nb: dict, old: str, new: str, message: str) -> None:
    check_ranking(nb["ranking"])
    with pytest.raises(AssertionError, match=message):
        check_ranking(load(("ranking", old, new))["ranking"])


def check_spread(spread) -> None:
    """(mean, min, max) over the seeds that did not diverge (the mean of three decimals: their own roundings, two
    additions and a division, within 4 eps64 relative); None when every seed diverged."""
    mean, low, high = spread([0.80, None, 0.86, 0.83])
    assert math.isclose(mean, 0.83, rel_tol=4 * EPS64) and (low, high) == (0.80, 0.86), \
        "not the mean, min and max of the runs that did not diverge"
    assert spread([0.5]) == (0.5, 0.5, 0.5), "not the mean, min and max of the runs that did not diverge"
    assert spread([None, None]) is None and spread([]) is None, "every run diverged: not None"


@pytest.mark.parametrize(("old", "new", "message"), [
    ("ok = [v for v in values if v is not None]", "ok = [0.0 if v is None else v for v in values]",
     "runs that did not diverge"),
    ("if ok else None", "if ok else (0.0, 0.0, 0.0)", "every run diverged"),
], ids=["diverged-as-zero", "all-diverged-as-zero"])
def test_spread_leaves_diverged_seeds_out(nb: dict, old: str, new: str, message: str) -> None:
    check_spread(nb["spread"])
    with pytest.raises(AssertionError, match=message):
        check_spread(load(("spread", old, new))["spread"])


def run(accuracy: float | None) -> dict[str, Any]:
    """A run summary as fresh_run makes it: a diverged run has no validation accuracy."""
    return {"diverged": accuracy is None, "val_accuracy": accuracy}


def check_best_of(best_of) -> None:
    """The key of the highest final validation accuracy; a diverged run is never chosen over one that learned."""
    candidates = {"dropout 0.2": (run(0.74), None), "dropout 0.5": (run(None), None),
                  "dropout 0.1": (run(0.76), None), "dropout 0.3": (run(0.71), None)}
    assert best_of(candidates) == "dropout 0.1", "not the highest validation accuracy"
    assert best_of({"a": (run(None), None), "b": (run(0.11), None)}) == "b", "not the highest validation accuracy"


def test_best_of_picks_the_highest_validation_accuracy(nb: dict) -> None:
    """Control: the lowest instead (min for max)."""
    check_best_of(nb["best_of"])
    with pytest.raises(AssertionError, match="not the highest validation accuracy"):
        check_best_of(load(("best_of", "return max(", "return min("))["best_of"])


# --- val_accuracy_or_chance and lr_area (section 2's learning-rate range) ------------------------------------------

def runs_of(prefix: str, accuracy: dict[float, float | None]) -> dict[str, dict]:
    """Section 2's runs as lr_area reads them: f"{prefix}@{lr:g}" -> summary."""
    return {f"{prefix}@{lr:g}": run(acc) for lr, acc in accuracy.items()}


def check_lr_area(ns: dict) -> None:
    """A diverged run counts as chance, 0.1; lr_area is 0 for a variant that never learns (diverged or at chance
    everywhere), 0.9 for one at 100% everywhere (the Section 2 prose), and the mean over log10(lr) of the accuracy
    above chance: for an accuracy linear in log10(lr) on an uneven grid the trapezoids are exact, the value at the
    middle of the log range. A sum of <= 7 float64 terms of size <= 1: within 1e-12."""
    assert ns["val_accuracy_or_chance"](run(None)) == 0.1 and ns["val_accuracy_or_chance"](run(0.83)) == 0.83, \
        "a diverged run does not count as chance"
    lr_area, grid = ns["lr_area"], config("quick").norm_lrs  # 0.003, 0.01, ..., 3: half decades of 0.52 and 0.48
    for accuracy in (None, 0.1):
        assert abs(lr_area(runs_of("x", dict.fromkeys(grid, accuracy)), "x", grid)) <= 1e-12, "never learns, not 0"
    assert abs(lr_area(runs_of("x", dict.fromkeys(grid, 1.0)), "x", grid) - 0.9) <= 1e-12, "100% everywhere, not 0.9"
    for lrs in (grid, (0.001, 0.003, 0.1, 1.0)):
        line = {lr: 0.6 + 0.1 * math.log10(lr) for lr in lrs}
        middle = 0.6 + 0.1 * (math.log10(lrs[0]) + math.log10(lrs[-1])) / 2 - 0.1
        assert abs(lr_area(runs_of("bn", line), "bn", lrs) - middle) <= 1e-12, "not the mean over log10(lr)"


@pytest.mark.parametrize(("edit", "message"), [
    (("val_accuracy_or_chance", 'return 0.1 if run["diverged"]', 'return 0.0 if run["diverged"]'), "chance"),
    (("lr_area", "x = [math.log10(lr) for lr in lrs]", "x = list(range(len(lrs)))"), "not the mean over log10"),
    (("lr_area", " / (x[-1] - x[0])", ""), "100% everywhere"),
], ids=["diverged-as-zero", "grid-index-not-log-lr", "not-divided-by-the-decades"])
def test_lr_area_is_the_mean_accuracy_above_chance_over_log_lr(nb: dict, edit: Edit, message: str) -> None:
    check_lr_area(nb)
    with pytest.raises(AssertionError, match=message):
        check_lr_area(load(edit))


# --- weight_norm ----------------------------------------------------------------------------------------------------

def check_weight_norm(ns: dict) -> None:
    """The L2 norm of the linear layers' weights alone (biases and batch-norm scales set non-zero here, to count if
    counted), in float64: a sum of m squares within m eps64 relative (Higham's bound for a sum of positive terms,
    with room for the square root); None for a diverged run."""
    model = build(ns, config(depth=3, width=16), norm="batchnorm").double()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.fill_(2.0)  # biases and BatchNorm's gamma, beta
    weights = torch.cat([m.weight.detach().reshape(-1) for m in linears(model)])
    expected = weights.pow(2).sum().sqrt().item()
    assert math.isclose(ns["weight_norm"](model, run(0.8)), expected, rel_tol=weights.numel() * EPS64), \
        "not the norm of the linear layers' weights"
    assert ns["weight_norm"](model, run(None)) is None, "a diverged run has a weight norm"


@pytest.mark.parametrize(("old", "new", "message"), [
    ("m.weight.detach().pow(2).sum().item() for m in model.modules() if isinstance(m, nn.Linear)",
     "p.detach().pow(2).sum().item() for p in model.parameters()", "linear layers' weights"),
    ("return None", "pass", "a diverged run has a weight norm"),
], ids=["every-parameter", "divergence-ignored"])
def test_weight_norm_is_the_linear_weights_l2_norm(nb: dict, old: str, new: str, message: str) -> None:
    check_weight_norm(nb)
    with pytest.raises(AssertionError, match=message):
        check_weight_norm(load(("weight_norm", old, new)))
