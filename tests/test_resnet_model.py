"""The ResNet notebook's own networks, augmentation, loaders, test-time augmentation and schedules, read from the
notebook (image_classification/resnet/resnet.ipynb).

The notebook's top-level functions and classes are executed by name in a fresh namespace, so the tests check the code
a learner reads. Checked, against He et al. 2015 (Deep Residual Learning for Image Recognition) where the notebook
follows it:

- `CifarResNet` with n = 3, 9, 18 has Table 6's sizes (0.27M, 0.85M, 1.7M, as the paper rounds them) and runs
  6n + 2 weighted layers (Section 4.2); its option A shortcuts add no parameter (the count equals that of the paper's
  conv, batch-norm and linear layers alone, and the plain twin has the very same parameters);
- the feature maps are 32x32, 16x16 and 8x8 with 16, 32 and 64 channels, and the logits (B, 10);
- a residual block whose residual branch is zeroed is exactly its shortcut (the identity, or option A's subsampling
  and zero padding), while the plain block then outputs zeros;
- `build` is a function of its seed, and a plain network starts from the residual twin's very weights, as the
  Model section says; the convolutions start from He init (variance 2 / fan-out) and batch norm at scale 1, shift 0;
- `augment` returns, for each image, a window of the zero-padded image, mirrored or not, with offsets spread over
  every position and about half the images mirrored; the same generator seed gives the same batch;
- `make_loader` gives every test image once, in order, normalised; training batches are full and shuffled;
- `predict_logits` uses the batch-norm running statistics, restores training mode, and with TTA averages the logits
  of each image and its mirror image (so TTA changes nothing for a mirror-symmetric model); `accuracy` counts the
  rows whose largest logit is the label's;
- the step schedule divides the learning rate by 10 at 32k and 48k of the `full` preset's 64k steps (Section 4.2),
  the one-cycle schedule rises linearly to the peak over `warmup_frac` of the steps and falls linearly towards 0,
  and `crop_at` gives `quick` 24x24 unpadded crops until its last 391 steps (the Config prose);
- `ResNet9` runs 9 weighted layers, halves its maps 32 -> 16 -> 8 -> 4, and gives (B, 10) logits in channels_last.

Each check is paired with a control that is broken in the way the check guards against and must fail the same
check. Most controls are the notebook's code with an exact edit (each edited string must occur exactly once, so a
control breaks loudly if the notebook changes): one block fewer per stage, option B projection shortcuts, no
downsampling stride, an unseeded `build`, fan-in He init, reflect padding, a vertical flip, no flip, one crop offset
per batch, a test loader that drops its last batch, an unshuffled training loader, predictions in training mode, TTA
along the height, TTA without the flip, argmax over the images, a first drop one step late, a decay that restarts
below the peak, 32x32 crops one step late, a ResNet-9 without its last residual block or its last max-pool. The
others are the notebook's own counterparts: the plain block, another seed, a network that is not mirror-symmetric.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import common
from notebook_cells import notebook_functions, preset_config

NOTEBOOK = Path(__file__).resolve().parent.parent / "image_classification" / "resnet" / "resnet.ipynb"
NAMES = ("augment", "make_loader", "BasicBlock", "CifarResNet", "build", "predict_logits", "accuracy",
         "step_schedule", "lr_factor", "crop_at", "conv_bn", "Residual", "ResNet9")
CPU = torch.device("cpu")
Z = 5.0  # every statistical bound below is 5 standard deviations: a two-sided chance of about 6e-7 of a false alarm


def imports() -> dict[str, Any]:
    """The modules and `common` names the notebook's functions use when they run."""
    return {"torch": torch, "nn": nn, "F": F, "math": math, "seed_everything": common.seed_everything,
            "DeviceImageLoader": common.DeviceImageLoader, "fp32_exact": common.fp32_exact,
            "stream_seed": common.stream_seed}


@pytest.fixture(scope="module")
def nb() -> dict[str, Any]:
    """The notebook's functions and classes, unedited."""
    return notebook_functions(NOTEBOOK, *NAMES, namespace=imports())


def broken(name: str, *edits: tuple[str, str]) -> dict[str, Any]:
    """The notebook's functions with `name` edited: each (old, new) replaces a string that occurs exactly once in it."""
    return notebook_functions(NOTEBOOK, *NAMES, namespace=imports(), edits=[(name, old, new) for old, new in edits])


def config(preset: str) -> Any:
    """The notebook's Config as the preset `preset` sets it (on the CPU)."""
    return preset_config(NOTEBOOK, preset, {"device": CPU})


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def paper_parameter_count(n: int, width: int, num_classes: int = 10) -> int:
    """The parameters of Section 4.2's layers alone: a 3x3 stem conv, three stages of n blocks of two 3x3 convs
    (16, 32, 64 filters at width 16; each conv followed by batch norm, a scale and a shift per channel, and so
    without a bias of its own), and the linear classifier; nothing for the shortcuts (option A)."""
    convs, c_in = [(3, width)], width
    for c_out in (width, 2 * width, 4 * width):
        for _ in range(n):
            convs += [(c_in, c_out), (c_out, c_out)]
            c_in = c_out
    return sum(9 * a * b + 2 * b for a, b in convs) + c_in * num_classes + num_classes


def two_significant(x: float) -> float:
    """`x` rounded to two significant figures, as Table 6 gives the sizes (0.27M, 0.85M, 1.7M)."""
    return float(f"{x:.2g}")


def weighted_layers_run(model: nn.Module, x: torch.Tensor) -> int:
    """How many conv and linear layers one forward pass of `model` runs through."""
    calls = [0]

    def count(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        calls[0] += 1
    handles = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model.eval()(x)
    for h in handles:
        h.remove()
    return calls[0]


def output_shapes(model: nn.Module, modules: list[nn.Module], x: torch.Tensor) -> tuple[list[tuple[int, ...]], tuple]:
    """The output shape of each of `modules` in one forward pass of `model` on `x`, and the model's output shape."""
    shapes: list[tuple[int, ...]] = []
    handles = [m.register_forward_hook(lambda mod, inp, out: shapes.append(tuple(out.shape))) for m in modules]
    with torch.no_grad():
        out = model.eval()(x)
    for h in handles:
        h.remove()
    return shapes, tuple(out.shape)


def images(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    """(n, 3, size, size) standard normal images from their own generator."""
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


# --- the paper's CIFAR networks (Section 4.2) -------------------------------------------------------------------


@pytest.mark.parametrize(("n", "paper_millions"), [(3, 0.27), (9, 0.85), (18, 1.7)],
                         ids=["ResNet-20", "ResNet-56", "ResNet-110"])
def test_cifar_resnets_have_the_papers_sizes_and_6n_plus_2_layers(nb: dict, n: int, paper_millions: float) -> None:
    def sizes(ns: dict) -> tuple[float, int]:
        torch.manual_seed(0)
        net = ns["CifarResNet"](n)  # the paper's width, 16
        return two_significant(parameter_count(net) / 1e6), weighted_layers_run(net, images(1))

    assert sizes(nb) == (paper_millions, 6 * n + 2)  # Table 6 and Section 4.2
    # control: one block fewer per stage (6n - 4 layers) misses both
    short = broken("CifarResNet", ("for i in range(n):", "for i in range(n - 1):"))
    millions, layers = sizes(short)
    assert millions != paper_millions and layers != 6 * n + 2


@pytest.mark.parametrize("n", [3, 9])
def test_option_a_shortcuts_add_no_parameters(nb: dict, n: int) -> None:
    def shapes(ns: dict, residual: bool) -> dict[str, tuple[int, ...]]:
        torch.manual_seed(0)
        return {k: tuple(p.shape) for k, p in ns["CifarResNet"](n, 16, residual).named_parameters()}

    residual, plain = shapes(nb, True), shapes(nb, False)
    assert residual == plain  # the plain twin has the very same parameters: the shortcuts have none
    assert sum(math.prod(s) for s in residual.values()) == paper_parameter_count(n, 16)
    # control: option B (Eq. 2), a strided 1x1 projection where the shape changes, has parameters of its own
    option_b = broken("BasicBlock",
                      ("        self.bn2 = nn.BatchNorm2d(c_out)\n",
                       "        self.bn2 = nn.BatchNorm2d(c_out)\n"
                       "        self.proj = nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False) "
                       "if residual and (stride != 1 or c_in != c_out) else None\n"),
                      ("        x = x[:, :, ::self.stride, ::self.stride]", "        return self.proj(x)"))
    residual_b = shapes(option_b, True)
    assert residual_b != shapes(option_b, False)
    assert sum(math.prod(s) for s in residual_b.values()) > paper_parameter_count(n, 16)
    torch.manual_seed(0)
    assert weighted_layers_run(option_b["CifarResNet"](n), images(1)) == 6 * n + 4  # the two projections run too


def test_feature_maps_are_32_16_8_with_16_32_64_channels(nb: dict) -> None:
    n, batch = 3, 2
    expected = [(batch, 16, 32, 32)] * (n + 1) + [(batch, 32, 16, 16)] * n + [(batch, 64, 8, 8)] * n

    def shapes(ns: dict) -> tuple[list[tuple[int, ...]], tuple]:
        net = ns["build"](n, 16, residual=True, seed=0, device=CPU)
        return output_shapes(net, [net.stem, *net.blocks], images(batch))

    maps, logits = shapes(nb)
    assert maps == expected  # the stem, then each block of the three stages
    assert logits == (batch, 10)
    # control: without the stride-2 first convolution of stages 2 and 3 the maps stay 32x32
    maps, logits = shapes(broken("CifarResNet", ("stride=2 if stage > 0 and i == 0 else 1", "stride=1")))
    assert maps != expected and logits == (batch, 10)


def option_a_shortcut(x: torch.Tensor, c_out: int) -> torch.Tensor:
    """The paper's option A, written out: the identity, or (where the channels double) every second pixel with the
    new channels zero."""
    if c_out == x.shape[1]:
        return x
    sub = x[:, :, ::2, ::2]
    return torch.cat([sub, sub.new_zeros(sub.shape[0], c_out - x.shape[1], *sub.shape[2:])], dim=1)


def zeroed_blocks(net: nn.Module) -> list[nn.Module]:
    """The blocks of `net`, in eval mode, with the last batch norm of each (scale and shift) zeroed, so that every
    residual branch outputs exactly 0."""
    net.eval()
    with torch.no_grad():
        for block in net.blocks:
            block.bn2.weight.zero_()
            block.bn2.bias.zero_()
    return list(net.blocks)


def block_input(block: nn.Module, seed: int) -> torch.Tensor:
    """A nonnegative (2, c_in, 8, 8) input, as a block receives after a ReLU."""
    return F.relu(torch.randn(2, block.conv1.in_channels, 8, 8, generator=torch.Generator().manual_seed(seed)))


def test_a_block_with_its_residual_branch_zeroed_is_its_shortcut(nb: dict) -> None:
    blocks = zeroed_blocks(nb["build"](2, 8, residual=True, seed=0, device=CPU))
    assert sum(b.stride == 2 for b in blocks) == 2  # the two downsampling blocks are among them
    with torch.no_grad():
        for seed, block in enumerate(blocks):  # the input is nonnegative, so the final ReLU keeps the shortcut as is
            x = block_input(block, seed)
            assert torch.equal(block(x), option_a_shortcut(x, block.bn2.num_features))
    # control: the plain blocks, zeroed alike, output zeros, not their shortcut
    with torch.no_grad():
        for seed, block in enumerate(zeroed_blocks(nb["build"](2, 8, residual=False, seed=0, device=CPU))):
            x = block_input(block, seed)
            assert not torch.equal(block(x), option_a_shortcut(x, block.bn2.num_features))
            assert torch.count_nonzero(block(x)) == 0


def test_build_is_a_function_of_its_seed_and_plain_twins_share_the_weights(nb: dict) -> None:
    def weights(ns: dict, residual: bool, seed: int) -> dict[str, torch.Tensor]:
        return ns["build"](3, 8, residual=residual, seed=seed, device=CPU).state_dict()

    def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
        return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    first = weights(nb, True, 0)
    assert same(first, weights(nb, True, 0))
    assert same(first, weights(nb, False, 0))  # "start from identical weights: option A shortcuts have none"
    assert not same(first, weights(nb, True, 1))  # another seed, other weights
    # control: a `build` that does not seed gives other weights each time
    unseeded = broken("build", ("    seed_everything(seed)\n", ""))
    assert not same(weights(unseeded, True, 0), weights(unseeded, True, 0))


def he_init_outliers(net: nn.Module) -> list[str]:
    """The convolutions whose weights are not N(0, 2 / fan_out), fan_out = 9 c_out: sample mean or variance beyond
    Z standard deviations (the mean's is sigma / sqrt(N); the variance ratio's, of a chi-square with N - 1 degrees
    of freedom over N - 1, is sqrt(2 / (N - 1))). Batch norm must start at scale 1 and shift 0."""
    outliers = []
    for name, m in net.named_modules():
        if isinstance(m, nn.Conv2d):
            w = m.weight.detach().flatten().double()
            n, var = w.numel(), 2 / (m.out_channels * m.kernel_size[0] * m.kernel_size[1])
            if abs(w.mean()) > Z * math.sqrt(var / n) or abs(w.var() / var - 1) > Z * math.sqrt(2 / (n - 1)):
                outliers.append(name)
        elif isinstance(m, nn.BatchNorm2d):
            assert torch.equal(m.weight, torch.ones_like(m.weight)) and torch.equal(m.bias, torch.zeros_like(m.bias))
    return outliers


def test_convolutions_start_from_he_init_with_fan_out_variance(nb: dict) -> None:
    assert he_init_outliers(nb["build"](3, 16, residual=True, seed=0, device=CPU)) == []
    # control: variance 2 / fan_in misses where the channels change (the stem: 27 inputs against 144 outputs)
    fan_in = broken("CifarResNet", ('mode="fan_out"', 'mode="fan_in"'))
    assert "stem.0" in he_init_outliers(fan_in["build"](3, 16, residual=True, seed=0, device=CPU))


# --- the augmentation (Section 4.2: 4-pixel padding, 32x32 crops, horizontal flips) -----------------------------


def locate_windows(x: torch.Tensor, out: torch.Tensor, crop: int, pad: int) -> torch.Tensor | None:
    """For each image, the (dy, dx, flipped) of the one window of the zero-padded image that `out` equals, as an
    (N, 3) tensor; None if some image equals no window (or more than one)."""
    padded = F.pad(x, (pad, pad, pad, pad))
    side = padded.shape[-1] - crop + 1
    found = torch.full((len(x), 3), -1)
    matches = torch.zeros(len(x), dtype=torch.long)
    for dy in range(side):
        for dx in range(side):
            window = padded[:, :, dy:dy + crop, dx:dx + crop]
            for flipped, candidate in enumerate((window, window.flip(3))):
                hit = (out == candidate).flatten(1).all(1)
                matches += hit
                found[hit] = torch.tensor([dy, dx, flipped])
    return found if bool((matches == 1).all()) else None


def augmented(ns: dict, crop: int, pad: int, n: int = 256, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """n images (positive everywhere, so no pixel looks like padding) and what `augment` makes of them."""
    x = images(n).abs() + 1
    return x, ns["augment"](x, crop, pad, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(("crop", "pad"), [(32, 4), (24, 0)], ids=["padded-32", "unpadded-24"])
def test_augment_returns_a_window_of_the_zero_padded_image_mirrored_or_not(nb: dict, crop: int, pad: int) -> None:
    x, out = augmented(nb, crop, pad)
    assert out.shape == (len(x), 3, crop, crop)
    assert locate_windows(x, out, crop, pad) is not None
    # controls: reflect padding instead of zeros, and a vertical flip instead of the horizontal one
    if pad:
        reflect = broken("augment", ("x = F.pad(x, (pad, pad, pad, pad))",
                                     'x = F.pad(x, (pad, pad, pad, pad), mode="reflect")'))
        assert locate_windows(*augmented(reflect, crop, pad), crop, pad) is None
    vertical = broken("augment", ("x.flip(3)", "x.flip(2)"))
    assert locate_windows(*augmented(vertical, crop, pad), crop, pad) is None


def mirrored_share_is_a_fair_coin(flipped: torch.Tensor) -> bool:
    """Whether the number of mirrored images is within Z standard deviations of Binomial(N, 1/2)'s mean."""
    n = len(flipped)
    return abs(int(flipped.sum()) - n / 2) <= Z * math.sqrt(n) / 2


def test_augment_mirrors_about_half_the_images(nb: dict) -> None:
    found = locate_windows(*augmented(nb, 32, 4), 32, 4)
    assert mirrored_share_is_a_fair_coin(found[:, 2])
    # control: an augmentation that never mirrors
    never = broken("augment", ("< 0.5", "< 0.0"))
    found = locate_windows(*augmented(never, 32, 4), 32, 4)
    assert found is not None and not mirrored_share_is_a_fair_coin(found[:, 2])


def every_offset_drawn(found: torch.Tensor, positions: int) -> bool:
    """Whether every vertical and every horizontal offset 0 .. positions - 1 occurs. With independent uniform offsets
    per image, one of 9 positions is missed among 256 images with chance at most 9 (8/9)^256, about 7e-13."""
    return all(set(found[:, k].tolist()) == set(range(positions)) for k in (0, 1))


def test_augment_draws_its_own_offset_for_each_image(nb: dict) -> None:
    found = locate_windows(*augmented(nb, 32, 4), 32, 4)
    assert every_offset_drawn(found, 9)
    # control: one vertical offset for the whole batch
    per_batch = broken("augment", ("dy = torch.randint(0, x.shape[2] - crop + 1, (b,)",
                                   "dy = torch.randint(0, x.shape[2] - crop + 1, (1,)"))
    found = locate_windows(*augmented(per_batch, 32, 4), 32, 4)
    assert found is not None and not every_offset_drawn(found, 9)


def test_augment_is_a_function_of_its_generator_seed(nb: dict) -> None:
    _, first = augmented(nb, 32, 4, n=64, seed=3)
    assert torch.equal(first, augmented(nb, 32, 4, n=64, seed=3)[1])
    assert not torch.equal(first, augmented(nb, 32, 4, n=64, seed=4)[1])  # control: another seed, other crops


# --- the loaders --------------------------------------------------------------------------------------------------


STATS = ((0.1, 0.2, 0.3), (0.5, 0.6, 0.7))  # per-channel mean and std, all different


def loader_batches(ns: dict, n: int, batch_size: int, train: bool, seed: int = 0) -> list[tuple[torch.Tensor, ...]]:
    """One epoch of `make_loader` over n uint8 images labelled 0 .. n - 1, so that each image can be identified."""
    raw = torch.randint(0, 256, (n, 3, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    loader = ns["make_loader"](raw, torch.arange(n), batch_size, train, STATS, seed, CPU)
    mean, std = (torch.tensor(s).view(1, 3, 1, 1) for s in STATS)
    expected = (raw.float() / 255 - mean) / std
    return [(x, y, expected[y]) for x, y in loader]


def test_the_test_loader_gives_every_image_once_in_order_normalised(nb: dict) -> None:
    def every_image_in_order(batches: list[tuple[torch.Tensor, ...]], n: int) -> bool:
        labels = torch.cat([y for _, y, _ in batches])
        return torch.equal(labels, torch.arange(n)) and all(
            torch.allclose(x, want, rtol=1e-6, atol=1e-6) for x, _, want in batches)  # float32 rounding of (x - m) / s

    assert every_image_in_order(loader_batches(nb, 50, 16, train=False), 50)  # 3 batches of 16 and one of 2
    # control: a test loader that drops its last, smaller batch
    drops = broken("make_loader", ("drop_last=train", "drop_last=True"))
    assert not every_image_in_order(loader_batches(drops, 50, 16, train=False), 50)


def test_training_batches_are_full_and_shuffled(nb: dict) -> None:
    def full_and_shuffled(batches: list[tuple[torch.Tensor, ...]], batch_size: int) -> bool:
        labels = torch.cat([y for _, y, _ in batches])
        # a uniform shuffle of 50 images puts its first 48 in index order with chance 2 / 50!
        return (all(len(y) == batch_size for _, y, _ in batches) and len(set(labels.tolist())) == len(labels)
                and not torch.equal(labels, torch.arange(len(labels)))
                and all(torch.allclose(x, want, rtol=1e-6, atol=1e-6) for x, _, want in batches))

    batches = loader_batches(nb, 50, 16, train=True)
    assert len(batches) == 3 and full_and_shuffled(batches, 16)
    # control: a training loader that does not shuffle
    unshuffled = broken("make_loader", ("shuffle=train", "shuffle=False"))
    assert not full_and_shuffled(loader_batches(unshuffled, 50, 16, train=True), 16)


# --- predictions, test-time augmentation, accuracy ---------------------------------------------------------------


def eval_loader(n: int = 10, batch_size: int = 4) -> common.DeviceImageLoader:
    raw = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    return common.DeviceImageLoader(raw, torch.zeros(n, dtype=torch.long), batch_size, shuffle=False,
                                    mean=STATS[0], std=STATS[1])


def by_hand(model: nn.Module, loader: common.DeviceImageLoader, tta: bool) -> torch.Tensor:
    """The logits of every image in order, in eval mode; with `tta`, the mean with those of the image mirrored along
    its width."""
    model.eval()
    with torch.no_grad():
        out = [0.5 * (model(x) + model(x.flip(3))) if tta else model(x) for x, _ in loader]
    model.train()
    return torch.cat(out)


def logits_match(ns: dict, model: nn.Module, loader: common.DeviceImageLoader, tta: bool) -> bool:
    # the same float32 operations up to the memory layout of the input: float32 rounding (assert_close's defaults)
    logits, expected = ns["predict_logits"](model, loader, tta=tta), by_hand(model, loader, tta)
    try:
        torch.testing.assert_close(logits, expected)
    except AssertionError:
        return False
    return True


def test_predictions_use_running_statistics_and_restore_training_mode(nb: dict) -> None:
    model, loader = nb["build"](1, 8, residual=True, seed=0, device=CPU), eval_loader()
    assert logits_match(nb, model, loader, tta=False) and model.training
    # control: predicting in training mode normalises with each batch's statistics
    no_eval = broken("predict_logits", ("    model.eval()\n", ""))
    assert not logits_match(no_eval, model, loader, tta=False)


def test_tta_averages_the_logits_of_each_image_and_its_mirror(nb: dict) -> None:
    model, loader = nb["build"](1, 8, residual=True, seed=0, device=CPU), eval_loader()
    assert logits_match(nb, model, loader, tta=True)
    # controls: the mirror along the height, and no mirror at all
    assert not logits_match(broken("predict_logits", ("model(x.flip(3))", "model(x.flip(2))")), model, loader, True)
    assert not logits_match(broken("predict_logits", ("model(x.flip(3))", "model(x)")), model, loader, True)


class MirrorSymmetric(nn.Module):
    """`net(x) + net(x mirrored along W)`: equal, bit for bit, on an image and its mirror image."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) + self.net(x.flip(3))


def test_tta_changes_nothing_for_a_mirror_symmetric_model(nb: dict) -> None:
    loader = eval_loader()
    net = nb["build"](1, 8, residual=True, seed=0, device=CPU)
    symmetric = MirrorSymmetric(net)
    # the two passes add the same two terms in the other order: equal up to float32 rounding
    torch.testing.assert_close(nb["predict_logits"](symmetric, loader, tta=True),
                               nb["predict_logits"](symmetric, loader, tta=False))
    # control: the network itself is not mirror-symmetric, and TTA changes its logits
    tta, single = nb["predict_logits"](net, loader, tta=True), nb["predict_logits"](net, loader, tta=False)
    with pytest.raises(AssertionError, match="not close"):
        torch.testing.assert_close(tta, single)


def test_accuracy_counts_rows_whose_largest_logit_is_the_label(nb: dict) -> None:
    logits = torch.randn(10, 10, generator=torch.Generator().manual_seed(0))  # as many images as classes
    best = [max(range(10), key=lambda j: logits[i, j].item()) for i in range(10)]
    labels = torch.tensor([b if i < 4 else (b + 1) % 10 for i, b in enumerate(best)])  # 4 of the 10 right
    assert nb["accuracy"](logits, labels) == pytest.approx(0.4)
    # control: the largest logit over the images instead of over the classes
    wrong_axis = broken("accuracy", ("argmax(1)", "argmax(0)"))
    assert wrong_axis["accuracy"](logits, labels) != pytest.approx(0.4)


# --- the schedules ------------------------------------------------------------------------------------------------


def drops_at_32k_and_48k(factor: Callable[[int], float], total: int) -> bool:
    """1 before 32k, 0.1 from 32k, 0.01 from 48k of 64k steps, checked at every boundary (Section 4.2)."""
    expected = {0: 1.0, total // 2 - 1: 1.0, total // 2: 0.1, 3 * total // 4 - 1: 0.1, 3 * total // 4: 0.01,
                total - 1: 0.01}
    return all(math.isclose(factor(s), f, rel_tol=1e-12) for s, f in expected.items())  # 0.1 ** 2: one rounding


def test_the_full_recipe_divides_the_lr_by_10_at_32k_and_48k_of_64k_steps(nb: dict) -> None:
    cfg = config("full")
    assert (cfg.schedule, cfg.steps, cfg.lr) == ("step", 64_000, 0.1)  # the paper's recipe
    factor = functools.partial(nb["lr_factor"], total_steps=cfg.steps, schedule=cfg.schedule,
                               warmup_frac=cfg.warmup_frac)
    assert drops_at_32k_and_48k(lambda s: factor(s), cfg.steps)
    assert drops_at_32k_and_48k(lambda s: nb["step_schedule"](s, cfg.steps), cfg.steps)
    # control: a first drop one step late
    late = broken("step_schedule", ("step >= total_steps // 2", "step > total_steps // 2"))
    assert not drops_at_32k_and_48k(lambda s: late["step_schedule"](s, cfg.steps), cfg.steps)


def one_cycle_is_linear_up_then_down(factors: list[float], warmup: int) -> bool:
    """Linear from near 0 up to 1 over the first `warmup` steps, 1 again at the first step after them, then linear
    down to 0 one step past the end (the last step's factor is one decrement above 0)."""
    up, down = factors[:warmup], factors[warmup:]
    rise, fall = 1 / warmup, 1 / len(down)
    return (all(math.isclose(f, (s + 1) * rise) for s, f in enumerate(up)) and math.isclose(up[-1], 1.0)
            and all(math.isclose(f, 1 - s * fall) for s, f in enumerate(down)) and math.isclose(down[-1], fall))


def test_the_quick_one_cycle_warms_up_linearly_to_the_peak_and_decays_linearly_to_zero(nb: dict) -> None:
    cfg = config("quick")
    assert cfg.schedule == "one_cycle"
    warmup = int(cfg.warmup_frac * cfg.steps)  # "the first 20% of the steps"

    def factors(ns: dict) -> list[float]:
        return [ns["lr_factor"](s, cfg.steps, cfg.schedule, cfg.warmup_frac) for s in range(cfg.steps)]

    assert one_cycle_is_linear_up_then_down(factors(nb), warmup)
    # control: a decay whose slope is set by all the steps restarts below the peak (0.8 of it)
    restarts = broken("lr_factor",
                      ("(total_steps - step) / (total_steps - warmup)", "(total_steps - step) / total_steps"))
    assert not one_cycle_is_linear_up_then_down(factors(restarts), warmup)


def test_quick_trains_on_24x24_crops_until_its_last_391_steps(nb: dict) -> None:
    def crops(ns: dict, cfg: Any) -> list[tuple[int, int]]:
        return [ns["crop_at"](s, cfg) for s in range(cfg.steps)]

    quick = config("quick")
    # the Config prose: unpadded 24x24 crops, then the last 391 steps on 32x32 crops of images padded by 4
    expected = [(24, 0)] * (quick.steps - 391) + [(32, 4)] * 391
    assert crops(nb, quick) == expected
    full = config("full")
    assert set(crops(nb, dataclasses.replace(full, steps=100))) == {(32, 4)}  # `full`: the paper's crops throughout
    # control: the switch one step late
    late = broken("crop_at", ("step < cfg.low_res_steps", "step <= cfg.low_res_steps"))
    assert crops(late, quick) != expected


# --- since the paper: ResNet-9 ------------------------------------------------------------------------------------


def resnet9_layers_and_maps(ns: dict, width: int = 8) -> tuple[int, list[tuple[int, ...]], tuple]:
    """ResNet-9's weighted layers on the forward path, the shape after each max-pool, and its output shape, on a
    channels_last batch through a channels_last network, as the notebook runs it."""
    torch.manual_seed(0)
    net = ns["ResNet9"](width).to(memory_format=torch.channels_last)
    x = images(2).contiguous(memory_format=torch.channels_last)
    pools = [m for m in net.modules() if isinstance(m, (nn.MaxPool2d, nn.AdaptiveMaxPool2d))]
    maps, logits = output_shapes(net, pools, x)
    return weighted_layers_run(net, x), maps, logits


def test_resnet9_has_9_layers_halves_32_16_8_4_and_gives_10_logits(nb: dict) -> None:
    w = 8
    expected = (9, [(2, 2 * w, 16, 16), (2, 4 * w, 8, 8), (2, 8 * w, 4, 4), (2, 8 * w, 1, 1)], (2, 10))
    assert resnet9_layers_and_maps(nb, w) == expected
    # controls: without the last residual block (7 layers), and without the last max-pool (8x8 maps at the end)
    no_block = broken("ResNet9", ("nn.MaxPool2d(2), Residual(8 * w)", "nn.MaxPool2d(2)"))
    assert resnet9_layers_and_maps(no_block, w)[0] == 7
    no_pool = broken("ResNet9", ("conv_bn(4 * w, 8 * w), nn.MaxPool2d(2)", "conv_bn(4 * w, 8 * w)"))
    assert resnet9_layers_and_maps(no_pool, w)[1] != expected[1]
