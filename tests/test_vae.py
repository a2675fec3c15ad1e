"""The VAE notebook's lesson code (image_generation/vae) computes what its prose and Kingma and Welling 2013 say:

- the networks: each encoder (the convolutional one and the paper's MLP) splits its last layer into mean and
  log-variance, (B, J) each, and each decoder gives one 28x28 logit image per code; the VAE decodes a
  reparameterised sample of q(z | x), not its mean;
- `reparameterise` (Eq. 10): its samples have mean mu and standard deviation exp(logvar / 2), and the gradient
  reaches mu with dz/dmu = 1 and logvar with dz/dlogvar = sigma * eps / 2;
- `negative_elbo`: its KL term is the analytic KL(N(mu, diag sigma^2) || N(0, I)) of torch.distributions
  (Appendix B), and its reconstruction term the Bernoulli negative log-likelihood of the grey levels summed over
  the 784 pixels; `gaussian_log_prob` is the log-density of a diagonal Gaussian;
- `iw_log_weights`: with a decoder that ignores z and q = p(z) (then the exact posterior), every weight is log p(x);
  with q away from the prior, the weights average to log p(x) - KL(q || p), the ELBO's Jensen gap; every sample is
  paired with its own image, at every chunk size;
- `iw_bounds`: -L_1 is the expected negative ELBO, and -L_k falls with k while staying above the NLL (Burda et al.);
- `wake_sleep_losses`: the wake loss sends gradients only to the decoder and the sleep loss only to the encoder; the
  wake loss is AEVB's reconstruction term at the same draw of z, the sleep loss -log q(z | x~) of a binary dream.

Each check is paired with a control broken in exactly the way the check guards against, which must fail it: most
are the notebook's own source with one exact string replaced (the string must occur exactly once, so a control
that no longer matches the notebook fails loudly): an encoder that splits the batch instead of the features, a
decoder of the wrong size, a VAE that decodes the mean, std exp(logvar) instead of exp(logvar / 2), a sample with no
path for gradients, sigma^2 taken as exp(2 logvar), the KL without its -1, the pixels averaged instead of summed, a
Gaussian without its log-variance term, a weight without -log q, importance samples drawn with the wrong std,
images paired with the wrong samples (repeat_interleave, or a reshape for the transpose), a bound without its
-log k or with the mean of the log-weights for the log of their mean, a wake phase whose code carries gradients, a
sleep phase that dreams the mean image (the notebook's own `mean_dream=True` control), and a wake phase that decodes
the mean code.

Tolerances: rounding checks use the bound on a rounded sum (`rounding_bound`), computed from the very terms summed;
Monte Carlo checks allow 5 standard errors, estimated from the same samples, and the controls miss by far more.
Every random draw is seeded. Small tensors, nothing written anywhere.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Normal, kl_divergence

from common import fp32_exact
from notebook_cells import notebook_functions

NOTEBOOK = Path(__file__).resolve().parent.parent / "image_generation" / "vae" / "vae.ipynb"
NAMES = ("Encoder", "Decoder", "VAE", "conv_vae", "reparameterise", "negative_elbo", "gaussian_log_prob",
         "iw_log_weights", "iw_bounds", "PaperEncoder", "PaperDecoder", "wake_sleep_losses")
CPU = torch.device("cpu")
MC_SE = 5.0  # Monte Carlo checks allow 5 standard errors: a correct estimator misses by more with probability < 1e-6


# --- the notebook's code, and controls made from it ---

def load(name: str | None = None, old: str = "", new: str = "") -> dict:
    """The notebook's NAMES executed in a fresh namespace. With `name`, a control: that function or class with the one
    occurrence of `old` replaced by `new`; the other functions use the broken one."""
    return notebook_functions(NOTEBOOK, *NAMES, namespace={"torch": torch, "nn": nn, "F": F, "math": math,
                                                           "fp32_exact": fp32_exact},
                              edits=[(name, old, new)] if name is not None else [])


@pytest.fixture(scope="module")
def ns() -> dict:
    return load()


# --- helpers ---

def rounding_bound(terms: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A bound on the rounding error of a sum over the last dimension of `terms`, computed in `dtype`:
    gamma_n * sum |terms| with gamma_n = n u / (1 - n u), u the unit roundoff and n the number of terms plus 8 for the
    few roundings inside each term (exp, log, products); Higham, Accuracy and Stability of Numerical Algorithms,
    Eq. 4.4. Pass as terms the largest intermediate quantities the computation forms, not only its final summands."""
    u = torch.finfo(dtype).eps / 2
    n = terms.shape[-1] + 8
    return n * u / (1 - n * u) * terms.detach().double().abs().sum(-1)


def bernoulli_log_prob(x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Per-pixel log p(x | y) = x log y + (1 - x) log(1 - y) with y = sigmoid(logits) (the Data section's formula), in
    float64."""
    x, logits = x.double(), logits.double()
    return x * F.logsigmoid(logits) + (1 - x) * F.logsigmoid(-logits)


def bce_terms(logits: torch.Tensor) -> torch.Tensor:
    """Per image, the magnitudes of what binary_cross_entropy_with_logits forms for each pixel ((1 - x) l, max(-l, 0)
    and a log1p-exp below log 2): |l| + 1, flattened to (B, pixels); for `rounding_bound`."""
    return logits.detach().double().abs().flatten(1) + 1


def grey_images(n: int, seed: int, size: int = 28) -> torch.Tensor:
    """(n, 1, size, size) grey levels in [0, 1], with some exact 0s and 1s as MNIST has."""
    x = torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(seed))
    return torch.where(x < 0.3, torch.zeros_like(x), torch.where(x > 0.8, torch.ones_like(x), x))


def iw_draws(k: int, chunk: int, shape: tuple[int, ...]) -> torch.Tensor:
    """The noise iw_log_weights draws from the global generator: torch.randn(m, *shape) per chunk of m samples,
    concatenated (k, B, J). Chunks of different sizes draw different numbers (the CPU generator fills a tensor in
    blocks), so each chunk size has its own reference."""
    return torch.cat([torch.randn(min(chunk, k - start), *shape) for start in range(0, k, chunk)])


class FixedEncoder(nn.Module):
    """An encoder whose q(z | x) is given: (mu, logvar), one row per image or one row for every image, whatever x is."""

    def __init__(self, mu: torch.Tensor, logvar: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mu", mu)
        self.register_buffer("logvar", logvar)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mu.expand(len(x), -1), self.logvar.expand(len(x), -1)


class ConstantDecoder(nn.Module):
    """A decoder that ignores z: the same logits for every code. Then p(x | z) = p(x) for every z, so log p(x) is known
    exactly and the posterior p(z | x) is the prior."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("logits", logits)  # (1, 1, H, W)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(len(z), *self.logits.shape[1:])


class LinearDecoder(nn.Module):
    """Logits z A + c: a decoder that depends on z and whose rounding is easy to bound."""

    def __init__(self, latent_dim: int, seed: int) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("a", torch.randn(latent_dim, 784, generator=gen, dtype=torch.float64))
        self.register_buffer("c", torch.randn(784, generator=gen, dtype=torch.float64))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return (z @ self.a + self.c).view(-1, 1, 28, 28)


# --- the networks ---

ENCODERS = {"conv": lambda ns, j: ns["Encoder"](j, 4, 16), "paper": lambda ns, j: ns["PaperEncoder"](j, 16)}
DECODERS = {"conv": lambda ns, j: ns["Decoder"](j, 4, 16), "paper": lambda ns, j: ns["PaperDecoder"](j, 16)}
DECODER_BUGS = {"conv": ("Decoder", "nn.ConvTranspose2d(c, 1, 4, stride=2, padding=1)",
                         "nn.ConvTranspose2d(c, 1, 4, stride=2, padding=2)"),  # 26x26 images
                "paper": ("PaperDecoder", "nn.Unflatten(1, (1, 28, 28))", "nn.Unflatten(1, (28, 28))")}


def check_encoder(encoder: nn.Module, latent_dim: int) -> None:
    """Four images -> mu and logvar of shape (4, J), the first and second halves of the last layer's output."""
    x = grey_images(4, seed=1)
    mu, logvar = encoder(x)
    out = encoder.net(x)  # (B, 2J)
    assert mu.shape == logvar.shape == (4, latent_dim), "shape"
    assert torch.equal(mu, out[:, :latent_dim]) and torch.equal(logvar, out[:, latent_dim:]), "halves"


@pytest.mark.parametrize("kind", ["conv", "paper"])
def test_encoders_split_their_last_layer_into_mean_and_log_variance(ns: dict, kind: str) -> None:
    """Controls: the output chunked along the batch (dim=0) instead of the features, and the two halves swapped."""
    name = {"conv": "Encoder", "paper": "PaperEncoder"}[kind]
    torch.manual_seed(0)
    check_encoder(ENCODERS[kind](ns, 3), 3)
    broken = load(name, "self.net(x).chunk(2, dim=1)", "self.net(x).chunk(2, dim=0)")
    torch.manual_seed(0)
    with pytest.raises(AssertionError, match="shape"):
        check_encoder(ENCODERS[kind](broken, 3), 3)
    swapped = load(name, "mu, logvar = self.net(x).chunk(2, dim=1)", "logvar, mu = self.net(x).chunk(2, dim=1)")
    torch.manual_seed(0)
    with pytest.raises(AssertionError, match="halves"):
        check_encoder(ENCODERS[kind](swapped, 3), 3)


def check_decoder(decoder: nn.Module, latent_dim: int) -> None:
    """Five codes -> five 1x28x28 logit images."""
    logits = decoder(torch.randn(5, latent_dim, generator=torch.Generator().manual_seed(2)))
    assert logits.shape == (5, 1, 28, 28), "shape"


@pytest.mark.parametrize("kind", ["conv", "paper"])
def test_decoders_give_one_28x28_logit_image_per_code(ns: dict, kind: str) -> None:
    """Control: a decoder whose last layer gives the wrong image size (26x26 from the convolutions, 28x28 without the
    channel from the MLP)."""
    torch.manual_seed(0)
    check_decoder(DECODERS[kind](ns, 3), 3)
    broken = load(*DECODER_BUGS[kind])
    torch.manual_seed(0)
    with pytest.raises(AssertionError, match="shape"):
        check_decoder(DECODERS[kind](broken, 3), 3)


def check_vae_decodes_a_sample(namespace: dict) -> None:
    """The VAE's logits are the decoder's at z = mu + sigma * eps, eps the next draw of the global generator."""
    torch.manual_seed(0)
    vae = namespace["conv_vae"](4, 4, 16).double()
    x = grey_images(3, seed=3).double()
    torch.manual_seed(7)
    logits, mu, logvar = vae(x)
    torch.manual_seed(7)
    eps = torch.randn(3, 4, dtype=torch.float64)
    assert vae.latent_dim == 4 and mu.shape == logvar.shape == (3, 4) and logits.shape == (3, 1, 28, 28)
    # the same arithmetic on the same numbers, so bit for bit
    assert torch.equal(logits, vae.decoder(mu + torch.exp(0.5 * logvar) * eps)), "not the decoded sample"


def test_the_vae_decodes_a_reparameterised_sample_not_the_mean(ns: dict) -> None:
    """Control: a VAE that decodes the mean code, a plain autoencoder."""
    check_vae_decodes_a_sample(ns)
    with pytest.raises(AssertionError, match="not the decoded sample"):
        check_vae_decodes_a_sample(load("VAE", "z = reparameterise(mu, logvar)", "z = mu"))


# --- the reparameterisation trick ---

MU = torch.tensor([0.5, -2.0, 3.0], dtype=torch.float64)
LOGVAR = torch.tensor([-1.0, 0.7, 1.6], dtype=torch.float64)  # none 0: exp(logvar) and exp(logvar / 2) differ


def check_moments(reparameterise) -> None:
    """N samples of q = N(MU, diag exp(LOGVAR)): the sample mean within 5 standard errors sigma / sqrt(N) of MU, the
    sample std within 5 standard errors sigma / sqrt(2N) (that of a normal sample's std) of exp(LOGVAR / 2)."""
    n = 200_000
    torch.manual_seed(0)
    z = reparameterise(MU.expand(n, -1), LOGVAR.expand(n, -1))  # (N, 3)
    sigma = torch.exp(0.5 * LOGVAR)
    assert ((z.mean(0) - MU).abs() < MC_SE * sigma / math.sqrt(n)).all(), "mean"
    assert ((z.std(0) - sigma).abs() < MC_SE * sigma / math.sqrt(2 * n)).all(), "std"


def test_reparameterise_samples_mean_mu_and_std_exp_half_logvar(ns: dict) -> None:
    """Control: the standard deviation taken as exp(logvar), the variance's place."""
    check_moments(ns["reparameterise"])
    with pytest.raises(AssertionError, match="std"):
        check_moments(load("reparameterise", "torch.exp(0.5 * logvar)", "torch.exp(logvar)")["reparameterise"])


def check_gradients(reparameterise) -> None:
    """z = mu + sigma * eps with eps the global generator's next draw; for an upstream gradient g, mu receives g
    (exactly: an addition passes it on) and logvar g * sigma * eps / 2 (to within the rounding of 4 products)."""
    mu, logvar = MU.clone().requires_grad_(), LOGVAR.clone().requires_grad_()
    torch.manual_seed(1)
    z = reparameterise(mu, logvar)
    torch.manual_seed(1)
    eps = torch.randn(3, dtype=torch.float64)
    sigma = torch.exp(0.5 * LOGVAR)
    g = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    z.backward(g)
    expected = g * 0.5 * sigma * eps
    assert torch.equal(mu.grad, g), "gradient of mu"
    assert ((logvar.grad - expected).abs() <= 8 * torch.finfo(torch.float64).eps * expected.abs()).all(), "of logvar"
    assert torch.equal(z.detach(), MU + sigma * eps), "sample"


def test_reparameterise_passes_gradients_to_mu_and_logvar(ns: dict) -> None:
    """Control: a sample of the same distribution drawn by torch.normal, which has no path for gradients (its
    backward returns zeros): it passes the moment check above and must fail this one."""
    check_gradients(ns["reparameterise"])
    broken = load("reparameterise", "mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)",
                  "torch.normal(mu, torch.exp(0.5 * logvar))")["reparameterise"]
    check_moments(broken)
    with pytest.raises(AssertionError, match="gradient of mu"):
        check_gradients(broken)


# --- the objective ---

def check_kl(negative_elbo) -> None:
    """negative_elbo's KL term against KL(N(mu, diag exp(logvar)) || N(0, I)) from torch.distributions, in float64 on
    the fp32-rounded inputs the notebook computes with, to within the rounding of its fp32 sum of 4J terms."""
    gen = torch.Generator().manual_seed(4)
    mu = 2 * torch.randn(6, 5, generator=gen, dtype=torch.float64)
    logvar = 6 * torch.rand(6, 5, generator=gen, dtype=torch.float64) - 4  # variances e^-4 to e^2
    x = grey_images(6, seed=5)
    _, kl = negative_elbo(x, torch.zeros(6, 1, 28, 28), mu, logvar)
    mu32, logvar32 = mu.float().double(), logvar.float().double()
    expected = kl_divergence(Normal(mu32, torch.exp(0.5 * logvar32)), Normal(0.0, 1.0)).sum(1)
    terms = torch.cat([mu32.square(), logvar32.exp(), torch.ones_like(mu32), logvar32], 1) / 2  # (B, 4J)
    assert kl.shape == (6,) and kl.dtype == torch.float32
    assert ((kl.double() - expected).abs() <= rounding_bound(terms, torch.float32)).all(), "not the analytic KL"
    zero = negative_elbo(x[:1], torch.zeros(1, 1, 28, 28), torch.zeros(1, 5), torch.zeros(1, 5))[1]
    assert zero.item() == 0.0, "q = p(z) has no KL"


@pytest.mark.parametrize("old, new", [("logvar.float().exp()", "(2 * logvar.float()).exp()"), (" - 1 - ", " - ")],
                         ids=["variance_exp_2_logvar", "without_minus_1"])
def test_the_kl_term_is_the_analytic_gaussian_kl(ns: dict, old: str, new: str) -> None:
    """Controls: sigma^2 taken as exp(2 logvar), or the KL without its -1."""
    check_kl(ns["negative_elbo"])
    with pytest.raises(AssertionError, match="not the analytic KL"):
        check_kl(load("negative_elbo", old, new)["negative_elbo"])


def check_reconstruction(negative_elbo) -> None:
    """negative_elbo's reconstruction term against -sum over the 784 pixels of x log y + (1 - x) log(1 - y),
    y = sigmoid(logits), on grey levels (not a continuous Bernoulli: no normalising constant), in float64, to
    within the rounding of the notebook's fp32 sum."""
    x = grey_images(5, seed=6)
    logits = 3 * torch.randn(5, 1, 28, 28, generator=torch.Generator().manual_seed(7))
    rec, _ = negative_elbo(x, logits, torch.zeros(5, 2), torch.zeros(5, 2))
    expected = -bernoulli_log_prob(x, logits).sum((1, 2, 3))
    assert rec.shape == (5,) and rec.dtype == torch.float32
    assert ((rec.double() - expected).abs() <= rounding_bound(bce_terms(logits), torch.float32)).all(), "not the NLL"


def test_the_reconstruction_term_is_the_bernoulli_nll_summed_over_pixels(ns: dict) -> None:
    """Control: the pixels averaged instead of summed (the prose: that would weight the KL 784 times too heavily)."""
    check_reconstruction(ns["negative_elbo"])
    with pytest.raises(AssertionError, match="not the NLL"):
        check_reconstruction(load("negative_elbo", ".sum((1, 2, 3))  # -log p(x|z)",
                                  ".mean((1, 2, 3))  # -log p(x|z)")["negative_elbo"])


def check_gaussian_log_prob(gaussian_log_prob) -> None:
    """log N(z; mu, diag exp(logvar)) against torch.distributions, broadcast as iw_log_weights uses it: z (m, B, J)
    against mu, logvar (B, J)."""
    gen = torch.Generator().manual_seed(8)
    z = 2 * torch.randn(4, 3, 5, generator=gen, dtype=torch.float64)
    mu = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    logvar = 4 * torch.rand(3, 5, generator=gen, dtype=torch.float64) - 3
    got = gaussian_log_prob(z, mu, logvar)
    expected = Normal(mu, torch.exp(0.5 * logvar)).log_prob(z).sum(-1)
    terms = torch.cat([torch.full_like(z, math.log(2 * math.pi)), logvar.expand_as(z),
                       (z - mu).square() / logvar.exp()], -1) / 2  # (m, B, 3J)
    assert got.shape == (4, 3)
    assert ((got - expected).abs() <= rounding_bound(terms, torch.float64)).all(), "not the density"


def test_gaussian_log_prob_is_the_diagonal_normal_log_density(ns: dict) -> None:
    """Control: the density without its log-variance term (no longer normalised)."""
    check_gaussian_log_prob(ns["gaussian_log_prob"])
    with pytest.raises(AssertionError, match="not the density"):
        check_gaussian_log_prob(load("gaussian_log_prob", "math.log(2 * math.pi) + logvar +",
                                     "math.log(2 * math.pi) +")["gaussian_log_prob"])


# --- importance weights ---

def check_weights_are_log_px(namespace: dict) -> None:
    """q = p(z) = N(0, I) and a decoder that ignores z: the posterior is the prior, q is exact, and every one of the k
    weights of every image is log p(x) = sum of the pixels' Bernoulli log-probabilities, to within rounding."""
    logits = 3 * torch.randn(1, 1, 28, 28, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    prior = torch.zeros(1, 3, dtype=torch.float64)  # mu = 0, logvar = 0
    model = namespace["VAE"](FixedEncoder(prior, prior), ConstantDecoder(logits), 3)
    x = grey_images(4, seed=10).double()  # four different images: four different log p(x)
    torch.manual_seed(11)
    log_w = namespace["iw_log_weights"](model, x, 12, 5, CPU)  # (B, k)
    torch.manual_seed(11)
    z = iw_draws(12, 5, (4, 3)).double()  # (k, B, J): z = eps, q being N(0, I)
    log_px = bernoulli_log_prob(x, logits).sum((1, 2, 3))  # (B,)
    gauss = (math.log(2 * math.pi) + z.square()).repeat(1, 1, 2).transpose(0, 1) / 2  # log p(z), log q(z): (B, k, 2J)
    bound = rounding_bound(torch.cat([bce_terms(logits).expand(4, 12, -1), gauss], -1), torch.float64)  # (B, k)
    assert (log_px.max() - log_px.min()) > 1.0, "the images must differ for the check to see each image's own p(x)"
    assert log_w.shape == (4, 12)
    assert ((log_w - log_px[:, None]).abs() <= bound).all(), "not log p(x)"


def test_with_the_exact_posterior_every_weight_is_log_px(ns: dict) -> None:
    """Control: weights without their -log q(z | x) term."""
    check_weights_are_log_px(ns)
    with pytest.raises(AssertionError, match="not log p"):
        check_weights_are_log_px(load("iw_log_weights", "log_px_z + log_pz - log_qz", "log_px_z + log_pz"))


Q_MU = torch.tensor([[1.0, -0.5], [0.0, 2.0]], dtype=torch.float64)  # q(z | x) of two images, J = 2
Q_LOGVAR = torch.tensor([[math.log(0.25), math.log(2.0)], [math.log(0.5), math.log(0.3)]], dtype=torch.float64)


def check_jensen_gap(namespace: dict) -> None:
    """A decoder that ignores z and q away from the prior: log w = log p(x) + log p(z) - log q(z | x), so the mean of
    k weights estimates log p(x) - KL(q || p), the ELBO (Eq. 3); within 5 standard errors (the weights' sample std /
    sqrt(k)) of the analytic value, for each of two images with different q."""
    logits = 3 * torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    model = namespace["VAE"](FixedEncoder(Q_MU, Q_LOGVAR), ConstantDecoder(logits), 2)
    x = grey_images(2, seed=13, size=8).double()  # 8x8: the decoder ignores z, small images keep k large and fast
    k = 4000
    torch.manual_seed(14)
    log_w = namespace["iw_log_weights"](model, x, k, 500, CPU)  # (B, k)
    log_px = bernoulli_log_prob(x, logits).sum((1, 2, 3))
    kl = kl_divergence(Normal(Q_MU, torch.exp(0.5 * Q_LOGVAR)), Normal(0.0, 1.0)).sum(1)
    se = log_w.std(1) / math.sqrt(k)
    assert ((log_w.mean(1) - (log_px - kl)).abs() < MC_SE * se).all(), "not log p(x) - KL"


@pytest.mark.parametrize("name, old, new", [
    ("iw_log_weights", "z = mu + torch.exp(0.5 * logvar) * torch.randn", "z = mu + torch.exp(logvar) * torch.randn"),
    ("gaussian_log_prob", "math.log(2 * math.pi) + logvar +", "math.log(2 * math.pi) +"),
], ids=["samples_with_std_exp_logvar", "q_without_its_log_variance_term"])
def test_the_weights_average_to_log_px_minus_the_kl(ns: dict, name: str, old: str, new: str) -> None:
    """Controls: the importance samples drawn with std exp(logvar), not from q; or q's density not normalised."""
    check_jensen_gap(ns)
    with pytest.raises(AssertionError, match="KL"):
        check_jensen_gap(load(name, old, new))


def reference_log_weights(model: nn.Module, x: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, k) log weights of a model with a LinearDecoder, one (image b, sample j) pair at a time,
    z = mu_b + sigma_b eps[j, b], with torch.distributions and the Bernoulli formula, in float64; and the rounding
    bound of each (its pixel terms, the products inside its logits, its Gaussian terms)."""
    k, batch, _ = eps.shape
    mu, logvar = model.encoder(x)  # the call iw_log_weights makes, so the same numbers
    weights = torch.empty(batch, k, dtype=torch.float64)
    bounds = torch.empty(batch, k, dtype=torch.float64)
    for b in range(batch):
        sigma = torch.exp(0.5 * logvar[b])
        for j in range(k):
            z = mu[b] + sigma * eps[j, b].double()
            logits = model.decoder(z[None])  # (1, 1, 28, 28)
            log_px_z = bernoulli_log_prob(x[b:b + 1], logits).sum()
            gauss = torch.cat([Normal(0.0, 1.0).log_prob(z), -Normal(mu[b], sigma).log_prob(z)])  # (2J,)
            weights[b, j] = log_px_z + gauss.sum()
            inside_logits = (z[:, None] * model.decoder.a).abs().sum(0) + model.decoder.c.abs()  # (784,)
            terms = torch.cat([bce_terms(logits)[0], inside_logits, gauss.abs() + math.log(2 * math.pi)])
            bounds[b, j] = rounding_bound(terms, torch.float64)
    return weights, bounds


def check_pairing(namespace: dict, chunk: int) -> None:
    """Three different images, a decoder that depends on z, k = 5 samples in chunks of `chunk`: the weights equal the
    slow per-(image, sample) reference computed from the same draws, to within rounding."""
    torch.manual_seed(15)
    model = namespace["VAE"](namespace["PaperEncoder"](3, 16).double(), LinearDecoder(3, seed=16), 3)
    x = torch.cat([grey_images(1, seed=17), 1 - grey_images(1, seed=17), grey_images(1, seed=18)]).double()
    k = 5
    torch.manual_seed(19)
    log_w = namespace["iw_log_weights"](model, x, k, chunk, CPU)
    torch.manual_seed(19)
    expected, bound = reference_log_weights(model, x, iw_draws(k, chunk, (3, 3)))
    assert log_w.shape == (3, k)
    assert ((log_w - expected).abs() <= bound).all(), "mispaired"


@pytest.mark.parametrize("chunk", [1, 2, 5, 7])
def test_each_importance_sample_is_paired_with_its_own_image(ns: dict, chunk: int) -> None:
    """At every chunk size: one sample per chunk, several, all k in one, and a chunk larger than k. The controls are
    in the next test."""
    check_pairing(ns, chunk)


@pytest.mark.parametrize("old, new", [
    ("x_rep = x.repeat(m, 1, 1, 1)", "x_rep = x.repeat_interleave(m, dim=0)"),
    ("return torch.cat(out).T", "return torch.cat(out).reshape(len(x), k)"),
], ids=["images_repeat_interleaved", "weights_reshaped_not_transposed"])
def test_mispaired_samples_and_images_fail_the_pairing_check(old: str, new: str) -> None:
    """Controls: the images repeated image by image (x0, x0, ..., x1, ...) while the codes run sample by sample, or the
    (k, B) weights reshaped to (B, k) instead of transposed; with chunks of several samples, where they differ."""
    with pytest.raises(AssertionError, match="mispaired"):
        check_pairing(load("iw_log_weights", old, new), 5)


# --- the importance-weighted bounds ---

IW_KS = [1, 10, 100]


def iw_setup() -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A decoder that ignores z (so p(x) is exact) and one q for every image, N = 2000 uint8 images (8x8: the decoder
    ignores z, so the image size does not matter and small ones keep this fast); returns (model, images, their
    -log p(x), their one-z negative ELBO from the notebook's negative_elbo)."""
    ns = load()
    logits = 2 * torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(20))
    mu, logvar = Q_MU[:1].float(), Q_LOGVAR[:1].float()
    model = ns["VAE"](FixedEncoder(mu, logvar), ConstantDecoder(logits), 2)
    images = torch.randint(0, 256, (2000, 1, 8, 8), generator=torch.Generator().manual_seed(21), dtype=torch.uint8)
    x = images.float() / 255
    nll = -bernoulli_log_prob(x, logits).sum((1, 2, 3))
    n = len(x)
    rec, kl = ns["negative_elbo"](x, logits.expand(n, -1, -1, -1), mu.expand(n, -1), logvar.expand(n, -1))
    return model, images, nll, (rec + kl).double()


def check_iw_bounds(bounds: dict[int, float], log_w: torch.Tensor, nll: torch.Tensor, nelbo: torch.Tensor) -> None:
    """Burda et al.'s claims about -L_k, each to 5 standard errors over the N images (the standard deviation of the
    per-image quantity / sqrt N, from the weights iw_bounds drew): -L_1 is the expected negative ELBO; -L_1 > -L_10 >
    -L_100 (the bound tightens with k); and -L_100 is not below the NLL (still a bound)."""
    per_image = {k: -(torch.logsumexp(log_w[:, :k].double(), 1) - math.log(k)) for k in IW_KS}  # (N,) each

    def margin(per_image_difference: torch.Tensor) -> float:
        return MC_SE * per_image_difference.std().item() / math.sqrt(len(log_w))

    assert abs(bounds[1] - nelbo.mean().item()) < margin(per_image[1] - nelbo), "-L_1 is not the negative ELBO"
    for small, large in zip(IW_KS, IW_KS[1:]):
        tightened = bounds[small] - bounds[large]
        assert tightened > margin(per_image[small] - per_image[large]), "does not tighten with k"
    assert bounds[IW_KS[-1]] - nll.mean().item() > -margin(per_image[IW_KS[-1]] - nll), "below the NLL"


def run_iw_bounds(iw_bounds, model: nn.Module, images: torch.Tensor) -> dict[int, float]:
    cfg = SimpleNamespace(eval_batch=5 * len(images), iw_chunk=20)  # one batch of N images: draws iw_case can repeat
    torch.manual_seed(22)
    return iw_bounds(model, images, IW_KS, cfg, CPU)


@pytest.fixture(scope="module")
def iw_case() -> dict:
    model, images, nll, nelbo = iw_setup()
    torch.manual_seed(22)
    log_w = load()["iw_log_weights"](model, images.float() / 255, max(IW_KS), 20, CPU)  # the draws of run_iw_bounds
    return {"model": model, "images": images, "nll": nll, "nelbo": nelbo, "log_w": log_w}


def test_the_importance_weighted_bound_starts_at_the_elbo_and_tightens_with_k(ns: dict, iw_case: dict) -> None:
    """iw_bounds gives -(logsumexp of the first k weights - log k), averaged over the images, and Burda et al.'s claims
    hold for it (check_iw_bounds). The controls are in the next test."""
    bounds = run_iw_bounds(ns["iw_bounds"], iw_case["model"], iw_case["images"])
    # iw_bounds reduces exactly these weights: logsumexp of the first k in fp32 (a few ulps of |log w|), mean in float64
    for k in IW_KS:
        expected = -(torch.logsumexp(iw_case["log_w"][:, :k].double(), 1) - math.log(k)).mean().item()
        assert abs(bounds[k] - expected) <= rounding_bound(iw_case["log_w"][:, :k].abs().max(1).values[:, None],
                                                           torch.float32).max().item()
    check_iw_bounds(bounds, iw_case["log_w"], iw_case["nll"], iw_case["nelbo"])


@pytest.mark.parametrize("old, new, failure", [
    ("torch.logsumexp(log_w[:, :k], dim=1) - math.log(k)", "torch.logsumexp(log_w[:, :k], dim=1)", "below the NLL"),
    ("torch.logsumexp(log_w[:, :k], dim=1) - math.log(k)", "log_w[:, :k].mean(1)", "does not tighten"),
], ids=["without_minus_log_k", "mean_of_log_weights"])
def test_wrong_importance_weighted_bounds_fail(iw_case: dict, old: str, new: str, failure: str) -> None:
    """Controls: the sum of the weights instead of their mean (no longer a bound: it falls below the NLL), or the mean
    of the log-weights instead of the log of their mean (the ELBO again, whatever k: it does not tighten)."""
    bounds = run_iw_bounds(load("iw_bounds", old, new)["iw_bounds"], iw_case["model"], iw_case["images"])
    with pytest.raises(AssertionError, match=failure):
        check_iw_bounds(bounds, iw_case["log_w"], iw_case["nll"], iw_case["nelbo"])


# --- wake-sleep ---

def paper_vae(namespace: dict) -> nn.Module:
    torch.manual_seed(23)
    return namespace["VAE"](namespace["PaperEncoder"](3, 16), namespace["PaperDecoder"](3, 16), 3)


def reached(model: nn.Module, loss: torch.Tensor) -> tuple[bool, bool]:
    """Whether a nonzero gradient of `loss` reaches (the encoder, the decoder)."""
    encoder, decoder = list(model.encoder.parameters()), list(model.decoder.parameters())
    grads = torch.autograd.grad(loss, encoder + decoder, allow_unused=True)
    nonzero = [g is not None and bool(g.abs().sum() > 0) for g in grads]
    return any(nonzero[:len(encoder)]), any(nonzero[len(encoder):])


def phase_reaches(namespace: dict, phase: int, mean_dream: bool = False) -> tuple[bool, bool]:
    model = paper_vae(namespace)
    torch.manual_seed(24)
    losses = namespace["wake_sleep_losses"](model, grey_images(4, seed=25), mean_dream=mean_dream)
    return reached(model, losses[phase].mean())


def test_the_wake_loss_trains_only_the_decoder_and_the_sleep_loss_only_the_encoder(ns: dict) -> None:
    """Controls: a wake phase whose code is drawn with gradients (AEVB's path, which trains the encoder), and the
    notebook's own control, the sleep phase dreaming the decoder's differentiable mean image."""
    assert phase_reaches(ns, 0) == (False, True)
    assert phase_reaches(ns, 1) == (True, False)
    wake_with_grad = load("wake_sleep_losses", "    with torch.no_grad():\n        z = reparameterise",
                          "    if True:\n        z = reparameterise")
    assert phase_reaches(wake_with_grad, 0) == (True, True)  # the wake loss now reaches the encoder too
    assert phase_reaches(ns, 1, mean_dream=True) == (True, True)  # the sleep loss now reaches the decoder too


def check_wake_sleep_values(namespace: dict, mean_dream: bool = False) -> None:
    """Wake: negative_elbo's reconstruction term at the same draw of z ~ q(z | x) (the same first draw of the global
    generator). Sleep: -log N(z; mu(x~), diag sigma^2(x~)) with z ~ p(z) the next draw and x~ binary pixels drawn from
    the decoder's means at z. Each to within the rounding of its fp32 sum."""
    model = paper_vae(namespace)
    x = grey_images(4, seed=25)
    torch.manual_seed(26)
    wake, sleep = namespace["wake_sleep_losses"](model, x, mean_dream=mean_dream)
    with torch.no_grad():
        torch.manual_seed(26)
        logits, mu, logvar = model(x)  # the VAE's forward: one reparameterised z per image
        rec, _ = namespace["negative_elbo"](x, logits, mu, logvar)
        z_dream = torch.randn(4, 3)
        x_dream = torch.bernoulli(torch.sigmoid(model.decoder(z_dream)))
        mu, logvar = model.encoder(x_dream)
        expected = -Normal(mu.double(), torch.exp(0.5 * logvar.double())).log_prob(z_dream.double()).sum(1)
        terms = torch.cat([torch.full_like(mu, math.log(2 * math.pi)), logvar,
                           (z_dream - mu).square() / logvar.exp()], 1) / 2  # (B, 3J)
    assert ((wake - rec).abs() <= rounding_bound(bce_terms(logits), torch.float32)).all(), "wake: not the sample's NLL"
    assert ((sleep.double() - expected).abs() <= rounding_bound(terms, torch.float32)).all(), "sleep: not -log q"


def test_wake_and_sleep_score_the_right_draws(ns: dict) -> None:
    """Controls: a wake phase that decodes the mean code instead of a sample of q, and a sleep phase that dreams the
    mean image instead of binary pixels (the notebook's `mean_dream=True`)."""
    check_wake_sleep_values(ns)
    mean_code = load("wake_sleep_losses", "z = reparameterise(*model.encoder(x))", "z = model.encoder(x)[0]")
    with pytest.raises(AssertionError, match="wake: not the sample's NLL"):
        check_wake_sleep_values(mean_code)
    with pytest.raises(AssertionError, match="sleep: not -log q"):
        check_wake_sleep_values(ns, mean_dream=True)
