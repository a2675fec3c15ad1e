"""The Vision Transformer of image_classification/vit, taken from the notebook itself.

The notebook's cells tagged `model` (the imports, the Config, `patchify`, the attention, the ViT, ResNet-20 and the
attention rollout) are executed here in the smoke preset, so the tests check the code a learner reads: the
written-out attention equals PyTorch's fused kernel, the patch cut equals a strided convolution, position
embeddings are what tells the model where a patch was, ResNet-20 has the paper's size, and rollout maps are
distributions over the patches.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from notebook_cells import notebook_functions, run_tagged
from test_deep_nets_init_and_data import SeedLog, TorchWithSeedLog
from test_preset_seed_device import first_draws

NOTEBOOK = Path(__file__).resolve().parent.parent / "image_classification" / "vit" / "vit.ipynb"


@pytest.fixture(scope="module")
def vit() -> dict:
    """The namespace left by the notebook's `model` cells, run in the smoke preset on the CPU."""
    return run_tagged(NOTEBOOK, "model", at_least=6, preset="smoke")


def test_written_out_attention_equals_sdpa(vit: dict) -> None:
    torch.manual_seed(0)
    attn = vit["SelfAttention"](48, 4).eval()
    x = torch.randn(3, 17, 48)
    with torch.no_grad():
        fused = attn(x)
        attn.use_sdpa = False
        manual = attn(x)
    torch.testing.assert_close(manual, fused, rtol=1e-5, atol=1e-6)
    weights = attn.last_weights
    assert weights.shape == (3, 4, 17, 17)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 4, 17))
    q, k, v = torch.randn(3, 2, 5, 8).unbind(0)
    out, _ = vit["attention"](q, k, v)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("p", [2, 4, 8])
def test_patchify_is_a_strided_convolution(vit: dict, p: int) -> None:
    torch.manual_seed(p)
    x = torch.randn(2, 3, 32, 32)
    patches = vit["patchify"](x, p)
    assert patches.shape == (2, (32 // p) ** 2, 3 * p * p)
    torch.testing.assert_close(patches[0, 1, :3], x[0, :, 0, p])  # patch 1 starts at row 0, column p, all channels
    conv = torch.nn.Conv2d(3, 16, kernel_size=p, stride=p)
    linear = torch.nn.Linear(3 * p * p, 16)
    with torch.no_grad():
        linear.weight.copy_(conv.weight.permute(0, 2, 3, 1).reshape(16, -1))  # (D, C, p, p) -> (D, p*p*C)
        linear.bias.copy_(conv.bias)
        expected = conv(x).flatten(2).transpose(1, 2)  # (B, D, H/p, W/p) -> (B, N, D), row by row
        torch.testing.assert_close(linear(patches), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_position_embeddings_are_what_locates_a_patch(vit: dict, pool: str) -> None:
    """Permuting the patches changes the logits; with the position embeddings permuted alike, it changes nothing."""
    cfg = dataclasses.replace(vit["cfg"], pool=pool, patch_size=8)
    torch.manual_seed(1)
    model = vit["ViT"](cfg).eval()
    torch.nn.init.normal_(model.head.weight)  # the head starts at zero (all logits 0): give it weights to test
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits = model(x)
        assert logits.shape == (2, 10)
        grid = x.reshape(2, 3, 4, 8, 4, 8)  # (B, C, H, W) -> (B, C, 4, 8, 4, 8): a 4x4 grid of 8x8 patches
        swapped = grid.flip(2).reshape(2, 3, 32, 32)  # the rows of patches in reverse order
        assert not torch.allclose(model(swapped), logits, atol=1e-4)
        order = torch.arange(16).reshape(4, 4).flip(0).reshape(-1)  # where each patch of `swapped` came from
        first = 1 if pool == "cls" else 0
        model.pos[:, first:] = model.pos[:, first:][:, order]
        torch.testing.assert_close(model(swapped), logits, rtol=1e-4, atol=1e-5)


def test_resnet20_has_the_papers_size(vit: dict) -> None:
    net = vit["resnet20"](16)
    n = sum(p.numel() for p in net.parameters())
    assert 0.26e6 < n < 0.28e6  # He et al. Table 6: 0.27M
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_attention_rollout_is_a_distribution_over_patches(vit: dict, pool: str) -> None:
    cfg = dataclasses.replace(vit["cfg"], pool=pool)
    torch.manual_seed(2)
    model = vit["ViT"](cfg)
    maps = vit["attention_rollout"](model, torch.randn(3, 3, 32, 32))
    g = 32 // cfg.patch_size
    assert maps.shape == (3, g, g) and (maps >= 0).all()
    total = maps.sum(dim=(1, 2))
    if pool == "mean":  # every row of the rollout sums to 1, so does their average
        torch.testing.assert_close(total, torch.ones(3))
    else:  # the class token keeps some weight on itself: the patches share the rest
        assert ((total > 0) & (total < 1)).all()
    assert all(block.attn.use_sdpa for block in model.blocks), "rollout must switch the fused path back on"


@pytest.fixture(scope="module")
def aug(vit: dict) -> dict:
    """The notebook's batch and augmentation functions, defined in cells that also load data and plot."""
    return notebook_functions(NOTEBOOK, "batch_at", "crop_flip", "mix", namespace=dict(vit))


def test_batch_at_visits_every_image_once_per_epoch(aug: dict) -> None:
    images, labels = torch.arange(40.0)[:, None], torch.arange(40)  # image i has label i
    epochs = [[aug["batch_at"](images, labels, s, 8, 3) for s in range(e * 5, e * 5 + 5)] for e in range(2)]
    for batches in epochs:
        seen = torch.cat([y for _, y in batches])
        assert sorted(seen.tolist()) == list(range(40))  # a permutation: each image exactly once
        assert all(torch.equal(x[:, 0].long(), y) for x, y in batches)  # images and labels stay paired
    order0, order1 = (torch.cat([y for _, y in b]) for b in epochs)
    assert not torch.equal(order0, order1), "each epoch must have its own order"
    again = aug["batch_at"](images, labels, 7, 8, 3)[1]
    assert torch.equal(again, epochs[1][2][1]), "a batch is a function of (seed, step): resume needs nothing saved"
    assert not torch.equal(aug["batch_at"](images, labels, 7, 8, 4)[1], again), "another seed, another batch"


def check_streams_apart(ns: dict, cfg, k: int = 60) -> None:
    """The orders of epochs 0..k-1 and the crops, flips and mixing shuffles of steps 0..k-1 draw from different
    random streams, none of them the initialisation's (`seed_everything(cfg.seed)`): no step's augmentation repeats
    an epoch's shuffle. Seeds are logged by SeedLog (torch.Generator in `ns`); with 4 images a batch of 4, step t is
    epoch t."""
    x, y = torch.zeros(4, 3, 32, 32), torch.arange(4)
    streams = {first_draws(cfg.seed): "the initialisation"}
    for step in range(k):
        SeedLog.seeds = []
        ns["batch_at"](x, y, step, 4, cfg.seed)
        ns["augment"](x, y, step, cfg)
        (order,), augmentation = SeedLog.seeds[:1], SeedLog.seeds[1:]
        for seed, name in ((order, f"epoch {step}'s order"), *((s, f"step {step}'s augmentation") for s in augmentation)):
            draws = first_draws(seed)
            assert draws not in streams, f"{name} draws {streams[draws]}'s random stream"
            streams[draws] = name


@pytest.mark.parametrize(("edits", "message"), [
    ((("batch_at", 'stream_seed(seed, f"epoch {epoch}")', "seed * 100_003 + epoch"),
      ("augment", 'stream_seed(cfg.seed, f"augmentation {step}")', "cfg.seed * 100_003 + step")),
     "epoch 0's order draws the initialisation"),
    ((("augment", 'f"augmentation {step}"', 'f"epoch {step}"'),), "step 0's augmentation draws epoch 0's order"),
], ids=["seeded-as-before-2026-11-30", "augmentation-named-like-the-epoch"])
def test_batch_orders_and_augmentations_never_share_a_random_stream(vit: dict, edits: tuple, message: str) -> None:
    """Controls: the seeding before 30 November 2026 (epoch e's order from seed * 100_003 + e, step s's augmentation
    from seed * 100_003 + s: with seed 0, epoch 0 drew the initialisation's stream and step s epoch s's), and the
    augmentation named like the epoch's stream."""
    names = ("batch_at", "crop_flip", "mix", "augment")
    ns = notebook_functions(NOTEBOOK, *names, namespace={**vit, "torch": TorchWithSeedLog()})
    cfg = dataclasses.replace(ns["cfg"], mix_prob=1.0)  # every step draws a mixing shuffle too
    check_streams_apart(ns, cfg)
    broken = notebook_functions(NOTEBOOK, *names, namespace={**vit, "torch": TorchWithSeedLog()}, edits=edits)
    with pytest.raises(AssertionError, match=message):
        check_streams_apart(broken, cfg)


def test_crop_flip_off_is_the_identity(aug: dict) -> None:
    x = torch.randn(16, 3, 32, 32)
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(aug["crop_flip"](x, 0, False, gen), x)  # no augmentation: the images as they are
    flipped = aug["crop_flip"](x, 0, True, gen)
    assert not torch.equal(flipped, x)  # control: flips on (16 coins) mirror some images
    assert all(torch.equal(f, i) or torch.equal(f, i.flip(2)) for f, i in zip(flipped, x))
    assert not torch.equal(aug["crop_flip"](x, 4, False, gen), x)  # control: crops on move the images


def mixed_batches(mix, cfg, seeds: range) -> list[str]:
    """Which way `mix` mixed the batch of eight images, one entry per seed ("mixup", "cutmix" or "nothing"),
    checking each: image i pairs with the image of its second label, a mixup is the lambda-weighted sum, a cutmix
    pastes one box of the partner's pixels of area 1 - lambda; "nothing" only where lambda says 1."""
    x, y = torch.randn(8, 3, 32, 32), torch.arange(8)  # label i marks image i
    ways = []
    for seed in seeds:
        out, y2, lam = mix(x, y, cfg, np.random.default_rng(seed), torch.Generator().manual_seed(seed))
        assert sorted(y2.tolist()) == list(range(8)) and 0.0 <= lam <= 1.0  # the batch's own shuffle
        partner = x[y2]
        if lam == 1.0:  # a cutmix box of zero area: nothing pasted, and lambda says so
            assert torch.equal(out, x)
            ways.append("nothing")
        elif torch.allclose(out, lam * x + (1 - lam) * partner, atol=1e-6):
            assert not torch.allclose(out, lam * x + (1 - lam) * x[y2.roll(1)], atol=1e-6)  # another pairing fails
            ways.append("mixup")
        else:
            moved = y2 != y  # images paired with another image
            box = (out[moved] != x[moved]).any(1).any(0)  # (B', C, H, W) -> (H, W): the pasted pixels
            assert torch.equal(out[:, :, box], partner[:, :, box]) and torch.equal(out[:, :, ~box], x[:, :, ~box])
            assert abs(box.float().mean().item() - (1 - lam)) < 1e-6
            assert not torch.equal(out[:, :, box], x[y2.roll(1)][:, :, box])  # another pairing fails
            ways.append("cutmix")
    return ways


def test_mix_pairs_each_image_with_its_second_label(aug: dict) -> None:
    """At mix_prob 1 every batch is mixed, by mixup or by cutmix, both of which occur over 20 seeds; at mix_prob 0
    none is. The control: a `mix` that hands the batch back untouched (lambda 1) is caught."""
    cfg = dataclasses.replace(aug["cfg"], mix_prob=1.0)
    ways = mixed_batches(aug["mix"], cfg, range(20))
    assert {"mixup", "cutmix"} <= set(ways) and ways.count("nothing") <= 2, ways
    untouched = mixed_batches(lambda x, y, *_: (x, y, 1.0), cfg, range(20))  # the control: a mix that mixes nothing
    assert not {"mixup", "cutmix"} & set(untouched) and untouched.count("nothing") > 2
    x, y = torch.randn(8, 3, 32, 32), torch.arange(8)
    same, _, lam1 = aug["mix"](x, y, dataclasses.replace(cfg, mix_prob=0.0), np.random.default_rng(0),
                               torch.Generator())
    assert same is x and lam1 == 1.0  # mix_prob 0: nothing mixed


def test_every_ablation_of_every_preset_builds_a_vit_that_runs() -> None:
    """The `full` ablation "depth 4, width 512" kept the baseline's 6 heads: 512 does not split into 6, and every
    `full` run would have stopped there (the CPU tests run only `smoke`). Each preset's ablations are built here, at
    that preset's sizes, and run on two images; the control is the width that does not split, which is refused."""
    for preset in ("smoke", "quick", "full"):
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("DL_PRESET", preset)
            mp.setenv("DL_DEVICE", "cpu")
            ns = run_tagged(NOTEBOOK, "model", at_least=6)
        cfg = ns["cfg"]
        for name, changes in cfg.ablations:
            run = dataclasses.replace(cfg, **changes)
            model = ns["ViT"](run).eval()
            with torch.no_grad():
                logits = model(torch.zeros(2, 3, 32, 32))
            assert logits.shape == (2, 10), (preset, name)
    with pytest.raises(ValueError, match="does not split"):
        ns["SelfAttention"](512, 6)
