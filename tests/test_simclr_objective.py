"""SimCLR's objective, augmentations and evaluation code (representation_learning/simclr) compute what the notebook's
prose and Chen, Kornblith, Norouzi and Hinton 2020 say. tests/test_simclr_steps.py covers the step's host syncs, the
batch order and the colour matrices; this file checks, on the notebook's own functions:

- `nt_xent` is Eq. 1 averaged over all 2N anchors, against an independent float64 Eq. 1, on pairs of similar views
  of random lengths (so that a wrong partner, a denominator that keeps k = i, a missing normalisation, a temperature
  that multiplies, or a mean over N anchors all change the value); the notebook's own term-by-term reference
  `nt_xent_by_hand` is Eq. 1 as well and its two controls (`partner_shift=1`, `mask_self=False`) are not;
- `nt_xent` is invariant to each embedding's length, to a joint permutation of the pairs and to swapping the two
  views of every pair;
- its extremes: with all embeddings equal it is log(2N - 1); on unit vectors it never goes below
  log(1 + (2N - 2) exp(-(1 + 1/(N - 1)) / tau)) (Jensen's inequality twice, with |sum_i u_i|^2 >= 0) and reaches that
  floor when the pairs coincide and the N images form a regular simplex;
- `random_resized_crop`: one axis-aligned crop per view, resized (an exact affine map of a coordinate image), whose
  area lies in `scale`, aspect ratio in `ratio`, inside the image, mirrored horizontally about half the time, area
  uniform and aspect log-uniform (their means at the midpoints); with scale = ratio = (1, 1) at the image's own size it
  returns the image or its mirror image;
- `two_views`: rows k and N + k are views of image k, drawn separately; the crops come before the colour draws, so
  turning the colour off changes no crop (the ablation's prose);
- `color_distortion`: brightness scales the pixels, contrast scales the grey level's distance to the image's mean
  grey level, saturation the distance to each pixel's own grey level, the hue turns the IQ chrominance plane, each
  factor drawn per image over its whole stated range ([1 - 0.8 s, 1 + 0.8 s], +-0.2 s of a turn), all read back from
  the output of a test image; jitter and grayscale happen with probabilities p_color and p_gray, grayscale gives
  the luma (`grey_level`) in all three channels, and with both probabilities 0 the views are the images;
- `SimCLR`: the CIFAR stem keeps the full resolution, the four stages halve it with w, 2w, 4w, 8w channels, h has
  8w dimensions for 32- and 24-pixel views alike, z = g(h) has proj_dim, and the encoder standardises its input;
- `knn_predict`: the weighted vote of Wu et al. 2018 (the k most cosine-similar bank entries, each adding
  exp(s / t) to its class), against a float64 vote by hand, at any chunk size; with k = 1, the nearest entry's label;
- `linear_probe`: 100% on linearly separable features, even on a test set of a single class (the test features are
  standardised with the training features' statistics);
- `project`: z = g(h) with batch norm's running statistics (each row independent of its batch), which it leaves
  as they were, and the head back in training mode;
- `lr_factor`: a linear warm-up in equal increments that reaches 1 at its last step, never 0 before the end, then a
  half cosine from 1 to 0 (f(W + d) + f(T - d) = 1) that stays at 0 after the last step.

Each check is paired with a control broken in exactly the way the check guards against, which must fail it: the
notebook's source with one exact string replaced (which must occur exactly once, so a control breaks loudly when the
notebook changes), or for `nt_xent_by_hand` the notebook's own controls: the partner index shifted by one, the
diagonal left in the denominator, no normalisation, tau multiplying, the mean over the first N anchors; an area drawn
outside `scale`, a fixed aspect, a centre that lets the crop leave the image, one area for the whole batch, a
vertical flip, an aspect uniform in the ratio, a side length drawn where the area should be; the views paired by
repeat_interleave, one crop shared by both views, the colour drawn before the crop; hue in turns taken for radians,
contrast about each pixel's grey level, saturation about the image's mean, a narrower jitter range, the jitter drawn
with p_gray's probability, the jitter always applied, grayscale as the channel mean; a stride-2 stem, an encoder that
does not standardise; an unweighted vote, tau multiplying, every bank entry voting, the farthest neighbours voting,
every chunk reading the first queries; test features standardised with their own statistics, labels paired with the
wrong features; the head in training mode, the head left in evaluation mode; a cosine over all T steps, a cosine
that turns back up after T, a warm-up that starts at 0.

Tolerances: rounding checks use float32 rounding bounds derived next to each constant; statistical checks allow
Z = 5 standard errors. Every random draw is seeded; small tensors on the CPU; nothing is written anywhere.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, NamedTuple

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from common import fp32_exact, stream_seed
from notebook_cells import notebook_functions, notebook_literal

NOTEBOOK = Path(__file__).resolve().parent.parent / "representation_learning" / "simclr" / "simclr.ipynb"
NAMES = ("random_resized_crop", "ColourSpace", "colour_space", "grey_level", "hue_rotation", "color_distortion",
         "two_views", "BasicBlock", "ResNetEncoder", "SimCLR", "nt_xent", "nt_xent_by_hand", "knn_predict",
         "lr_factor", "linear_probe", "project")
CPU = torch.device("cpu")
U32 = torch.finfo(torch.float32).eps / 2  # float32's unit roundoff
Z = 5.0  # statistical bounds: 5 standard errors, a two-sided chance of about 6e-7 of a false alarm
# Over thousands of draws the extremes come within 5% of each range's ends. The rarest end, a crop area of 0.96 or
# more (the clamp to the image makes it need an aspect near 1), comes in 1.1% of the notebook's draws: 4,000 draws all
# miss it with a chance of 2e-19; a uniform factor's end, in 5% of draws, is missed by 2,000 with a chance of 5e-45.
COVER = 0.05


# --- the notebook's code, and one-line controls of it ---

RGB_TO_YIQ = notebook_literal(NOTEBOOK, "RGB_TO_YIQ")


def imports() -> dict[str, Any]:
    """The modules, constants and `common` names the notebook's functions use when they run."""
    return {"torch": torch, "nn": nn, "F": F, "math": math, "NamedTuple": NamedTuple, "RGB_TO_YIQ": RGB_TO_YIQ,
            "fp32_exact": fp32_exact, "stream_seed": stream_seed}


@pytest.fixture(scope="module")
def nb() -> dict[str, Any]:
    """The notebook's functions and classes, unedited."""
    return notebook_functions(NOTEBOOK, *NAMES, namespace=imports())


def broken(name: str, *edits: tuple[str, str]) -> dict[str, Any]:
    """The notebook's functions with `name` edited: each (old, new) replaces a string that occurs exactly once in it;
    the other functions, in the same fresh namespace, call the broken one."""
    return notebook_functions(NOTEBOOK, *NAMES, namespace=imports(), edits=[(name, old, new) for old, new in edits])


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- NT-Xent (Eq. 1) ---

TAU = 0.5  # the notebook's temperature
N_PAIRS, DIM = 8, 16


def eq1(z: torch.Tensor, tau: float) -> float:
    """Eq. 1 in float64, averaged over the 2N anchors: l_ij = -log(exp(sim(z_i, z_j) / tau) /
    sum_{k != i} exp(sim(z_i, z_k) / tau)), j = i + N mod 2N, sim the cosine similarity."""
    z = z.double()
    two_n = len(z)
    total = 0.0
    for i in range(two_n):
        j = (i + two_n // 2) % two_n
        sim = [float(z[i] @ z[k] / (z[i].norm() * z[k].norm())) for k in range(two_n)]
        denominator = sum(math.exp(sim[k] / tau) for k in range(two_n) if k != i)
        total += -(sim[j] / tau - math.log(denominator))
    return total / two_n


def nt_xent_tol(two_n: int, dim: int, tau: float) -> float:
    """How far the notebook's float32 NT-Xent may be from the exact one. Each cosine (a normalisation and a dot product
    of `dim` terms of unit vectors) is within (dim + 4) u of exact, so each logit within (dim + 4) u / tau + u, and a
    row's loss, -l_ij + logsumexp_k l_ik, within twice that; the log-sum-exp over 2N logits of size <= 1/tau and the
    mean over 2N rows add at most (2N + 8) u (1/tau + log 2N) (Higham's gamma_n on the sums)."""
    per_logit = (dim + 4) * U32 / tau + U32
    return 2 * per_logit + (two_n + 8) * U32 * (1 / tau + math.log(two_n))


TOL_NT = nt_xent_tol(2 * N_PAIRS, DIM, TAU)


def paired_views(n: int = N_PAIRS, dim: int = DIM, seed: int = 0, noise: float = 0.3) -> torch.Tensor:
    """(2N, D) float32: rows k and N + k are two similar views of image k (the second, the first plus noise), every row
    of its own random length in [0.5, 3]: a wrong partner, a kept diagonal or a missing normalisation changes the
    loss (with random, unrelated rows every logit is alike and they would not)."""
    g = gen(seed)
    first = torch.randn(n, dim, generator=g)
    z = torch.cat([first, first + noise * torch.randn(n, dim, generator=g)])
    return z * (0.5 + 2.5 * torch.rand(2 * n, 1, generator=g))


NT_XENT_BUGS = {
    "partner shifted by one": ("+ two_n // 2) % two_n", "+ two_n // 2 + 1) % two_n"),
    "k = i kept in the denominator": ('logits.masked_fill(self_mask, float("-inf"))', "logits"),
    "no normalisation": ("F.normalize(z.float(), dim=1)", "z.float()"),
    "tau multiplies": ("z @ z.T / temperature", "z @ z.T * temperature"),
    "mean over the first N anchors": ("F.cross_entropy(logits, partner)",
                                      "F.cross_entropy(logits[:two_n // 2], partner[:two_n // 2])"),
}


def check_eq1(loss: Callable[[torch.Tensor, float], torch.Tensor]) -> None:
    """`loss` is Eq. 1 averaged over the 2N anchors, on three draws of paired views."""
    for seed in range(3):
        z = paired_views(seed=seed)
        assert abs(float(loss(z, TAU)) - eq1(z, TAU)) <= TOL_NT, "not Eq. 1"


def test_nt_xent_is_eq_1_averaged_over_all_2n_anchors(nb: dict) -> None:
    """Within TOL_NT of the float64 Eq. 1. Controls (NT_XENT_BUGS): the partner index shifted by one, k = i kept in
    the denominator, no normalisation, tau multiplying the similarities, the mean over the first N anchors only."""
    check_eq1(nb["nt_xent"])
    for name, edit in NT_XENT_BUGS.items():
        with pytest.raises(AssertionError, match="not Eq. 1"):
            check_eq1(broken("nt_xent", edit)["nt_xent"])
            pytest.fail(f"the control '{name}' passes")


def test_the_notebooks_term_by_term_reference_is_eq_1_and_its_controls_are_not(nb: dict) -> None:
    """The notebook checks `nt_xent` against `nt_xent_by_hand`: that reference is Eq. 1 too, and the two controls the
    notebook shows it tells apart (a partner shifted by one, k = i kept) fail the same comparison."""
    by_hand = nb["nt_xent_by_hand"]
    with torch.no_grad():
        check_eq1(by_hand)
        for control in (functools.partial(by_hand, partner_shift=1), functools.partial(by_hand, mask_self=False)):
            with pytest.raises(AssertionError, match="not Eq. 1"):
                check_eq1(control)


def check_invariances(loss: Callable[[torch.Tensor, float], torch.Tensor]) -> None:
    """NT-Xent depends on the directions only, not on the order of the pairs nor on which view comes first."""
    z = paired_views(seed=4)
    n = len(z) // 2
    reference = float(loss(z, TAU))
    lengths = 0.1 + 10 * torch.rand(2 * n, 1, generator=gen(5))  # a length per row, from 0.1 to 10.1
    assert abs(float(loss(z * lengths, TAU)) - reference) <= 2 * TOL_NT, "depends on the lengths"
    perm = torch.randperm(n, generator=gen(6))
    assert abs(float(loss(torch.cat([z[:n][perm], z[n:][perm]]), TAU)) - reference) <= 2 * TOL_NT, \
        "depends on the order of the pairs"
    assert abs(float(loss(torch.cat([z[n:], z[:n]]), TAU)) - reference) <= 2 * TOL_NT, "depends on the view order"


@pytest.mark.parametrize(("bug", "message"), [("no normalisation", "lengths"),
                                              ("partner shifted by one", "order of the pairs"),
                                              ("mean over the first N anchors", "view order")])
def test_nt_xent_is_invariant_to_lengths_pair_order_and_view_order(nb: dict, bug: str, message: str) -> None:
    """Two float32 losses of the same views, each within TOL_NT of the exact one, differ by at most 2 TOL_NT.
    Controls: no normalisation depends on the lengths; a partner shifted by one pairs other views once the pairs are
    permuted; a mean over the first N anchors changes when the two views swap."""
    check_invariances(nb["nt_xent"])
    with pytest.raises(AssertionError, match=message):
        check_invariances(broken("nt_xent", NT_XENT_BUGS[bug])["nt_xent"])


def simplex_pairs(n: int, dim: int) -> torch.Tensor:
    """(2N, dim) unit vectors, dim >= N: the two views of image k coincide, and the N images are the vertices of a
    regular simplex (e_k - 1/N, normalised: every two have cosine -1/(N - 1))."""
    vertices = torch.eye(n, dtype=torch.float64) - 1 / n
    vertices = F.pad(F.normalize(vertices, dim=1), (0, dim - n))
    return torch.cat([vertices, vertices]).float()


def nt_xent_floor(n: int, tau: float) -> float:
    """The least NT-Xent of 2N unit vectors. Per anchor, with s_ij <= 1 and Jensen's inequality over the 2N - 2
    negatives, l_i >= log(1 + (2N - 2) exp((mean negative sim - 1) / tau)); Jensen again over the anchors (convex in the
    mean); and sum_{i,k} s_ik = |sum_i u_i|^2 >= 0, with 2N diagonal terms of 1 and 2N positives of at most 1, leaves
    the 2N (2N - 2) negatives a sum >= -4N, a mean >= -1 / (N - 1). Equality: pairs that coincide, images on a regular
    simplex. (At the notebook's N = 256 and tau = 0.5 this floor is 4.24 nats.)"""
    return math.log(1 + (2 * n - 2) * math.exp(-(1 + 1 / (n - 1)) / tau))


def check_extremes(loss: Callable[[torch.Tensor, float], torch.Tensor]) -> None:
    """log(2N - 1) when every embedding is the same; the floor, and only the floor, at the simplex; never below it."""
    n = N_PAIRS
    same = torch.ones(2 * n, DIM) / 2  # one vector, 2N times
    assert abs(float(loss(same, TAU)) - math.log(2 * n - 1)) <= TOL_NT, "all equal: not log(2N - 1)"
    assert abs(float(loss(simplex_pairs(n, DIM), TAU)) - nt_xent_floor(n, TAU)) <= TOL_NT, "the simplex: not the floor"
    g = gen(7)
    for noise in (0.0, 0.01, 0.1, 1.0):  # near the floor to far from it, rows of random lengths
        for _ in range(5):
            z = simplex_pairs(n, DIM) + noise * torch.randn(2 * n, DIM, generator=g)
            z = z * (0.1 + 10 * torch.rand(2 * n, 1, generator=g))
            assert float(loss(z, TAU)) >= nt_xent_floor(n, TAU) - TOL_NT, "below the floor"


@pytest.mark.parametrize(("bug", "message"), [("k = i kept in the denominator", r"not log\(2N - 1\)"),
                                              ("partner shifted by one", "not the floor"),
                                              ("no normalisation", "below the floor")])
def test_nt_xent_extremes(nb: dict, bug: str, message: str) -> None:
    """Controls: with k = i kept, equal embeddings score log(2N); a partner shifted by one scores the simplex as a
    bad configuration; without normalisation, long aligned pairs go below the floor of unit vectors."""
    check_extremes(nb["nt_xent"])
    with pytest.raises(AssertionError, match=message):
        check_extremes(broken("nt_xent", NT_XENT_BUGS[bug])["nt_xent"])


# --- the random resized crop ---

# Each view of a coordinate image (channel 0 the x, channel 1 the y of each pixel centre in affine_grid's [-1, 1]) is
# its sampling positions: the affine grid (3 float32 terms), its unnormalisation and a bilinear mix of 4 neighbours
# each round a few times, so each value is within about 8 u of exact, a slope read off two columns 1.5 apart within
# 11 u, an area or a ratio within 25 u: 64 u covers them.
COORD_TOL = 64 * U32
SCALE, RATIO = (0.2, 1.0), (3 / 4, 4 / 3)  # the notebook's crop_scale and crop_ratio


def coordinate_images(b: int, side: int) -> torch.Tensor:
    """(b, 3, side, side): channel 0 the x, channel 1 the y of each pixel centre, (2j + 1) / side - 1, channel 2 zero.
    Bilinear sampling of a linear function is exact between pixel centres, so a view reads its sampling positions."""
    centres = (2 * torch.arange(side) + 1) / side - 1
    image = torch.stack([centres.expand(side, side), centres[:, None].expand(side, side), torch.zeros(side, side)])
    return image.expand(b, 3, side, side)  # one image, b views of it: no copy


class Boxes(NamedTuple):
    """Crops in affine_grid's coordinates: the width w and height h as fractions of the image, the centre (cx, cy),
    the signed horizontal and vertical scales (negative: mirrored), float64, one per view; and `bent`, how far each
    view's sampling positions are from an affine map of its pixels (0 to rounding for a crop inside the image: a
    position outside comes back reflected at the border, `padding_mode="reflection"`)."""
    w: torch.Tensor
    h: torch.Tensor
    cx: torch.Tensor
    cy: torch.Tensor
    x_scale: torch.Tensor
    y_scale: torch.Tensor
    bent: torch.Tensor


def crop_boxes(views: torch.Tensor) -> Boxes:
    """The crop behind each view of `coordinate_images`, after checking that it is axis-aligned (x constant down each
    column, y constant along each row: no rotation, no shear), read off the first and last columns and rows."""
    s = views.shape[-1]
    grid = (2 * torch.arange(s, dtype=torch.float64) + 1) / s - 1  # the output's pixel centres
    u, v = views[:, 0].double(), views[:, 1].double()  # (B, S, S): [row, column]
    assert (u - u[:, :1, :]).abs().max() <= COORD_TOL and (v - v[:, :, :1]).abs().max() <= COORD_TOL, "not axis-aligned"
    boxes, bent = [], torch.zeros(len(views), dtype=torch.float64)
    for line in (u[:, 0, :], v[:, :, 0]):  # x along the columns, y along the rows: (B, S) each
        slope, centre = (line[:, -1] - line[:, 0]) / (grid[-1] - grid[0]), line.mean(1)
        bent = torch.maximum(bent, (centre[:, None] + slope[:, None] * grid - line).abs().amax(1))
        boxes.append((slope, centre))
    (x_scale, cx), (y_scale, cy) = boxes
    return Boxes(x_scale.abs(), y_scale.abs(), cx, cy, x_scale, y_scale, bent)


def check_crop_bounds(crop: Callable, scale: tuple = SCALE, ratio: tuple = RATIO, b: int = 4000) -> None:
    """One crop per view, area in `scale`, aspect ratio w / h in `ratio`, inside the image, both ends of both ranges
    reached, and a horizontal mirror about half the time (never a vertical one)."""
    size = 4  # the smallest crop (w >= 0.24 even for the controls) keeps its samples between the 32 pixel centres
    views = crop(coordinate_images(b, 32), size, scale, ratio, gen(10))
    assert views.shape == (b, 3, size, size), "shape"
    box = crop_boxes(views)
    area, log_ratio = box.w * box.h, (box.w / box.h).log()
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    # first: a crop inside the image (so that its view reads its box)
    assert (box.bent <= COORD_TOL).all() and (box.cx.abs() + box.w).max() <= 1 + COORD_TOL \
        and (box.cy.abs() + box.h).max() <= 1 + COORD_TOL, "outside the image"
    assert area.min() >= scale[0] - COORD_TOL and area.max() <= scale[1] + COORD_TOL, "area outside scale"
    assert log_ratio.min() >= lo - COORD_TOL and log_ratio.max() <= hi + COORD_TOL, "aspect outside ratio"
    span = scale[1] - scale[0]
    assert area.min() <= scale[0] + COVER * span and area.max() >= scale[1] - COVER * span, "area range not covered"
    assert log_ratio.min() <= lo + COVER * (hi - lo) and log_ratio.max() >= hi - COVER * (hi - lo), \
        "aspect range not covered"
    assert (box.y_scale > 0).all(), "flipped vertically"
    mirrored = (box.x_scale < 0).double().mean().item()
    assert abs(mirrored - 0.5) <= Z * math.sqrt(0.25 / b), "not mirrored half the time"


CROP_BUGS = {
    "area outside scale": ("uniform_(scale[0], scale[1], generator=gen)", "uniform_(0.08, 1.0, generator=gen)"),
    "aspect range not covered": ("math.log(ratio[0]), math.log(ratio[1])", "0.0, 0.0"),
    "outside the image": ("* (1 - w)", "* 1.0"),
    "area range not covered": (
        "area = torch.empty(b, device=dev).uniform_(scale[0], scale[1], generator=gen)",
        "area = torch.empty(1, device=dev).uniform_(scale[0], scale[1], generator=gen).expand(b)"),
    "flipped vertically": ("[w * flip, zero, cx, zero, h, cy]", "[w, zero, cx, zero, h * flip, cy]"),
}


@pytest.mark.parametrize("message", list(CROP_BUGS))
def test_crops_lie_within_scale_and_ratio_inside_the_image(nb: dict, message: str) -> None:
    """Controls: an area drawn in (0.08, 1), the paper's ImageNet range; a fixed aspect of 1; a centre anywhere in the
    image (the crop leaves it); one area for the whole batch; the flip applied to the height."""
    check_crop_bounds(nb["random_resized_crop"])
    with pytest.raises(AssertionError, match=message):
        check_crop_bounds(broken("random_resized_crop", CROP_BUGS[message])["random_resized_crop"])


def check_crop_distribution(crop: Callable, b: int = 8000) -> None:
    """The area is uniform in `scale` (aspect 1: no clamping) and the aspect log-uniform in `ratio` (area 1/4: no
    clamping either): their sample means lie within Z standard errors (the range / sqrt(12 b)) of the midpoints."""
    box = crop_boxes(crop(coordinate_images(b, 32), 4, SCALE, (1.0, 1.0), gen(11)))
    assert (box.bent <= COORD_TOL).all(), "outside the image"
    se = (SCALE[1] - SCALE[0]) / math.sqrt(12 * b)
    assert abs((box.w * box.h).mean().item() - sum(SCALE) / 2) <= Z * se, "area not uniform"
    box = crop_boxes(crop(coordinate_images(b, 32), 4, (0.25, 0.25), RATIO, gen(12)))
    assert (box.bent <= COORD_TOL).all(), "outside the image"
    lo, hi = math.log(RATIO[0]), math.log(RATIO[1])
    assert abs((box.w / box.h).log().mean().item() - (lo + hi) / 2) <= Z * (hi - lo) / math.sqrt(12 * b), \
        "aspect not log-uniform"


@pytest.mark.parametrize(("message", "edits"), [
    ("area not uniform", [("(area * aspect).sqrt()", "area * aspect.sqrt()"),
                          ("(area / aspect).sqrt()", "area / aspect.sqrt()")]),
    ("aspect not log-uniform", [("uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=gen).exp()",
                                 "uniform_(ratio[0], ratio[1], generator=gen)")]),
])
def test_crop_areas_are_uniform_and_aspects_log_uniform(nb: dict, message: str, edits: list) -> None:
    """As torchvision's RandomResizedCrop draws them (the notebook's prose). Controls: a side length drawn uniformly
    in `scale` (mean area 0.41, not 0.6); an aspect uniform in `ratio` (mean log-aspect 0.028, not 0)."""
    check_crop_distribution(nb["random_resized_crop"])
    with pytest.raises(AssertionError, match=message):
        check_crop_distribution(broken("random_resized_crop", *edits)["random_resized_crop"])


def check_full_crop(crop: Callable) -> None:
    """With scale = ratio = (1, 1) at the image's own size, every view is the image or its horizontal mirror image
    (bilinear weights of 1 and 0 at the pixel centres, to rounding), and both occur."""
    x = torch.rand(64, 3, 8, 8, generator=gen(13))
    views = crop(x, 8, (1.0, 1.0), (1.0, 1.0), gen(14))
    same = ((views - x).flatten(1).abs().amax(1) <= COORD_TOL)
    mirrored = ((views - x.flip(-1)).flatten(1).abs().amax(1) <= COORD_TOL)
    assert (same | mirrored).all(), "not the image nor its mirror"
    assert same.any() and mirrored.any(), "never or always mirrored"


def test_a_full_crop_is_the_image_or_its_mirror(nb: dict) -> None:
    """Control: the flip applied to the height (an upside-down image is neither)."""
    check_full_crop(nb["random_resized_crop"])
    with pytest.raises(AssertionError, match="not the image nor its mirror"):
        check_full_crop(broken("random_resized_crop", CROP_BUGS["flipped vertically"])["random_resized_crop"])


# --- two views per image ---

def view_config(p_color: float = 0.8, p_gray: float = 0.2) -> SimpleNamespace:
    """The Config fields two_views reads, at the notebook's values (smoke's 16-pixel views)."""
    return SimpleNamespace(crop_size=16, crop_scale=SCALE, crop_ratio=RATIO, color_strength=0.5, p_color=p_color,
                           p_gray=p_gray)


def id_images(n: int) -> torch.Tensor:
    """(n, 3, 32, 32) uint8: channel 0 is image k's id, 40 k, everywhere; channels 1 and 2 are ramps along x and y."""
    ramp = torch.arange(32, dtype=torch.uint8) * 8
    images = torch.stack([torch.zeros(32, 32, dtype=torch.uint8), ramp.expand(32, 32), ramp[:, None].expand(32, 32)])
    images = images.expand(n, 3, 32, 32).clone()
    images[:, 0] = (40 * torch.arange(n, dtype=torch.uint8))[:, None, None]
    return images


def check_two_views(two_views: Callable, colours: Any) -> None:
    """Rows k and N + k show image k (its id, exact to rounding: a constant stays constant under bilinear sampling),
    from two different crops; with the colour off, the same generator seed gives the same crops as with a colour
    distortion of probabilities 0 (the colour draws come after the crop draws)."""
    n = 6
    x = id_images(n)
    views = two_views(x, view_config(), gen(20), colours, color=False)
    assert views.shape == (2 * n, 3, 16, 16), "shape"
    ids = torch.cat([40 * torch.arange(n), 40 * torch.arange(n)]).float()[:, None, None] / 255
    assert (views[:, 0] - ids).abs().max() <= COORD_TOL, "rows k and N + k are not views of image k"
    assert ((views[:n] - views[n:]).flatten(1).abs().amax(1) > COORD_TOL).all(), "the two views share a crop"
    coloured = two_views(x, view_config(0.0, 0.0), gen(20), colours, color=True)
    assert torch.equal(coloured, views), "the colour changes the crops"


@pytest.mark.parametrize(("message", "old", "new"), [
    ("not views of image k", "x = torch.cat([x, x])", "x = x.repeat_interleave(2, dim=0)"),
    ("share a crop", "x = random_resized_crop(x, cfg.crop_size, cfg.crop_scale, cfg.crop_ratio, gen)",
     "x = random_resized_crop(x[:len(x) // 2], cfg.crop_size, cfg.crop_scale, cfg.crop_ratio, gen).repeat(2, 1, 1, 1)"),
    ("the colour changes the crops",
     "x = random_resized_crop(x, cfg.crop_size, cfg.crop_scale, cfg.crop_ratio, gen)\n    if color:\n"
     "        x = color_distortion(x, cfg.color_strength, cfg.p_color, cfg.p_gray, gen, colours)",
     "if color:\n        x = color_distortion(x, cfg.color_strength, cfg.p_color, cfg.p_gray, gen, colours)\n"
     "    x = random_resized_crop(x, cfg.crop_size, cfg.crop_scale, cfg.crop_ratio, gen)"),
])
def test_two_views_pair_rows_k_and_n_plus_k_and_crop_before_the_colour(nb: dict, message: str, old: str,
                                                                        new: str) -> None:
    """Controls: views paired as rows 2k and 2k + 1; one crop drawn for both views of an image; the colour drawn
    before the crop (the ablation's two runs would then see different crops)."""
    check_two_views(nb["two_views"], nb["colour_space"](CPU))
    control = broken("two_views", (old, new))
    with pytest.raises(AssertionError, match=message):
        check_two_views(control["two_views"], control["colour_space"](CPU))


# --- the colour distortion ---

STRENGTH = 0.5  # the notebook's color_strength, s
YIQ = torch.tensor(RGB_TO_YIQ, dtype=torch.float64)
# The factors are read back from float32 views (about 20 roundings of values below 1, so within 40 u per channel, and
# within 2.1 times that in YIQ, the largest row norm of the YIQ matrices) through differences of size at least 0.014
# (the smallest chroma, 0.6 x 0.6 x 0.04), an amplification of at most 70: 40 x 2.1 x 70 u < 1e-3. The controls
# miss their ranges by 0.1 or more.
COLOUR_TOL = 1e-3


def colour_test_image() -> torch.Tensor:
    """(1, 3, 2, 2) float32 RGB from YIQ: two grey pixels of luma 0.45 and 0.55 and two coloured ones of luma 0.5 with
    chroma 0.04 along I and along Q. Mean luma 0.5; no stage of the jitter clamps it at s = 0.5 (every factor <= 1.4:
    chroma up to 0.04 x 1.4^3 x 2.03 = 0.23 in RGB around lumas within [0.26, 0.8])."""
    yiq = torch.tensor([[[0.45, 0.50], [0.50, 0.55]], [[0, 0.04], [0, 0]], [[0, 0], [0.04, 0]]], dtype=torch.float64)
    return torch.einsum("ij,jhw->ihw", torch.linalg.inv(YIQ), yiq).float()[None]


def to_yiq(rgb: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB -> YIQ, float64."""
    return torch.einsum("ij,bjhw->bihw", YIQ, rgb.double())


def jitter_factors(views: torch.Tensor, image: torch.Tensor) -> dict[str, torch.Tensor]:
    """Brightness, contrast, saturation and hue angle of each view of `colour_test_image`, read back as the prose
    defines them, after checking that the view is exactly what they give: brightness b scales every pixel; contrast c
    scales each luma's distance to the image's mean luma m; saturation s scales each pixel's chroma (its distance to
    its own grey level); the hue turns the chroma (I, Q) by theta. So luma = b (m + c (Y - m)), chroma = b c s R(theta)
    (I, Q)."""
    out, src = to_yiq(views), to_yiq(image)[0]
    mean_in = src[0].mean()
    b = out[:, 0].mean(dim=(1, 2)) / mean_in  # contrast, saturation and hue keep the mean luma
    c = (out[:, 0, 1, 1] - out[:, 0, 0, 0]) / (b * (src[0, 1, 1] - src[0, 0, 0]))
    chroma_in, chroma_out = src[1:, 0, 1], out[:, 1:, 0, 1]  # the pixel coloured along I
    s = chroma_out.norm(dim=1) / (b * c * chroma_in.norm())
    theta = torch.atan2(chroma_out[:, 1], chroma_out[:, 0]) - torch.atan2(chroma_in[1], chroma_in[0])
    theta = torch.remainder(theta + math.pi, 2 * math.pi) - math.pi
    cos, sin = theta.cos(), theta.sin()
    rotation = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1)  # (B, 2, 2)
    luma = b[:, None, None] * (mean_in + c[:, None, None] * (src[0] - mean_in))
    chroma = (b * c * s)[:, None, None, None] * torch.einsum("bij,jhw->bihw", rotation, src[1:])
    expected = torch.cat([luma[:, None], chroma], dim=1)
    assert (expected - out).abs().max() <= COLOUR_TOL, "not brightness, contrast, saturation and hue as described"
    return {"brightness": b, "contrast": c, "saturation": s, "hue": theta}


def check_jitter(color_distortion: Callable, colours: Any, b: int = 2000) -> None:
    """Every view jittered (p_color = 1, p_gray = 0): its factors lie in [1 - 0.8 s, 1 + 0.8 s] and its hue angle in
    +-0.2 s of a turn, and over the views each covers its whole range."""
    image = colour_test_image()
    views = color_distortion(image.expand(b, 3, 2, 2).contiguous(), STRENGTH, 1.0, 0.0, gen(30), colours)
    factors = jitter_factors(views, image)
    ranges = {name: (1 - 0.8 * STRENGTH, 1 + 0.8 * STRENGTH) for name in ("brightness", "contrast", "saturation")}
    ranges["hue"] = (-0.2 * STRENGTH * 2 * math.pi, 0.2 * STRENGTH * 2 * math.pi)
    for name, (lo, hi) in ranges.items():
        f = factors[name]
        assert lo - COLOUR_TOL <= f.min() and f.max() <= hi + COLOUR_TOL, f"{name} outside its range"
        assert f.min() <= lo + COVER * (hi - lo) and f.max() >= hi - COVER * (hi - lo), f"{name} range not covered"


@pytest.mark.parametrize(("message", "old", "new"), [
    ("hue range not covered", ".view(b) * 2 * math.pi", ".view(b)"),
    ("contrast range not covered", ".mean(dim=(2, 3), keepdim=True)", ""),
    ("contrast outside its range", "y = ((y - g) * sat + g).clamp(0, 1)", "y = ((y - m) * sat + m).clamp(0, 1)"),
    ("brightness range not covered", "factor(1 - 0.8 * s, 1 + 0.8 * s)", "factor(1 - 0.4 * s, 1 + 0.4 * s)"),
])
def test_the_colour_jitter_is_as_described_with_factors_over_their_whole_ranges(nb: dict, message: str, old: str,
                                                                                 new: str) -> None:
    """Controls: the hue drawn in turns but used as radians (+-0.1 rad instead of +-36 degrees); contrast about each
    pixel's own grey level (it then changes no luma: c reads 1); saturation about the image's mean grey level (it then
    scales the lumas' distances to the mean too, which reads as a contrast c s, out of contrast's range); a jitter
    range of 0.4 s instead of 0.8 s."""
    check_jitter(nb["color_distortion"], nb["colour_space"](CPU))
    control = broken("color_distortion", (old, new))
    with pytest.raises(AssertionError, match=message):
        check_jitter(control["color_distortion"], control["colour_space"](CPU))


def check_probabilities(color_distortion: Callable, colours: Any, b: int = 4000) -> None:
    """With both probabilities 0 every view is its image; at the notebook's p_color = 0.8 and p_gray = 0.2, a view
    is jittered with probability p_color and then turned grey with probability p_gray, independently (each fraction
    within Z standard errors); with p_gray = 1 and no jitter every view holds the image's luma,
    0.299 R + 0.587 G + 0.114 B, in all three channels."""
    image = colour_test_image()
    x = image.expand(b, 3, 2, 2).contiguous()
    assert torch.equal(color_distortion(x, STRENGTH, 0.0, 0.0, gen(31), colours), x), "probabilities 0: not the image"
    greyed = color_distortion(x, STRENGTH, 0.0, 1.0, gen(32), colours)  # the image made grey, without jitter
    p_color, p_gray = 0.8, 0.2  # the notebook's
    views = color_distortion(x, STRENGTH, p_color, p_gray, gen(33), colours)
    grey = (views[:, 0] == views[:, 1]).flatten(1).all(1) & (views[:, 1] == views[:, 2]).flatten(1).all(1)
    # a jittered view differs from its image, or from the image's grey version if it was greyed (its brightness
    # factor is continuous, so it changes the luma); an unjittered one is one of those two, to rounding
    plain = torch.where(grey[:, None, None, None], greyed, x)
    jittered = (views - plain).flatten(1).abs().amax(1) > COLOUR_TOL
    for name, fraction, p in (("jitter", jittered, p_color), ("grayscale", grey, p_gray),
                              ("jitter and grayscale", jittered & grey, p_color * p_gray)):
        assert abs(fraction.double().mean().item() - p) <= Z * math.sqrt(p * (1 - p) / b), f"{name}: wrong probability"
    luma = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64)[:, None, None]
    grey_image = (image[0].double() * luma).sum(0).float().expand(3, 2, 2)  # (3, 2, 2): the luma in every channel
    # a float32 sum of three products of values below 1: within 4 u of the float64 luma rounded to float32
    assert (greyed - grey_image).abs().max() <= 4 * U32, "grayscale is not the luma"


@pytest.mark.parametrize(("message", "old", "new"), [
    ("jitter: wrong probability", "< p_color", "< p_gray"),
    ("probabilities 0", "x = torch.where(jitter, y, x)", "x = y"),
    ("grayscale is not the luma", "grey_level(x, colours.luma).expand_as(x)", "x.mean(1, keepdim=True).expand_as(x)"),
])
def test_jitter_and_grayscale_happen_with_their_probabilities(nb: dict, message: str, old: str, new: str) -> None:
    """Controls: the jitter drawn with p_gray's probability (0.2), the jitter applied to every view (even at
    probability 0), grayscale as the channels' mean."""
    check_probabilities(nb["color_distortion"], nb["colour_space"](CPU))
    control = broken("color_distortion", (old, new))
    with pytest.raises(AssertionError, match=message):
        check_probabilities(control["color_distortion"], control["colour_space"](CPU))


# --- the encoder and projection head ---

def check_simclr(simclr_class: type) -> None:
    """The CIFAR stem (3x3, stride 1, no max-pool) keeps 32x32; the four stages give 32, 16, 8, 4 pixels with w, 2w,
    4w, 8w channels; h = f(x) has 8w dimensions for 32- and 24-pixel views (global average pooling), z = g(h) has
    proj_dim; the encoder standardises its input with the given mean and std."""
    width, proj_dim = 4, 6
    mean, std = torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1), torch.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1)
    torch.manual_seed(0)
    model = simclr_class(width, (1, 1, 1, 1), 16, proj_dim, mean, std).eval()
    shapes: list[tuple[int, ...]] = []
    modules = [model.encoder.stem, *model.encoder.layers]
    handles = [m.register_forward_hook(lambda mod, inp, out: shapes.append(tuple(out.shape[1:]))) for m in modules]
    x = torch.rand(2, 3, 32, 32, generator=gen(40))
    with torch.no_grad():
        z, h = model(x), model.encoder(x)
        h24 = model.encoder(x[:, :, :24, :24])
    for handle in handles:
        handle.remove()
    stages = [(width, 32, 32), (width, 32, 32), (2 * width, 16, 16), (4 * width, 8, 8), (8 * width, 4, 4)]
    assert shapes[:5] == stages, f"stage shapes {shapes[:5]}"
    assert h.shape == h24.shape == (2, 8 * width) and z.shape == (2, proj_dim), "h or z shape"
    with torch.no_grad():
        torch.testing.assert_close(z, model.head(h))
    torch.manual_seed(0)
    plain = simclr_class(width, (1, 1, 1, 1), 16, proj_dim, torch.zeros(1, 3, 1, 1), torch.ones(1, 3, 1, 1)).eval()
    with torch.no_grad():  # the same float operations on the same numbers (minus 0 and over 1 are exact): equal
        assert torch.equal(plain.encoder((x - mean) / std), h), "the input is not standardised"


@pytest.mark.parametrize(("message", "name", "old", "new"), [
    ("stage shapes", "ResNetEncoder", "nn.Conv2d(3, width, 3, padding=1, bias=False)",
     "nn.Conv2d(3, width, 3, stride=2, padding=1, bias=False)"),
    ("not standardised", "ResNetEncoder", "x = (x - self.mean) / self.std", "x = x"),
])
def test_the_encoder_keeps_the_cifar_resolution_and_standardises(nb: dict, message: str, name: str, old: str,
                                                                  new: str) -> None:
    """Controls: a stem of stride 2 (an ImageNet-style stem halving 32x32 at once), an encoder that feeds raw pixels."""
    check_simclr(nb["SimCLR"])
    with pytest.raises(AssertionError, match=message):
        check_simclr(broken(name, (old, new))["SimCLR"])


# --- the kNN classifier ---

K, T_KNN, CLASSES = 20, 0.1, 4  # k and t as small stand-ins for the notebook's 200 and its t = 0.1


def knn_by_hand(bank: torch.Tensor, labels: torch.Tensor, queries: torch.Tensor, k: int,
                t: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Wu et al.'s weighted vote in float64: the k bank entries most cosine-similar to a query each add exp(s / t) to
    their class. Returns the winners and which queries are safe to compare with float32: the k-th and (k+1)-th
    similarities and the two best classes' votes apart by more than float32 rounding can move them."""
    sim = queries.double() @ bank.double().T  # unit vectors: cosines
    ordered = sim.sort(dim=1, descending=True).values
    top_sim, top_idx = sim.topk(k, dim=1)
    votes = torch.zeros(len(queries), CLASSES, dtype=torch.float64)
    votes.scatter_add_(1, labels[top_idx], (top_sim / t).exp())  # (Q, C): each neighbour adds exp(s / t)
    dim = bank.shape[1]
    sim_err = (dim + 4) * U32  # a float32 cosine of unit vectors
    vote_err = sim_err / t + (k + 4) * U32  # relative: exp of a logit off by sim_err / t, a sum of k terms
    best = votes.topk(2, dim=1).values
    boundary_apart = ordered[:, k - 1] - ordered[:, k] > 2 * sim_err  # no swap between the k-th and the next
    safe = boundary_apart & (best[:, 0] - best[:, 1] > 4 * vote_err * best[:, 0])
    return votes.argmax(1), safe


def knn_data(seed: int = 50) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A bank of 200 unit features in 4 overlapping classes (noisy cluster centres in 8 dimensions) and 100 queries."""
    g = gen(seed)
    centres = torch.randn(CLASSES, 8, generator=g)
    labels = torch.randint(0, CLASSES, (300,), generator=g)
    features = F.normalize(centres[labels] + 1.2 * torch.randn(300, 8, generator=g), dim=1)
    return features[:200], labels[:200], features[200:]


def arc(cosines: list[float], plane: int) -> torch.Tensor:
    """Unit vectors in 3 dimensions at the given cosines to (1, 0, 0), in the plane of axis `plane` (1 or 2)."""
    c = torch.tensor(cosines)
    v = torch.zeros(len(c), 3)
    v[:, 0], v[:, plane] = c, (1 - c ** 2).sqrt()
    return v


def check_knn(knn_predict: Callable) -> None:
    """With k = 1, the label of the most similar entry; on a query built to tell the rules apart, the weighted vote
    and neither the majority nor a vote at another temperature; on 100 queries, the vote by hand wherever rounding
    cannot decide (at least 90 of them), at a chunk size that does not divide the queries."""
    bank, labels, queries = knn_data()
    nearest = labels[(queries @ bank.T).argmax(1)]
    predicted = knn_predict(bank, labels, queries, 1, T_KNN, num_classes=CLASSES)
    assert torch.equal(predicted, nearest), "k = 1: not the nearest entry's label alone"
    # k = 3: one close class-0 neighbour (cos 0.95) against two class-1 ones (0.6), with three far class-2 entries
    # (-0.5): e^9.5 = 13360 beats 2 e^6 = 807, so class 0 wins the weighted vote, class 1 the majority and a vote at s t
    bank3 = torch.cat([arc([0.95], 1), arc([0.6, 0.6], 2), arc([-0.5, -0.5, -0.5], 1)])
    labels3 = torch.tensor([0, 1, 1, 2, 2, 2])
    assert knn_predict(bank3, labels3, arc([1.0], 1), 3, T_KNN, num_classes=3).tolist() == [0], \
        "not weighted by exp(s / t)"
    expected, safe = knn_by_hand(bank, labels, queries, K, T_KNN)
    assert safe.sum() >= 90, "the draw has too many near-ties to test the vote"
    predicted = knn_predict(bank, labels, queries, K, T_KNN, num_classes=CLASSES, chunk=7)
    assert predicted.shape == expected.shape and torch.equal(predicted[safe], expected[safe]), \
        "not the vote of the k nearest, one per query"


@pytest.mark.parametrize(("message", "old", "new"), [
    ("not weighted", "(top_sim / t).exp()", "torch.ones_like(top_sim)"),
    ("not weighted", "(top_sim / t).exp()", "(top_sim * t).exp()"),
    ("alone", "sim.topk(min(k, len(bank)), dim=1)", "sim.topk(len(bank), dim=1)"),
    ("not the nearest", "sim.topk(min(k, len(bank)), dim=1)", "sim.topk(min(k, len(bank)), dim=1, largest=False)"),
    ("not the vote of the k nearest", "queries[start:start + chunk] @ bank.T", "queries[:chunk] @ bank.T"),
], ids=["unweighted", "tau multiplies", "all vote", "farthest vote", "chunks read the first queries"])
def test_knn_is_the_temperature_weighted_vote_of_the_k_nearest(nb: dict, message: str, old: str, new: str) -> None:
    """Controls: every neighbour votes 1; exp(s t) instead of exp(s / t); every bank entry votes (with k = 1 the
    nearest entry no longer decides alone); the k least similar vote; every chunk classifies the first queries
    again."""
    check_knn(nb["knn_predict"])
    with pytest.raises(AssertionError, match=message):
        check_knn(broken("knn_predict", (old, new))["knn_predict"])


# --- the linear probe ---

# the notebook's learning rate and L2 penalty; twice the smoke preset's 20 full-batch steps (each is a tiny Adam step)
PROBE_CFG = SimpleNamespace(seed=0, probe_lr=0.05, probe_weight_decay=5e-4, probe_steps=40)


def separable_features(per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """10 classes of 16-dimensional features, centres 4 e_c + 3 (a common offset, so that standardising matters),
    noise of std 0.3: the centres are 5.7 apart, 9 noise standard deviations on each side of the midway plane. Rows
    in a random order."""
    g = gen(seed)
    labels = torch.arange(10).repeat_interleave(per_class)[torch.randperm(10 * per_class, generator=g)]
    centres = 4 * torch.eye(10, 16) + 3
    return centres[labels] + 0.3 * torch.randn(len(labels), 16, generator=g), labels


def check_probe(linear_probe: Callable) -> None:
    """Trained on 500 separable training features, the probe scores 100% on the test features of each class alone
    (a test set's own statistics would erase its class)."""
    train_h, train_y = separable_features(50, seed=60)
    test_h, test_y = separable_features(10, seed=61)
    for c in range(10):
        accuracy = linear_probe(train_h, train_y, test_h[test_y == c], test_y[test_y == c], PROBE_CFG)
        assert accuracy == 1.0, f"class {c}: {accuracy:.0%} on separable features"


@pytest.mark.parametrize(("old", "new"), [
    ("(test_h - mu) / sd", "(test_h - test_h.mean(0)) / (test_h.std(0) + 1e-6)"),
    ("F.cross_entropy(probe(train_h), train_y)", "F.cross_entropy(probe(train_h), train_y.roll(1))"),
], ids=["test features standardised with their own statistics", "labels paired with the wrong features"])
def test_the_linear_probe_separates_separable_features(nb: dict, old: str, new: str) -> None:
    """Controls: the test features standardised with their own mean and std; the labels shifted by one row."""
    check_probe(nb["linear_probe"])
    with pytest.raises(AssertionError, match="on separable features"):
        check_probe(broken("linear_probe", (old, new))["linear_probe"])


# --- the projection of frozen features ---

def check_project(project: Callable, simclr_class: type) -> None:
    """z = g(h) with batch norm's running statistics: a row's z does not depend on the rest of its batch; the running
    statistics stay as they were; the head is back in training mode."""
    torch.manual_seed(0)
    head = simclr_class(4, (1, 1, 1, 1), 16, 6, torch.zeros(3), torch.ones(3)).head
    bn = head[1]
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(16, generator=gen(70)))
        bn.running_var.copy_(0.5 + torch.rand(16, generator=gen(71)))
    before = (bn.running_mean.clone(), bn.running_var.clone())
    h = torch.randn(12, 32, generator=gen(72))
    z = project(head, h)
    assert head.training, "the head is left in evaluation mode"
    assert torch.equal(bn.running_mean, before[0]) and torch.equal(bn.running_var, before[1]), "running stats changed"
    rows = torch.cat([project(head, h[i:i + 3])[:1] for i in range(10)])  # each row again, in a batch of 3
    # the same float32 row through matmuls of other batch sizes: within 32 u of the largest value, rounding
    assert (rows - z[:10]).abs().max() <= 32 * U32 * (1 + z.abs().max()), "a row depends on its batch"


@pytest.mark.parametrize(("message", "old", "new"), [
    ("depends on its batch|running stats", "    head.eval()\n", "\n"),
    ("evaluation mode", "    head.train()\n", "\n"),
])
def test_project_uses_the_running_statistics_and_restores_training_mode(nb: dict, message: str, old: str,
                                                                        new: str) -> None:
    """Controls: the head left in training mode (batch statistics, and it updates the running ones); the head left in
    evaluation mode afterwards."""
    check_project(nb["project"], nb["SimCLR"])
    control = broken("project", (old, new))
    with pytest.raises(AssertionError, match=message):
        check_project(control["project"], control["SimCLR"])


# --- the learning-rate schedule ---

def check_schedule(lr_factor: Callable, warmup: int = 5, total: int = 25) -> None:
    """Warm-up in equal steps of 1/W reaching 1 at its last step; no step at 0 before the end; then a half cosine:
    1 at step W, 0 at step T, f(W + d) + f(T - d) = 1, non-increasing, and 0 after T."""
    f = [lr_factor(s, warmup, total) for s in range(total + 10)]
    assert all(v > 0 for v in f[:total]), "a step at learning rate 0"
    assert all(abs(f[s] - (s + 1) / warmup) <= 1e-15 for s in range(warmup)), "not a linear warm-up to 1"
    assert f[warmup] == 1.0 and abs(f[total]) <= 1e-15, "the cosine does not run from 1 to 0"
    assert all(abs(f[warmup + d] + f[total - d] - 1) <= 1e-15 for d in range(total - warmup + 1)), "not a half cosine"
    assert all(a >= b for a, b in zip(f[warmup:], f[warmup + 1:])) and all(abs(v) <= 1e-15 for v in f[total:]), \
        "the decay turns back up or leaves 0 after T"


@pytest.mark.parametrize(("message", "old", "new"), [
    ("from 1 to 0", "max(1, total_steps - warmup_steps)", "max(1, total_steps)"),
    ("turns back up", "min(progress, 1.0)", "progress"),
    ("learning rate 0", "(step + 1) / warmup_steps", "step / warmup_steps"),
], ids=["cosine over all T steps", "no cap after T", "warm-up from 0"])
def test_the_schedule_warms_up_then_decays_by_a_half_cosine(nb: dict, message: str, old: str, new: str) -> None:
    """Floats: a few roundings of values up to 1, so 1e-15 (about 9 u of float64). Controls: a cosine over all T
    steps (it ends at 0.1, not 0); a cosine that turns back up after T; a warm-up whose first step has lr 0."""
    check_schedule(nb["lr_factor"])
    with pytest.raises(AssertionError, match=message):
        check_schedule(broken("lr_factor", (old, new))["lr_factor"])
