"""One yardstick for every generative notebook: a Fréchet distance on an in-repo digit classifier.

Inception FID needs weights from the internet and an ImageNet network that was never meant
for 28x28 grayscale digits. Instead, a small CNN trained on the training split of the dataset
itself (MNIST or Fashion-MNIST) is the feature extractor: `common/fid_classifier.py` defines it
and loads its committed weights (the same network on every machine; `scripts/train_fid_classifier.py`
trained them). This module is the metric: the
128-d penultimate-layer features of generated samples are compared with those of the real test
split (or, to choose settings, of held-out training images passed as `reference`):

    FD = |mu_g - mu_r|^2 + tr(S_g) + tr(S_r) - 2 tr((S_g S_r)^(1/2))

computed in float64 on the CPU, with the matrix square root taken by eigendecomposition of the
symmetric matrix S_r^(1/2) S_g S_r^(1/2). `fid()` also returns the classifier's class
histogram of the samples (mode coverage) and the k-NN precision/recall of Kynkäänniemi et
al. (2019) in the same feature space. Nothing in float64 runs on the device (Apple MPS has no
float64). See `common/FID.md` for what the numbers mean.

    from common.fid import fid
    result = fid(samples, dataset="mnist", device=device)  # samples: (N, 1, 28, 28) in [0, 1]
    result["fid"], result["class_histogram"], result["precision"], result["recall"]

Every preset uses the one committed classifier of the dataset (`common/fid_weights/
fid_classifier_<dataset>.pt`). Compare numbers only for the same dataset, classifier file (its
SHA-256 is in every run record that reports fid, as `fid_classifier_sha256`) and sample count.
"""

from __future__ import annotations

from typing import Any

import torch

from common.data import ImageData, data_dir, load_image_dataset
# Re-exported: the classifier lived here before it got its own module.
from common.fid_classifier import (BATCH, FEATURE_DIM, FORMAT_VERSION, SEED, SUPPORTED_DATASETS,  # noqa: F401
                                   WIDTHS, FIDClassifier, FIDClassifierError, check_dataset, classifier_accuracy,
                                   classifier_path, exact_fp32, extract_features, get_classifier, load_classifier,
                                   note_scored, scored_classifiers, to_unit_float)

PR_K = 3  # k of the k-NN manifold estimate (Kynkäänniemi et al. 2019 use k = 3)
_exact_fp32 = exact_fp32


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
_DATA: dict[tuple[str, str], ImageData] = {}


def _reference(dataset: str, device: torch.device) -> tuple[FIDClassifier, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(classifier on `device`, real test features, their mean, their covariance), computed once per process."""
    key = (str(data_dir()), dataset, str(device))
    if key not in _REFERENCE:
        data_key = (str(data_dir()), dataset)
        if data_key not in _DATA:
            _DATA[data_key] = load_image_dataset(dataset)
        data = _DATA[data_key]
        model = load_classifier(dataset).to(device)
        real_images, _ = data.tensors("test")
        real_feats, _ = extract_features(model, real_images, device)
        _REFERENCE[key] = (model, real_feats, *feature_stats(real_feats))
    return _REFERENCE[key]


def fid(samples: torch.Tensor, dataset: str = "mnist", device: torch.device | str | None = None,
        reference: torch.Tensor | None = None) -> dict[str, Any]:
    """Fréchet distance of `samples` to the real test split (or to `reference`), in the FID classifier's feature space.

    Args:
        samples: (N, 1, 28, 28) float in [0, 1] (clipped) or uint8 in [0, 255], N >= 2.
        dataset: 'mnist' or 'fashion_mnist' (the data the generator was trained on).
        device: where the classifier runs (default: the device of `samples`). The classifier is the committed
            one whatever `device` is (see common/fid_classifier.py).
        reference: real images to compare with instead of the test split, in the format of `samples`, at least 2:
            held-out training images (a validation split) for choosing settings, so that the test split is
            scored once, for the chosen setting. Default None: the test split.

    Returns a dict with:
        fid: the Fréchet distance to the whole real test split, or to all of `reference` (its n_real images).
            It is biased upwards for small N: compare only runs with the same N, classifier and reference.
        class_histogram: 10 fractions, the classifier's predicted classes of the samples.
        precision, recall: k-NN precision/recall (k=3) on m = min(N, n_real) samples and
            m of those real images (fixed-seed random subsets), so both manifolds have equal size.
        n_samples: N. n_real: the number of real images the distance was measured against.
        reference: "test" (the test split) or "given" (`reference`).
    """
    check_dataset(dataset)
    samples = torch.as_tensor(samples)
    if len(samples) < 2:
        raise ValueError(f"fid needs at least 2 samples (a covariance), got {len(samples)}")
    device = torch.device(device) if device is not None else samples.device
    model, real_feats, real_mu, real_sigma = _reference(dataset, device)
    if reference is not None:
        reference = torch.as_tensor(reference)
        if len(reference) < 2:
            raise ValueError(f"fid needs at least 2 reference images (a covariance), got {len(reference)}")
        real_feats, _ = extract_features(model, reference, device)
        real_mu, real_sigma = feature_stats(real_feats)
    fake_feats, preds = extract_features(model, samples, device)
    distance = frechet_distance(*feature_stats(fake_feats), real_mu, real_sigma)
    histogram = torch.bincount(preds, minlength=10).double() / len(preds)
    m = min(len(fake_feats), len(real_feats))
    precision, recall = precision_recall(_subset(real_feats, m).float().to(device),
                                         _subset(fake_feats, m).float().to(device))
    note_scored(model, dataset)  # the record names the classifier: `fid_classifier_sha256`
    return {"fid": distance, "class_histogram": histogram.tolist(), "precision": precision, "recall": recall,
            "n_samples": len(fake_feats), "n_real": len(real_feats), "reference": "test" if reference is None else "given"}
