"""The char-GPT notebook's own model and training code (text_generation/char_gpt/char_gpt.ipynb) does what its prose
and Vaswani et al. 2017 (with GPT-2's pre-norm blocks) say.

The attention check cell has its own test (tests/test_char_gpt_attention.py) and so has the one-pass scorer
(tests/test_lm_scoring.py); this file checks the rest, each on the notebook's functions:

- the tokenizer: ids are the characters' ranks in sorted order, and `decode` inverts `encode` on lists and on tensors
  (the notebook decodes tensors); `get_batch`: contiguous windows of the data at offsets drawn from the generator it is
  given (every admissible offset, evenly), targets the inputs shifted by one, the same seed the same batch;
- `bigram_baselines` against add-one unigram and bigram models counted by hand on a tiny corpus;
- the whole `GPT` is causal: changing the character at position j changes no logit before j (through SDPA and the
  by-hand attention), while it does change position j's;
- `Block` is pre-norm: with its two residual-writing projections zeroed it is exactly the identity;
- weight tying, and the sizes the notebook states (10.75 M parameters at `full`, the 0.81 M it prints at `quick`);
  the GPT-2 initialisation the Model section states (N(0, 0.02^2), the residual projections 0.02 / sqrt(2 n_layer),
  LayerNorm at 1 and 0), and "at initialisation the logits are close to zero, so the model should predict a nearly
  uniform distribution and the loss should be close to ln 65";
- `lm_loss` is the mean cross-entropy over all B*T positions, each against its own target, computed in fp32 from
  bf16 logits too (float64 reference);
- `make_optimizer`: AdamW decays the matrices and embeddings (the tied one once), not the LayerNorm parameters;
- `lr_at` and `progress_of` follow the Training section's formula at every step of every preset, start above zero,
  end at the floor, and stay at the floor once a time budget is spent; against nanoGPT's schedule (its cosine
  starting after the warm-up) the rate is at most 5.2% lower, around step 1,450 of `quick`, and 2.6%, around step
  2,890 of `full`, as the prose says;
- `estimate_loss` is the evaluation-mode mean over `eval_batches` batches drawn from its seed, and restores the mode;
- `attention_maps`: one (n_head, T, T) map per layer, each row a distribution over positions 0..t, and the model
  back on SDPA afterwards;
- `generate`: top-k = 1 and temperature -> 0 are greedy decoding done by hand from a prompt longer than the context;
  every model call sees the last `block_size` characters; the same generator seed gives the same text; it samples
  softmax(z / temperature) over the k largest logits (a frequency check on a model with fixed logits).

Each check is paired with a control broken in exactly the way the check guards against, which must fail it; each
control is the notebook's source with one exact string replaced (which must occur exactly once, so a control breaks
loudly when the notebook changes): `decode` without its `int(...)`; targets not shifted; one offset too few; the
bigram table normalised over the wrong axis, or without add-one smoothing; SDPA with `is_causal=False`, or the
by-hand attention without its mask; a post-norm block; the head untied; the wrong MLP layer scaled down, or no
depth scaling; no GPT-2 init (PyTorch's N(0, 1) embeddings, tied to the head); the loss without its last position,
with positions paired with the wrong targets, or in bf16; LayerNorm decayed too, nothing decayed, or the tied
embedding listed (and decayed) twice; a warm-up whose first step has rate 0; progress one step ahead; progress not
capped at 1; nanoGPT's cosine; estimates in training mode (dropout on), or the mode not restored; maps of attention
without its mask, or SDPA not restored; top-k masking the largest logits; the temperature multiplied; no crop (the
model refuses the long context), or a crop one character short; sampling from the global generator; top-k keeping
k - 1.

Tolerances: rounding checks use Higham's bound gamma_n = n u / (1 - n u) on the sums the computation forms;
statistical checks allow 5 standard errors (a two-sided false alarm below 1e-6 each); stated numbers are compared to
the rounding the prose gives them. Every random draw is seeded; models on the CPU (the largest, `full`'s, has 10.75 M
parameters); nothing written anywhere.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import common
from notebook_cells import notebook_functions, preset_config

NOTEBOOK = Path(__file__).resolve().parent.parent / "text_generation" / "char_gpt" / "char_gpt.ipynb"
NAMES = ("encode", "decode", "get_batch", "bigram_baselines", "causal_attention", "CausalSelfAttention", "Block", "GPT",
         "lm_loss", "make_optimizer", "progress_of", "lr_at", "estimate_loss", "attention_maps", "generate")
CPU = torch.device("cpu")
VOCAB = 65  # Tiny Shakespeare's characters (the Data section's output; the baselines' ln 65 = 4.174)
Z = 5.0  # statistical checks allow 5 standard errors: a two-sided chance of about 6e-7 of a false alarm each
EPS32 = torch.finfo(torch.float32).eps


# --- the notebook's code, and controls made from it ---

def imports() -> dict[str, Any]:
    """The modules the notebook's functions use when they run."""
    return {"torch": torch, "nn": nn, "F": F, "math": math, "common": common}


@pytest.fixture(scope="module")
def nb() -> dict[str, Any]:
    """The notebook's functions and classes, unedited."""
    return notebook_functions(NOTEBOOK, *NAMES, namespace=imports())


def broken(name: str, old: str, new: str) -> dict[str, Any]:
    """The notebook's functions with the one occurrence of `old` in `name` replaced by `new`: a control. The other
    functions find the broken one in the same namespace, so they use it."""
    return notebook_functions(NOTEBOOK, *NAMES, namespace=imports(), edits=[(name, old, new)])


@functools.lru_cache(maxsize=None)
def preset_cfg(preset: str) -> Any:
    """The notebook's Config as `preset` sets it, on the CPU (read once per preset)."""
    return preset_config(NOTEBOOK, preset, {"device": CPU, "common": common})


def config(preset: str = "smoke", **changes: Any) -> Any:
    """A copy of the preset's Config with `changes`."""
    return dataclasses.replace(preset_cfg(preset), **changes)


def gpt(ns: dict[str, Any], cfg: Any, seed: int = 0) -> nn.Module:
    """The namespace's GPT over VOCAB characters, its weights drawn after seeding the global generator, in eval mode."""
    torch.manual_seed(seed)
    return ns["GPT"](VOCAB, cfg).eval()


def token_ids(shape: tuple[int, ...], seed: int, vocab: int = VOCAB) -> torch.Tensor:
    """Uniformly random character ids from their own generator."""
    return torch.randint(vocab, shape, generator=torch.Generator().manual_seed(seed))


def gamma(n: int) -> float:
    """Higham's gamma_n = n u / (1 - n u) in fp32: the relative error bound of n roundings (Accuracy and Stability of
    Numerical Algorithms, Lemma 3.1)."""
    u = EPS32 / 2
    return n * u / (1 - n * u)


# --- the tokenizer and the batches ---

SAMPLE = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n"


def check_tokenizer(ns: dict[str, Any]) -> None:
    """With the Data section's tables (`chars = sorted(set(text))`), ids are the characters' ranks in sorted order, and
    `decode` inverts `encode` on a list and on a tensor of ids (as the notebook decodes `x_demo[0]`)."""
    chars = sorted(set(SAMPLE))
    stoi, itos = {ch: i for i, ch in enumerate(chars)}, dict(enumerate(chars))
    assert ns["encode"]("".join(chars), stoi) == list(range(len(chars))), "ids are not the ranks in sorted order"
    ids = ns["encode"](SAMPLE, stoi)
    assert ns["decode"](ids, itos) == SAMPLE, "decode(encode(s)) != s"
    assert ns["decode"](torch.tensor(ids), itos) == SAMPLE, "decode of a tensor"


def test_decode_inverts_encode_on_lists_and_tensors(nb: dict) -> None:
    """Control: `decode` without `int(...)`: a 0-d tensor is not a key of `itos` (tensors hash by identity)."""
    check_tokenizer(nb)
    with pytest.raises(KeyError):
        check_tokenizer(broken("decode", "itos[int(i)]", "itos[i]"))


def check_get_batch(ns: dict[str, Any]) -> None:
    """On data whose values name their positions, every input row is a contiguous slice of the data and its targets the
    next slice, one position on; the offsets cover all n - T admissible ones (the last window ends at the last
    character) evenly; the same seed gives the same batch and the generator moves on."""
    n, block, batch, first = 40, 8, 2000, 100
    data = torch.arange(first, first + n)
    x, y = ns["get_batch"](data, batch, block, torch.Generator().manual_seed(3))
    assert x.shape == y.shape == (batch, block) and x.dtype == torch.long
    starts = x[:, 0] - first
    window = starts[:, None] + torch.arange(block)  # (B, 1) + (T,) -> (B, T)
    assert torch.equal(x, data[window]), "inputs are not contiguous windows"
    assert torch.equal(y, data[window + 1]), "targets are not the inputs shifted by one"
    counts = torch.bincount(starts, minlength=n - block)
    assert len(counts) == n - block and bool((counts > 0).all()), "not every offset is drawn"
    # offsets uniform over the n - T admissible ones: each count is Binomial(B, 1 / (n - T)); with 32 offsets and
    # 2,000 windows a missed offset has probability 32 (31/32)^2000 < 1e-25
    p = 1 / (n - block)
    assert bool(((counts - batch * p).abs() <= Z * math.sqrt(batch * p * (1 - p))).all()), "offsets not uniform"
    x2, y2 = ns["get_batch"](data, batch, block, torch.Generator().manual_seed(3))
    assert torch.equal(x, x2) and torch.equal(y, y2), "the same seed must give the same batch"
    gen = torch.Generator().manual_seed(3)
    assert not torch.equal(ns["get_batch"](data, batch, block, gen)[0], ns["get_batch"](data, batch, block, gen)[0])


@pytest.mark.parametrize(("old", "new", "message"), [
    ("return window[:, :-1], window[:, 1:]", "return window[:, :-1], window[:, :-1]", "shifted by one"),
    ("len(data) - block_size", "len(data) - block_size - 1", "not every offset"),
], ids=["targets_not_shifted", "one_offset_too_few"])
def test_get_batch_draws_windows_and_next_character_targets(nb: dict, old: str, new: str, message: str) -> None:
    """Controls: targets equal to the inputs; offsets that never reach the last window."""
    check_get_batch(nb)
    with pytest.raises(AssertionError, match=message):
        check_get_batch(broken("get_batch", old, new))


# --- the baselines ---

TRAIN = [0, 1, 0, 1, 1, 2, 0, 1, 2, 2, 0, 1, 1, 0]  # a 4-character vocabulary; character 3 never occurs in training
VAL = [1, 0, 2, 3, 0, 1, 1, 2]  # with pairs never seen in training: (0, 2), (2, 3), (3, 0)


def baselines_by_hand(train: list[int], val: list[int], vocab: int) -> dict[str, float]:
    """Uniform, add-one unigram and add-one bigram validation losses counted with Counters, in double precision. The
    unigram scores the same characters as the bigram (all but the first, which has no predecessor)."""
    unigram, pairs = Counter(train), Counter(zip(train[:-1], train[1:]))
    firsts = Counter(train[:-1])  # how often each character is followed by something: the rows of the bigram table
    targets = list(zip(val[:-1], val[1:]))
    return {
        "uniform": math.log(vocab),
        "unigram": -sum(math.log((unigram[b] + 1) / (len(train) + vocab)) for _, b in targets) / len(targets),
        "bigram": -sum(math.log((pairs[a, b] + 1) / (firsts[a] + vocab)) for a, b in targets) / len(targets),
    }


def check_baselines(ns: dict[str, Any]) -> None:
    """`bigram_baselines` on the tiny corpus equals the counts by hand, to double-precision rounding (a few dozen
    roundings of numbers below 10: 1e-12 relative is far above it and far below any counting error)."""
    got = ns["bigram_baselines"](torch.tensor(TRAIN), torch.tensor(VAL), 4)
    expected = baselines_by_hand(TRAIN, VAL, 4)
    assert got.keys() == expected.keys()
    for name in expected:
        assert got[name] == pytest.approx(expected[name], rel=1e-12), f"the {name} baseline"


@pytest.mark.parametrize(("old", "new"), [
    ("pairs / pairs.sum(1, keepdim=True)", "pairs / pairs.sum(0, keepdim=True)"),
    ("pairs.view(vocab_size, vocab_size).double() + 1", "pairs.view(vocab_size, vocab_size).double()"),
], ids=["normalised_over_the_next_character", "without_add_one"])
def test_bigram_baselines_match_counts_by_hand(nb: dict, old: str, new: str) -> None:
    """Controls: the bigram table normalised per next character (p(current | next)); no add-one smoothing (an unseen
    validation pair then costs infinitely many nats)."""
    check_baselines(nb)
    with pytest.raises(AssertionError, match="the bigram baseline"):
        check_baselines(broken("bigram_baselines", old, new))


# --- the model ---

def check_causal(ns: dict[str, Any], use_sdpa: bool) -> None:
    """Changing the character at position j changes no logit at a position before j (exactly: a masked score gets
    weight exp(-inf) = 0, so the earlier positions compute the very same numbers), and does change position j's (so
    the check is not passed by a model that ignores its input)."""
    model = gpt(ns, config("smoke"))
    for block in model.blocks:
        block.attn.use_sdpa = use_sdpa
    x = token_ids((2, model.block_size), seed=1)
    with torch.no_grad():
        base = model(x)
        for j in (0, 1, 7, 16, model.block_size - 1):
            changed = x.clone()
            changed[:, j] = (changed[:, j] + 1) % VOCAB
            out = model(changed)
            assert torch.equal(out[:, :j], base[:, :j]), f"a logit before position {j} depends on it: not causal"
            assert not torch.equal(out[:, j], base[:, j]), f"position {j} does not see its own character"


@pytest.mark.parametrize(("use_sdpa", "name", "old", "new"), [
    (True, "CausalSelfAttention", "is_causal=True", "is_causal=False"),
    (False, "causal_attention", '    scores = scores.masked_fill(future, float("-inf"))\n', ""),
], ids=["sdpa", "by_hand"])
def test_the_whole_gpt_is_causal(nb: dict, use_sdpa: bool, name: str, old: str, new: str) -> None:
    """Controls: SDPA without its causal flag; the by-hand attention without its mask."""
    check_causal(nb, use_sdpa)
    with pytest.raises(AssertionError, match="not causal"):
        check_causal(broken(name, old, new), use_sdpa)


def check_pre_norm(ns: dict[str, Any]) -> None:
    """Pre-norm (the Model section): x <- x + Attn(LN(x)), x <- x + MLP(LN(x)), so the residual path is an identity:
    with the two projections that write into the stream zeroed, the block returns its input exactly."""
    torch.manual_seed(0)
    block = ns["Block"](16, 2, dropout=0.0).eval()
    with torch.no_grad():
        block.attn.proj.weight.zero_()
        block.mlp[2].weight.zero_()
        x = 1.0 + 3.0 * torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(1))  # far from LN's output
        assert torch.equal(block(x), x), "the residual path is not the identity"


def test_the_block_is_pre_norm(nb: dict) -> None:
    """Control: the paper's post-norm block, x <- LN(x + Sublayer(x)) (exercise 3)."""
    check_pre_norm(nb)
    post_norm = broken("Block", "        x = x + self.attn(self.ln1(x))\n        return x + self.mlp(self.ln2(x))",
                       "        x = self.ln1(x + self.attn(x))\n        return self.ln2(x + self.mlp(x))")
    with pytest.raises(AssertionError, match="not the identity"):
        check_pre_norm(post_norm)


def parameter_count(ns: dict[str, Any], preset: str) -> tuple[int, nn.Module]:
    """The parameters of the preset's GPT, counted as the notebook counts them (`model.parameters()`: a tied tensor
    once)."""
    model = gpt(ns, config(preset))
    return sum(p.numel() for p in model.parameters()), model


def check_tied_and_sizes(ns: dict[str, Any]) -> None:
    """The output layer is the input embedding (one tensor, counted once), and the sizes are those the notebook states:
    "The `full` model (10.75 M parameters ...)" and, for `quick`, its printed "0.81 M parameters"."""
    full, model = parameter_count(ns, "full")
    assert model.lm_head.weight is model.tok_emb.weight, "the head is not tied to the embedding"
    assert round(full / 1e6, 2) == 10.75, f"full: {full:,} parameters, not 10.75 M"
    assert round(parameter_count(ns, "quick")[0] / 1e6, 2) == 0.81


def test_the_head_is_tied_and_the_sizes_are_as_stated(nb: dict) -> None:
    """Control: the head untied (exercise 4): V * n_embd more parameters, 10.78 M at `full`."""
    check_tied_and_sizes(nb)
    untied = broken("GPT", "        self.lm_head.weight = self.tok_emb.weight  # weight tying\n", "")
    with pytest.raises(AssertionError, match="not tied"):
        check_tied_and_sizes(untied)
    tied_count, untied_count = parameter_count(nb, "full")[0], parameter_count(untied, "full")[0]
    assert untied_count - tied_count == VOCAB * config("full").n_embd  # exercise 4's answer
    assert round(untied_count / 1e6, 2) != 10.75  # so the stated size fails too


def check_init(ns: dict[str, Any]) -> None:
    """GPT-2's initialisation as the Model section states it: every linear and embedding weight N(0, 0.02^2), the
    projections that write into the residual stream (attn.proj, mlp.2) N(0, (0.02 / sqrt(2 n_layer))^2), and the
    LayerNorms at gain 1, shift 0. Each weight's sample mean within 5 standard errors sigma / sqrt(n) of 0 and its
    sample std within 5 standard errors sigma / sqrt(2 n) (a normal sample's) of sigma."""
    cfg = config("smoke")
    model = gpt(ns, cfg)
    for name, p in model.named_parameters():
        p = p.detach().double()
        if name.endswith(("ln1.weight", "ln2.weight", "ln_f.weight")):
            assert bool((p == 1).all()), f"{name}: LayerNorm gain"
            continue
        if name.endswith(("ln1.bias", "ln2.bias", "ln_f.bias")):
            assert bool((p == 0).all()), f"{name}: LayerNorm shift"
            continue
        residual = name.endswith(("attn.proj.weight", "mlp.2.weight"))
        sigma = 0.02 / math.sqrt(2 * cfg.n_layer) if residual else 0.02
        n = p.numel()
        assert abs(p.mean().item()) <= Z * sigma / math.sqrt(n), f"{name}: init mean"
        assert abs(p.std().item() - sigma) <= Z * sigma / math.sqrt(2 * n), f"{name}: init std"


@pytest.mark.parametrize(("old", "new"), [
    ('name.endswith("mlp.2.weight")', 'name.endswith("mlp.0.weight")'),
    ("std=0.02 / math.sqrt(2 * cfg.n_layer)", "std=0.02"),
], ids=["the_wrong_mlp_layer_scaled", "no_depth_scaling"])
def test_the_weights_start_from_gpt2_init(nb: dict, old: str, new: str) -> None:
    """Controls: the MLP's first layer scaled down instead of the one that writes into the stream; no 1/sqrt(2 L)."""
    check_init(nb)
    with pytest.raises(AssertionError, match="init std"):
        check_init(broken("GPT", old, new))


def check_nearly_uniform(ns: dict[str, Any], preset: str) -> None:
    """At initialisation the predictions are nearly uniform: for a target independent of the context the expected loss
    is ln V + KL(U || p), so KL(U || p) = -mean_v log p_v - ln V (exact, per position) is the excess over ln 65.
    Its tolerance comes from the init: the head's rows are N(0, 0.02^2) and the final LayerNorm's output has squared
    norm n_embd, so a logit has variance sigma^2 = 0.02^2 n_embd and KL(U || p) ~ sigma^2 / 2 for independent logits;
    we allow sigma^2 (twice that: 0.026, 0.051 and 0.154 nats at widths 64, 128 and 384), for the tied head's pull
    towards the current character, whose own embedding is in the stream. The factor of 2 is empirical, not derived:
    the excess measured 0.61-0.77 of this bound (three presets; 12 seeds each of smoke and quick)."""
    cfg = config(preset)
    model = gpt(ns, cfg)
    with torch.no_grad():
        log_p = F.log_softmax(model(token_ids((2, cfg.block_size), seed=2)).double(), dim=-1)  # (B, T, V)
    kl = (-log_p.mean(-1) - math.log(VOCAB)).mean().item()
    assert 0 <= kl <= 0.02**2 * cfg.n_embd, f"{preset}: the loss at init is ln 65 + {kl:.3f}: not near uniform"


@pytest.mark.parametrize("preset", ["smoke", "quick", "full"])
def test_the_initial_prediction_is_nearly_uniform(nb: dict, preset: str) -> None:
    """Control: no GPT-2 init (PyTorch's N(0, 1) embedding, which the tied head shares: logits of std sqrt(n_embd))."""
    check_nearly_uniform(nb, preset)
    with pytest.raises(AssertionError, match="not near uniform"):
        check_nearly_uniform(broken("GPT", "self.apply(self._init_weights)", "pass"), preset)


# --- the objective ---

def reference_loss(logits: torch.Tensor, targets: torch.Tensor) -> tuple[float, float]:
    """The mean over all B*T positions of -log softmax(logits)[target], in float64 on the very values given, and a bound
    on the rounding of an fp32 computation of it: each position's log-softmax forms x_y - m - log sum exp(x - m)
    (m the row's max: V exps summed, a log, two subtractions), then the N terms are summed; so the error is at most
    gamma_(N + V + 8) times twice the mean of |x_y - m| + log sum exp(x - m)."""
    z = logits.double().reshape(-1, logits.shape[-1])  # (N, V)
    y = targets.reshape(-1)
    m = z.max(1).values
    lse = (z - m[:, None]).exp().sum(1).log()
    picked = z.gather(1, y[:, None]).squeeze(1)
    loss = (m + lse - picked).mean().item()
    return loss, gamma(len(y) + z.shape[1] + 8) * 2 * ((picked - m).abs() + lse).mean().item()


def check_loss(ns: dict[str, Any]) -> None:
    """`lm_loss` of (B, T, V) logits and (B, T) targets is the mean cross-entropy over all B*T positions, each against
    its own target, in fp32, from fp32 logits and from bf16 ones (the forward pass's dtype under autocast on CUDA)."""
    gen = torch.Generator().manual_seed(4)
    logits = 3 * torch.randn(8, 16, VOCAB, generator=gen)
    targets = torch.randint(VOCAB, (8, 16), generator=gen)
    for given in (logits, logits.bfloat16()):
        loss = ns["lm_loss"](given, targets)
        expected, bound = reference_loss(given, targets)
        assert loss.dtype == torch.float32, f"from {given.dtype} logits: not computed in fp32"
        assert abs(loss.item() - expected) <= bound, f"from {given.dtype} logits: not the mean cross-entropy"


@pytest.mark.parametrize(("old", "new", "message"), [
    ("logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1)",
     "logits[:, :-1].reshape(-1, logits.size(-1)).float(), targets[:, :-1].reshape(-1)", "not the mean"),
    ("logits.reshape(-1, logits.size(-1))", "logits.transpose(0, 1).reshape(-1, logits.size(-1))", "not the mean"),
    (".float(), targets", ", targets", "not computed in fp32"),
], ids=["last_position_dropped", "wrong_targets", "in_bf16"])
def test_lm_loss_is_the_mean_cross_entropy_over_every_position(nb: dict, old: str, new: str, message: str) -> None:
    """Controls: the loss without the last position; the logits flattened time-major against batch-major targets;
    bf16 logits not upcast."""
    check_loss(nb)
    with pytest.raises(AssertionError, match=message):
        check_loss(broken("lm_loss", old, new))


# --- the optimiser and the schedule ---

def check_weight_decay(ns: dict[str, Any]) -> None:
    """One AdamW step with zero gradients moves a parameter only by its decoupled decay, p <- p (1 - lr wd) (Adam's own
    step is 0 / (0 + eps) = 0): the matrices and embeddings (the tied one once) shrink so, to one fp32 rounding, and
    the LayerNorm gains and shifts do not move ("applied to the matrices and embeddings only")."""
    cfg = config("smoke")
    model = gpt(ns, cfg)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*duplicate parameters")  # the duplicated-embedding control's
        opt = ns["make_optimizer"](model, cfg)
    assert opt.defaults["betas"] == (cfg.beta1, cfg.beta2) and all(g["lr"] == cfg.lr for g in opt.param_groups)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    shrink = 1 - cfg.lr * cfg.weight_decay
    for name, p in model.named_parameters():
        if p.dim() >= 2:
            torch.testing.assert_close(p.detach(), before[name] * shrink, rtol=EPS32, atol=0.0,
                                       msg=f"{name} is not decayed once by lr * weight_decay")
        else:
            assert torch.equal(p.detach(), before[name]), f"LayerNorm parameter {name} is decayed"


@pytest.mark.parametrize(("old", "new", "message"), [
    ('{"params": no_decay, "weight_decay": 0.0}', '{"params": no_decay, "weight_decay": cfg.weight_decay}',
     "LayerNorm parameter"),
    ("decay = [p for p in params if p.dim() >= 2]", "decay = [p for p in params if p.dim() > 2]", "not decayed"),
    ("params = [p for p in model.parameters() if p.requires_grad]",
     "params = [p for _, p in model.named_parameters(remove_duplicate=False) if p.requires_grad]",
     "tok_emb.weight is not decayed once"),
], ids=["everything_decayed", "nothing_decayed", "tied_embedding_twice"])
def test_make_optimizer_decays_matrices_and_embeddings_only(nb: dict, old: str, new: str, message: str) -> None:
    """Controls: the LayerNorm group decayed too; a `> 2` for `>= 2` (no matrix in any group); the tied embedding listed
    twice (as the head and as the embedding), so decayed twice per step."""
    check_weight_decay(nb)
    with pytest.raises(AssertionError, match=message):
        check_weight_decay(broken("make_optimizer", old, new))


def stated_rate(step: int, progress: float, cfg: Any) -> float:
    """The Training section's eta(s) = eta_max min(1, (s + 1) / s_warm) [r + (1 - r) (1 + cos(pi p)) / 2]."""
    return (cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps)
            * (cfg.min_lr_frac + (1 - cfg.min_lr_frac) * (1 + math.cos(math.pi * progress)) / 2))


def check_schedule(ns: dict[str, Any]) -> None:
    """At every step of every preset (the loop trains steps 0 .. max_steps - 1 with p = s / s_max), `lr_at` with
    `progress_of` is the stated formula to double rounding (1e-12 relative); so the first step has rate lr / warm-up
    steps, not 0, the warm-up reaches the full cosine at step s_warm - 1, and the rate ends at the floor r lr at
    p = 1."""
    for preset in ("smoke", "quick", "full"):
        cfg = config(preset)
        rates = [ns["lr_at"](s, ns["progress_of"](s, 0.0, cfg), cfg) for s in range(cfg.max_steps)]
        for s, rate in enumerate(rates):
            assert rate == pytest.approx(stated_rate(s, s / cfg.max_steps, cfg), rel=1e-12), \
                f"{preset}: the rate at step {s} is not the stated one"
        assert rates[0] > 0, "the first step has no learning rate"
        end = ns["lr_at"](cfg.max_steps, ns["progress_of"](cfg.max_steps, 0.0, cfg), cfg)
        assert end == pytest.approx(cfg.min_lr_frac * cfg.lr, rel=1e-12), f"{preset}: not the floor at the end"


@pytest.mark.parametrize(("name", "old", "new"), [
    ("lr_at", "(step + 1) / cfg.warmup_steps", "step / cfg.warmup_steps"),
    ("progress_of", "p = step / cfg.max_steps", "p = (step + 1) / cfg.max_steps"),
], ids=["warm_up_from_zero", "progress_one_step_ahead"])
def test_the_schedule_is_the_stated_warm_up_and_cosine(nb: dict, name: str, old: str, new: str) -> None:
    """Controls: the off-by-one warm-up whose first step has rate 0; progress counted one step ahead."""
    check_schedule(nb)
    with pytest.raises(AssertionError, match="not the stated one"):
        check_schedule(broken(name, old, new))


def check_time_budget(ns: dict[str, Any]) -> None:
    """With `time_budget_s`, p is the larger of s / s_max and the fraction of the time budget used, capped at 1: the
    decay ends when the first budget runs out, and the rate stays at the floor after that, however long it runs."""
    cfg = config("quick", time_budget_s=100.0)
    progress = ns["progress_of"]
    assert progress(250, 50.0, cfg) == pytest.approx(0.5) and progress(2000, 50.0, cfg) == pytest.approx(0.8)
    for seconds in (100.0, 150.0, 199.0, 1e4):
        p = progress(1000, seconds, cfg)
        rate = ns["lr_at"](1000, p, cfg)
        assert rate == pytest.approx(cfg.min_lr_frac * cfg.lr, rel=1e-12), f"past the budget ({seconds} s) the rate " \
                                                                           f"is {rate:.3g}, not the floor"


def test_the_rate_stays_at_the_floor_once_the_time_budget_is_spent(nb: dict) -> None:
    """Control: progress not capped at 1 (the cosine then climbs back up past the budget)."""
    check_time_budget(nb)
    with pytest.raises(AssertionError, match="not the floor"):
        check_time_budget(broken("progress_of", "return min(p, 1.0)", "return p"))


def nanogpt_rate(step: int, cfg: Any) -> float:
    """After the warm-up, nanoGPT's schedule (train.py, `get_lr`): a cosine from lr to min_lr over the steps from the
    end of the warm-up to lr_decay_iters (= max_iters in its shakespeare_char config), min_lr = r lr."""
    ratio = (step - cfg.warmup_steps) / (cfg.max_steps - cfg.warmup_steps)
    floor = cfg.min_lr_frac * cfg.lr
    return floor + (1 + math.cos(math.pi * ratio)) / 2 * (cfg.lr - floor)


def check_against_nanogpt(ns: dict[str, Any]) -> None:
    """The Training section: "the rate is ... up to 5.2% lower later, around step 1,450 of `quick`'s 2,500; 2.6% around
    step 2,890 of `full`'s 5,000" than nanoGPT's, whose cosine starts after the warm-up. The percentages are given to
    0.1 (so within 0.05 percentage points), the steps to 10 (within 5)."""
    for preset, percent, at in (("quick", 5.2, 1450), ("full", 2.6, 2890)):
        cfg = config(preset)
        deficits = {s: 1 - ns["lr_at"](s, ns["progress_of"](s, 0.0, cfg), cfg) / nanogpt_rate(s, cfg)
                    for s in range(cfg.warmup_steps, cfg.max_steps)}
        worst = max(deficits, key=deficits.get)
        assert abs(100 * deficits[worst] - percent) <= 0.05, f"{preset}: at most {100 * deficits[worst]:.2f}% lower"
        assert abs(worst - at) <= 5, f"{preset}: most lower at step {worst}"


def test_the_schedule_differs_from_nanogpts_as_stated(nb: dict) -> None:
    """Control: `lr_at` with nanoGPT's cosine, starting after the warm-up (then no difference at all)."""
    check_against_nanogpt(nb)
    nanogpt = broken("lr_at", "math.cos(math.pi * progress)",
                     "math.cos(math.pi * (step - cfg.warmup_steps) / (cfg.max_steps - cfg.warmup_steps))")
    with pytest.raises(AssertionError, match="lower"):
        check_against_nanogpt(nanogpt)


# --- evaluation ---

def check_estimate(ns: dict[str, Any]) -> None:
    """`estimate_loss` of a model in training mode (smoke: dropout 0.1) is the mean of `lm_loss` over `eval_batches`
    batches drawn by `get_batch` from a generator seeded with `seed`, in evaluation mode, the same at every call
    (the same arithmetic on the same numbers: 1e-12 relative is far above its rounding); the model is back in
    training mode afterwards."""
    cfg = config("smoke")
    model = gpt(ns, cfg).train()
    data = token_ids((2000,), seed=5)
    got = ns["estimate_loss"](model, data, cfg, CPU, seed=7)
    assert model.training, "training mode not restored"
    model.eval()
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        batches = [ns["get_batch"](data, cfg.batch_size, cfg.block_size, gen) for _ in range(cfg.eval_batches)]
        losses = [ns["lm_loss"](model(x), y).item() for x, y in batches]
    model.train()
    assert got == pytest.approx(sum(losses) / len(losses), rel=1e-12), "not the eval-mode mean over the fixed batches"
    assert ns["estimate_loss"](model, data, cfg, CPU, seed=7) == got, "not the same batches every time"


@pytest.mark.parametrize(("old", "new", "message"), [
    ("    model.eval()\n", "", "eval-mode mean"),
    ("model.train(was_training)", "pass", "not restored"),
], ids=["training_mode", "mode_not_restored"])
def test_estimate_loss_is_the_eval_mode_mean_over_fixed_batches(nb: dict, old: str, new: str, message: str) -> None:
    """Controls: the estimate taken in training mode (dropout on); the mode left in evaluation."""
    check_estimate(nb)
    with pytest.raises(AssertionError, match=message):
        check_estimate(broken("estimate_loss", old, new))


def check_attention_maps(ns: dict[str, Any]) -> None:
    """One (n_head, T, T) map per layer; each row t a distribution over positions 0..t: positive there, exactly zero
    above the diagonal, summing to 1 to within the rounding of the softmax (an exp and a division per entry and a
    T-term fp32 sum: gamma_(T + 2)); the model back on SDPA."""
    cfg = config("smoke")
    model = gpt(ns, cfg)
    t = 20
    maps = ns["attention_maps"](model, token_ids((t,), seed=6))
    assert len(maps) == cfg.n_layer and all(m.shape == (cfg.n_head, t, t) for m in maps)
    above = torch.ones(t, t, dtype=torch.bool).triu(1)
    for m in maps:
        assert bool((m[:, above] == 0).all()), "weight above the diagonal: a position attends to the future"
        assert bool((m[:, ~above] > 0).all())
        assert bool(((m.double().sum(-1) - 1).abs() <= gamma(t + 2)).all()), "a row does not sum to 1"
    assert all(block.attn.use_sdpa for block in model.blocks), "SDPA not restored"


@pytest.mark.parametrize(("name", "old", "new", "message"), [
    ("causal_attention", '    scores = scores.masked_fill(future, float("-inf"))\n', "", "above the diagonal"),
    ("attention_maps", "block.attn.use_sdpa = True", "block.attn.use_sdpa = False", "SDPA not restored"),
], ids=["attention_without_mask", "sdpa_not_restored"])
def test_attention_maps_are_causal_distributions(nb: dict, name: str, old: str, new: str, message: str) -> None:
    """Controls: attention without its causal mask; the by-hand path left on."""
    check_attention_maps(nb)
    with pytest.raises(AssertionError, match=message):
        check_attention_maps(broken(name, old, new))


# --- sampling ---

UNDERFLOW = 104  # exp(-104) is below half the smallest fp32 subnormal (exp(-103.3)): it rounds to exactly 0


def greedy_by_hand(model: nn.Module, prompt: torch.Tensor, n: int) -> tuple[torch.Tensor, float]:
    """Argmax decoding written out: feed the last block_size ids, append the argmax of the last position's logits.
    Returns the sequence and the smallest gap between the two largest logits met on the way."""
    seq, gap = prompt, math.inf
    with torch.no_grad():
        for _ in range(n):
            logits = model(seq[:, -model.block_size:])[0, -1]  # (V,)
            top = torch.topk(logits, 2).values
            gap = min(gap, (top[0] - top[1]).item())
            seq = torch.cat([seq, logits.argmax().view(1, 1)], dim=1)
    return seq, gap


def check_greedy(ns: dict[str, Any]) -> None:
    """From a prompt longer than the context, top-k = 1 is greedy decoding (only the largest logit survives), and so is
    temperature -> 0: at tau = 1e-4, once every step's top two logits are more than UNDERFLOW tau apart, every other
    probability rounds to exactly 0 and multinomial cannot pick it."""
    model = gpt(ns, config("smoke"))
    prompt = token_ids((1, model.block_size + 6), seed=8)
    expected, gap = greedy_by_hand(model, prompt, 12)
    out = ns["generate"](model, prompt, 12, temperature=1.0, top_k=1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, expected), "top-k = 1 is not greedy decoding"
    tau = 1e-4
    assert gap > UNDERFLOW * tau  # the premise of the next check, for this model and prompt
    out = ns["generate"](model, prompt, 12, temperature=tau, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, expected), "temperature -> 0 is not greedy decoding"


@pytest.mark.parametrize(("old", "new", "message"), [
    ("logits < kth_largest", "logits > kth_largest", "top-k = 1"),
    ("[:, -1, :].float() / temperature", "[:, -1, :].float() * temperature", "temperature -> 0"),
], ids=["top_k_masks_the_largest", "temperature_multiplied"])
def test_generate_is_greedy_at_top_k_1_and_temperature_0(nb: dict, old: str, new: str, message: str) -> None:
    """Controls: top-k masking the largest logits instead of the smallest (at k = 1: nothing masked); the logits
    multiplied by the temperature (tau -> 0 then samples uniformly)."""
    check_greedy(nb)
    with pytest.raises(AssertionError, match=message):
        check_greedy(broken("generate", old, new))


def check_crop(ns: dict[str, Any]) -> None:
    """Every model call sees exactly the last min(length, block_size) ids of the sequence so far, from a short prompt
    that grows past the context and from a prompt already longer than it."""
    model = gpt(ns, config("smoke"))
    seen: list[torch.Tensor] = []
    hook = model.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    try:
        for length, n in ((3, model.block_size + 4), (model.block_size + 6, 5)):
            seen.clear()
            out = ns["generate"](model, token_ids((1, length), seed=9), n, top_k=5,
                                 generator=torch.Generator().manual_seed(1))
            assert out.shape == (1, length + n) and len(seen) == n
            for i, context in enumerate(seen):
                assert torch.equal(context, out[:, :length + i][:, -model.block_size:]), \
                    f"call {i} is not fed the last block_size ids"
    finally:
        hook.remove()


@pytest.mark.parametrize(("old", "new", "message"), [
    ("context = idx[:, -model.block_size:]", "context = idx", "longer than the context"),
    ("context = idx[:, -model.block_size:]", "context = idx[:, -model.block_size + 1:]", "last block_size ids"),
], ids=["no_crop", "one_short"])
def test_generate_feeds_the_last_block_size_ids(nb: dict, old: str, new: str, message: str) -> None:
    """Controls: no crop (the model's own assertion stops it once the sequence outgrows the positional table); a crop
    one id short."""
    check_crop(nb)
    with pytest.raises(AssertionError, match=message):
        check_crop(broken("generate", old, new))


def check_seeded(ns: dict[str, Any]) -> None:
    """The same generator seed gives the same text (the global generator drawn from in between), another seed other
    text (40 near-uniform draws over 65 characters: equal by chance with probability far below 1e-60)."""
    model = gpt(ns, config("smoke"))
    prompt = token_ids((1, 1), seed=10)

    def sample(seed: int) -> torch.Tensor:
        torch.rand(3)  # moves the global generator: a seeded sample must not depend on it
        return ns["generate"](model, prompt, 40, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(sample(7), sample(7)), "the same seed gives different text"
    assert not torch.equal(sample(7), sample(8))


def test_generate_is_reproducible_from_its_generator(nb: dict) -> None:
    """Control: multinomial drawing from the global generator instead of the one passed in."""
    check_seeded(nb)
    with pytest.raises(AssertionError, match="same seed"):
        check_seeded(broken("generate", ", generator=generator)", ")"))


class FixedLogits(nn.Module):
    """A model with the same next-character logits after any context: the sampler alone decides what is drawn."""

    block_size = 4

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("logits", logits)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(*idx.shape, -1)  # (B, T) -> (B, T, V)


def check_sampling_distribution(ns: dict[str, Any]) -> None:
    """N draws at temperature tau with top-k = k follow p_i = exp(z_i / tau) / (sum over the k largest z_j of
    exp(z_j / tau)) for the k largest logits, 0 for the rest (the Samples section): each character's count within 5
    binomial standard errors of N p_i, and none outside the top k."""
    z = torch.tensor([1.0, 2.0, -0.5, 1.5, 0.2, -1.0])
    tau, k, n = 0.7, 3, 4000
    out = ns["generate"](FixedLogits(z), torch.zeros(1, 1, dtype=torch.long), n, temperature=tau, top_k=k,
                         generator=torch.Generator().manual_seed(11))
    counts = torch.bincount(out[0, 1:], minlength=len(z)).double()
    top = torch.topk(z, k).indices
    p = torch.zeros(len(z), dtype=torch.float64)
    p[top] = (z[top].double() / tau).softmax(0)
    assert counts.sum() == n
    assert bool((counts[p == 0] == 0).all()), "drew a character outside the top k"
    assert bool(((counts - n * p).abs() <= Z * (n * p * (1 - p)).sqrt()).all()), \
        f"not softmax(z / tau) over the top k: {(counts / n).tolist()} against {p.tolist()}"


@pytest.mark.parametrize(("old", "new"), [
    ("[:, -1, :].float() / temperature", "[:, -1, :].float() * temperature"),
    ("logits < kth_largest", "logits <= kth_largest"),
], ids=["temperature_multiplied", "top_k_keeps_k_minus_1"])
def test_generate_samples_softmax_over_the_top_k(nb: dict, old: str, new: str) -> None:
    """Controls: the logits multiplied by the temperature; top-k masking the k-th largest logit too."""
    check_sampling_distribution(nb)
    with pytest.raises(AssertionError, match="not softmax"):
        check_sampling_distribution(broken("generate", old, new))
