"""One yardstick for every generative notebook: a Fréchet distance on an in-repo digit classifier.

Inception FID needs weights from the internet and an ImageNet network that was never meant
for 28x28 grayscale digits. Instead, a small CNN is trained on the training split of the
dataset itself (MNIST or Fashion-MNIST), once, with a fixed seed, and cached next to the
dataset in `DL_DATA_DIR`. Its 128-d penultimate-layer features of generated samples are
compared with those of the real test split:

    FD = |mu_g - mu_r|^2 + tr(S_g) + tr(S_r) - 2 tr((S_g S_r)^(1/2))

computed in float64, with the matrix square root taken by eigendecomposition of the
symmetric matrix S_r^(1/2) S_g S_r^(1/2). `fid()` also returns the classifier's class
histogram of the samples (mode coverage) and the k-NN precision/recall of Kynkäänniemi et
al. (2019) in the same feature space. See `common/FID.md` for what the numbers mean.

    from common.fid import fid
    result = fid(samples, dataset="mnist", device=device)  # samples: (N, 1, 28, 28) in [0, 1]
    result["fid"], result["class_histogram"], result["precision"], result["recall"]

The classifier's quality follows the preset: `smoke` trains a tiny-budget classifier cached
under its own file name (`fid_classifier_<dataset>_smoke.pt`), so numbers from a smoke run
are only a test of the plumbing; `quick` and `full` share one well-trained classifier
(`fid_classifier_<dataset>.pt`). Compare numbers only for the same dataset, classifier
file and sample count.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from common.checkpoint import load_checkpoint, save_checkpoint
from common.data import DeviceImageLoader, ImageData, data_dir, load_image_dataset, sha256_of
from common.device import describe_device
from common.preset import PRESETS, get_preset

SUPPORTED_DATASETS: tuple[str, ...] = ("mnist", "fashion_mnist")
FORMAT_VERSION = 1  # bump when the training code changes: caches of another version are retrained
WIDTHS = (24, 48, 96)  # channels of the three conv blocks
FEATURE_DIM = 128  # width of the penultimate layer whose activations are compared
SEED = 0  # seed of the classifier's initialisation, data order and augmentation, and of the PR subsets
PR_K = 3  # k of the k-NN manifold estimate (Kynkäänniemi et al. 2019 use k = 3)
BATCH = 500  # images per forward pass when extracting features


@dataclass(frozen=True)
class TrainBudget:
    """How hard the classifier is trained: `smoke` (seconds, plumbing only) or `trained` (quick and full)."""

    steps: int  # optimizer steps
    batch_size: int  # images per step
    lr: float  # peak learning rate of the one-cycle schedule
    train_images: int | None  # use only the first n training images (None: all)


BUDGETS: dict[str, TrainBudget] = {
    "smoke": TrainBudget(steps=60, batch_size=64, lr=3e-3, train_images=4096),
    "trained": TrainBudget(steps=1500, batch_size=128, lr=3e-3, train_images=None),
}


def recipe(level: str) -> str:
    """A fingerprint of how the classifier of `level` is built and trained; a cache with another is retrained."""
    return f"v{FORMAT_VERSION} widths={WIDTHS} feature_dim={FEATURE_DIM} seed={SEED} {BUDGETS[level]}"


class FIDClassifier(nn.Module):
    """A small CNN for 28x28 grayscale images in [0, 1]; `features()` is the 128-d penultimate layer.

    `test_accuracy` is the accuracy on the real test split recorded when it was trained.
    """

    def __init__(self, widths: tuple[int, int, int] = WIDTHS, feature_dim: int = FEATURE_DIM,
                 num_classes: int = 10) -> None:
        super().__init__()
        c1, c2, c3 = widths

        def block(c_in: int, c_out: int) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                    nn.ReLU(inplace=True), nn.MaxPool2d(2)]

        self.body = nn.Sequential(
            *block(1, c1),  # (B, 1, 28, 28) -> (B, c1, 14, 14)
            *block(c1, c2),  # -> (B, c2, 7, 7)
            *block(c2, c3),  # -> (B, c3, 3, 3)
            nn.Flatten(),  # (B, c3, 3, 3) -> (B, 9 * c3)
            nn.Linear(c3 * 3 * 3, feature_dim),
            nn.ReLU(inplace=True),
        )
        self.head = nn.Linear(feature_dim, num_classes)
        self.test_accuracy = float("nan")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, 28, 28) in [0, 1] -> (B, feature_dim) penultimate activations."""
        return self.body((x - 0.5) / 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, 28, 28) in [0, 1] -> (B, num_classes) logits."""
        return self.head(self.features(x))


def _level(preset: str | None) -> str:
    preset = preset if preset is not None else get_preset()
    if preset not in PRESETS:
        raise ValueError(f"preset {preset!r} is not one of: {', '.join(PRESETS)}")
    return "smoke" if preset == "smoke" else "trained"


def _check_dataset(dataset: str) -> None:
    if dataset not in SUPPORTED_DATASETS:
        raise ValueError(f"fid supports 28x28 grayscale datasets {SUPPORTED_DATASETS}, not {dataset!r}")


def classifier_path(dataset: str, preset: str | None = None) -> Path:
    """The cache file of the classifier for `dataset` at the quality level of `preset`."""
    _check_dataset(dataset)
    suffix = "_smoke" if _level(preset) == "smoke" else ""
    return data_dir() / f"fid_classifier_{dataset}{suffix}.pt"


@contextlib.contextmanager
def _exact_fp32() -> Iterator[None]:
    """Disable TF32 (which notebooks switch on) so features are the same on every device."""
    old_matmul = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled,
                                        benchmark=torch.backends.cudnn.benchmark,
                                        deterministic=torch.backends.cudnn.deterministic, allow_tf32=False):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old_matmul


def to_unit_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] or float images as float32 (N, 1, 28, 28) in [0, 1]; floats are clipped.

    Clipping is what saving the samples as images would do; NaN or inf is an error.
    """
    x = torch.as_tensor(images)
    if x.dim() == 3:
        x = x.unsqueeze(1)  # (N, 28, 28) -> (N, 1, 28, 28)
    if x.dim() != 4 or tuple(x.shape[1:]) != (1, 28, 28):
        raise ValueError(f"expected images of shape (N, 1, 28, 28), got {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        return x.float() / 255
    x = x.float()
    if not torch.isfinite(x).all():
        raise ValueError("samples contain NaN or inf: the generator diverged")
    return x.clamp(0, 1)


@torch.no_grad()
def extract_features(model: FIDClassifier, images: torch.Tensor, device: torch.device | str,
                     batch_size: int = BATCH) -> tuple[torch.Tensor, torch.Tensor]:
    """Penultimate features (float64, CPU, (N, D)) and predicted classes (int64, CPU, (N,)) of `images`."""
    device = torch.device(device)
    model.eval()
    feats, preds = [], []
    with _exact_fp32():
        for start in range(0, len(images), batch_size):
            x = to_unit_float(images[start:start + batch_size]).to(device)
            f = model.features(x)
            feats.append(f.cpu().double())
            preds.append(model.head(f).argmax(1).cpu())
    return torch.cat(feats), torch.cat(preds)


def classifier_accuracy(model: FIDClassifier, images: torch.Tensor, labels: torch.Tensor,
                        device: torch.device | str) -> float:
    """Top-1 accuracy of `model` on uint8 (N, 1, 28, 28) `images` with int64 `labels`."""
    _, preds = extract_features(model, images, device)
    return float((preds == labels.cpu()).double().mean())


def _new_classifier() -> FIDClassifier:
    """A freshly initialised classifier (seed SEED), leaving the caller's global random state untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(SEED)  # the CPU generator only: initialisation runs on the CPU
        return FIDClassifier()


def _random_shift(x: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each image of a (B, C, H, W) batch by its own random offset of -pad..pad pixels, filling with zeros
    (a random crop of the zero-padded image): the classifier's only augmentation."""
    b, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))  # (B, C, H, W) -> (B, C, H+2p, W+2p)
    dy = torch.randint(0, 2 * pad + 1, (b,), device=x.device, generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (b,), device=x.device, generator=generator)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # (B, 1, H, 1)
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # (B, 1, 1, W)
    batch_idx = torch.arange(b, device=x.device)[:, None, None, None]  # (B, 1, 1, 1)
    chan_idx = torch.arange(c, device=x.device)[None, :, None, None]  # (1, C, 1, 1)
    return padded[batch_idx, chan_idx, rows, cols]  # (B, C, H+2p, W+2p) -> (B, C, H, W)


def _train_loop(model: FIDClassifier, data: ImageData, budget: TrainBudget, device: torch.device) -> None:
    x, y = data.tensors("train")
    n = budget.train_images or len(x)
    loader = DeviceImageLoader(x[:n], y[:n], budget.batch_size, shuffle=True, drop_last=True, device=device,
                               generator_seed=SEED)
    opt = torch.optim.AdamW(model.parameters(), lr=budget.lr, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=budget.lr, total_steps=budget.steps, pct_start=0.2)
    model.train()
    step = 0
    while step < budget.steps:
        for xb, yb in loader:
            xb = _random_shift(xb, 2, loader.generator)
            loss = F.cross_entropy(model(xb), yb)
            if not torch.isfinite(loss):
                raise RuntimeError(f"FID classifier training diverged at step {step} (loss {loss.item()})")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if step == budget.steps:
                break
    model.eval()


def train_classifier(dataset: str, level: str, device: torch.device) -> dict[str, Any]:
    """Train the classifier with a fixed seed and return its cache entry (state_dict, test accuracy, ...).

    The global random state of the caller (e.g. a notebook) is left untouched: training draws
    only from the seeded initialisation and the data loader's own generator.
    """
    data = load_image_dataset(dataset)
    budget = BUDGETS[level]
    start = time.perf_counter()
    model = _new_classifier().to(device)
    with _exact_fp32():
        _train_loop(model, data, budget, device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    accuracy = classifier_accuracy(model, *data.tensors("test"), device)
    print(f"FID classifier ({dataset}, {level}): trained in {seconds:.1f} s on {describe_device(device)}, "
          f"test accuracy {accuracy:.2%} on {data.describe()}")
    return {"format_version": FORMAT_VERSION, "recipe": recipe(level), "dataset": dataset, "level": level,
            "data": data.describe(), "data_sha256": data.sha256,
            "state_dict": {k: v.cpu() for k, v in model.state_dict().items()}, "test_accuracy": accuracy,
            "train_seconds": seconds, "train_steps": budget.steps, "seed": SEED,
            "trained_on": describe_device(device)}


def _data_sha256(dataset: str) -> str:
    """SHA-256 of the dataset file the classifier is trained and tested on (built first if missing)."""
    path = data_dir() / f"{dataset}.npz"
    if not path.exists():
        return load_image_dataset(dataset).sha256
    return sha256_of(path)


def _load_entry(path: Path, dataset: str, level: str) -> dict[str, Any] | None:
    """The cached entry at `path` if it exists and matches the current format and data, else None."""
    try:
        entry = load_checkpoint(path)
    except Exception as e:  # a corrupt or foreign file: retrain rather than fail
        print(f"FID classifier cache {path} is unreadable ({type(e).__name__}); retraining it")
        return None
    if entry is None:
        return None
    expected = {"format_version": FORMAT_VERSION, "recipe": recipe(level), "dataset": dataset, "level": level,
                "data_sha256": _data_sha256(dataset)}
    stale = [key for key, value in expected.items() if entry.get(key) != value]
    if stale:
        print(f"FID classifier cache {path} does not match ({', '.join(stale)} changed); retraining it")
        return None
    return entry


def get_classifier(dataset: str = "mnist", device: torch.device | str = "cpu", preset: str | None = None,
                   verbose: bool = True) -> FIDClassifier:
    """The FID classifier for `dataset` in eval mode on `device`, trained and cached on first use.

    `preset` (default: the active preset) picks the quality level: 'smoke' uses a tiny-budget
    classifier with its own cache file; 'quick' and 'full' share the well-trained one. The
    cache lives in `DL_DATA_DIR` and is never downloaded; delete it to retrain.
    """
    _check_dataset(dataset)
    device = torch.device(device)
    level = _level(preset)
    path = classifier_path(dataset, preset)
    entry = _load_entry(path, dataset, level)
    if entry is None:
        entry = train_classifier(dataset, level, device)
        save_checkpoint(path, entry)
    elif verbose:
        print(f"FID classifier ({dataset}, {level}): loaded {path.name}, "
              f"test accuracy {entry['test_accuracy']:.2%} on {entry['data']}")
    model = _new_classifier()
    model.load_state_dict(entry["state_dict"])
    model.test_accuracy = float(entry["test_accuracy"])
    return model.to(device).eval().requires_grad_(False)


def sqrtm_psd(mat: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric positive semi-definite matrix by eigendecomposition.

    Rounding can make tiny eigenvalues negative; they are clipped to zero.
    """
    mat = (mat + mat.T) / 2
    eigvals, eigvecs = torch.linalg.eigh(mat)
    return (eigvecs * eigvals.clamp(min=0).sqrt()) @ eigvecs.T  # V diag(sqrt(l)) V^T


def feature_stats(feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (D,) and unbiased covariance (D, D) of (N, D) features, in float64 on the CPU."""
    feats = feats.detach().cpu().double()
    return feats.mean(0), torch.cov(feats.T)  # (N, D) -> (D, N): torch.cov wants variables in rows


def frechet_distance(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor) -> float:
    """Fréchet distance between the Gaussians N(mu1, sigma1) and N(mu2, sigma2), in float64.

    tr((S1 S2)^(1/2)) is computed as the sum of the square roots of the eigenvalues of the
    symmetric PSD matrix S1^(1/2) S2 S1^(1/2), which has the same eigenvalues as S1 S2.
    A result below zero (rounding, for identical inputs) is returned as 0.
    """
    mu1, sigma1, mu2, sigma2 = (t.detach().cpu().double() for t in (mu1, sigma1, mu2, sigma2))  # float64: CPU only
    root1 = sqrtm_psd(sigma1)
    middle = root1 @ sigma2 @ root1
    tr_covmean = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    distance = (mu1 - mu2).square().sum() + sigma1.trace() + sigma2.trace() - 2 * tr_covmean
    return max(float(distance), 0.0)


def _kth_neighbour_distance(feats: torch.Tensor, k: int, chunk: int = 1024) -> torch.Tensor:
    """(N,) distance of each row of (N, D) `feats` to its k-th nearest other row."""
    radii = []
    for start in range(0, len(feats), chunk):
        dist = torch.cdist(feats[start:start + chunk], feats)  # (chunk, N)
        radii.append(dist.topk(k + 1, dim=1, largest=False).values[:, k])  # index 0 is the point itself
    return torch.cat(radii)


def _fraction_inside(query: torch.Tensor, ref: torch.Tensor, ref_radii: torch.Tensor, chunk: int = 1024) -> float:
    """Fraction of `query` rows inside at least one ball of radius `ref_radii[j]` around `ref[j]`.

    The count is an integer and the division is Python's (float64 on the CPU), so nothing in float64 runs
    on the device: Apple MPS has no float64 at all.
    """
    inside = 0
    for start in range(0, len(query), chunk):
        dist = torch.cdist(query[start:start + chunk], ref)  # (chunk, N_ref)
        inside += int((dist <= ref_radii[None, :]).any(dim=1).sum())
    return inside / len(query)


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = PR_K) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) of (N, D) feature sets.

    Each set's manifold is the union of balls around its points reaching their k-th nearest
    neighbour. Precision: fraction of fake points inside the real manifold (sample quality).
    Recall: fraction of real points inside the fake manifold (coverage). Use equal set sizes:
    the ball radii shrink as a set grows. k is capped at (set size - 1) for each set.
    """
    real, fake = real.float(), fake.float()
    if min(len(real), len(fake)) < 2:
        raise ValueError("precision/recall need at least 2 points in each set")
    with _exact_fp32():  # torch.cdist uses a matmul: no TF32 rounding of the distances
        precision = _fraction_inside(fake, real, _kth_neighbour_distance(real, min(k, len(real) - 1)))
        recall = _fraction_inside(real, fake, _kth_neighbour_distance(fake, min(k, len(fake) - 1)))
    return precision, recall


def _subset(feats: torch.Tensor, m: int) -> torch.Tensor:
    """A fixed-seed random subset of `m` rows (all rows, unshuffled, if m >= N)."""
    if m >= len(feats):
        return feats
    generator = torch.Generator().manual_seed(SEED)
    return feats[torch.randperm(len(feats), generator=generator)[:m]]


_REFERENCE: dict[tuple[str, ...], tuple[FIDClassifier, torch.Tensor, torch.Tensor, torch.Tensor]] = {}


def _reference(dataset: str, preset: str | None, device: torch.device) -> tuple[FIDClassifier, torch.Tensor,
                                                                                  torch.Tensor, torch.Tensor]:
    """(classifier, real test features, their mean, their covariance), computed once per process."""
    key = (str(data_dir()), dataset, _level(preset), str(device))
    if key not in _REFERENCE:
        model = get_classifier(dataset, device=device, preset=preset)
        real_images, _ = load_image_dataset(dataset).tensors("test")
        real_feats, _ = extract_features(model, real_images, device)
        _REFERENCE[key] = (model, real_feats, *feature_stats(real_feats))
    return _REFERENCE[key]


def fid(samples: torch.Tensor, dataset: str = "mnist", device: torch.device | str | None = None,
        preset: str | None = None) -> dict[str, Any]:
    """Fréchet distance of `samples` to the real test split, in the FID classifier's feature space.

    Args:
        samples: (N, 1, 28, 28) float in [0, 1] (clipped) or uint8 in [0, 255], N >= 2.
        dataset: 'mnist' or 'fashion_mnist' (the data the generator was trained on).
        device: where the classifier runs (default: the device of `samples`).
        preset: classifier quality level (default: the active preset; 'smoke' = tiny classifier).

    Returns a dict with:
        fid: the Fréchet distance to the whole real test split (its n_real images). It is
            biased upwards for small N: compare only runs with the same N and classifier.
        class_histogram: 10 fractions, the classifier's predicted classes of the samples.
        precision, recall: k-NN precision/recall (k=3) on m = min(N, n_real) samples and
            m real test images (fixed-seed random subsets), so both manifolds have equal size.
        n_samples: N. n_real: the number of real test images the distance was measured against.
    """
    _check_dataset(dataset)
    samples = torch.as_tensor(samples)
    if len(samples) < 2:
        raise ValueError(f"fid needs at least 2 samples (a covariance), got {len(samples)}")
    device = torch.device(device) if device is not None else samples.device
    model, real_feats, real_mu, real_sigma = _reference(dataset, preset, device)
    fake_feats, preds = extract_features(model, samples, device)
    distance = frechet_distance(*feature_stats(fake_feats), real_mu, real_sigma)
    histogram = torch.bincount(preds, minlength=10).double() / len(preds)
    m = min(len(fake_feats), len(real_feats))
    precision, recall = precision_recall(_subset(real_feats, m).float().to(device),
                                         _subset(fake_feats, m).float().to(device))
    return {"fid": distance, "class_histogram": histogram.tolist(), "precision": precision, "recall": recall,
            "n_samples": len(fake_feats), "n_real": len(real_feats)}
