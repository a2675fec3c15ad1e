"""The yardstick of `common.fid`: a small digit classifier, loaded from the weights committed in this package.

One network per dataset (MNIST, Fashion-MNIST), trained once by `scripts/train_fid_classifier.py` and committed
as `common/fid_weights/fid_classifier_<dataset>.pt` (under a megabyte each), with its SHA-256 pinned in
`common/fid_weights/SHA256SUMS`. Every machine loads the same file, so a GPU run's `fid` and a laptop's are
measured with the same network. Nothing is trained here, and nothing is cached or written: a file whose
SHA-256 differs from the pinned one (changed, truncated, corrupt) is an error (`FIDClassifierError`), never
silently replaced. Its 128-d penultimate-layer features are what `common/fid.py` compares.

`fid()` remembers which classifier files scored in this process (`scored_classifiers()`), and
`write_run_record` writes their SHA-256 into the record as `fid_classifier_sha256`: two fid numbers are
comparable only if they were made with the same file (and the same dataset and sample count).
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import torch
from torch import nn

from common.precision import fp32_exact

SUPPORTED_DATASETS: tuple[str, ...] = ("mnist", "fashion_mnist")
FORMAT_VERSION = 1  # the layout and recipe version of the committed files (scripts/train_fid_classifier.py)
WIDTHS = (24, 48, 96)  # channels of the three conv blocks
FEATURE_DIM = 128  # width of the penultimate layer whose activations are compared
SEED = 0  # seed of the classifier's training (scripts/train_fid_classifier.py) and of fid's PR subsets
BATCH = 500  # images per forward pass when extracting features
CPU = torch.device("cpu")
WEIGHTS_DIR = Path(__file__).resolve().parent / "fid_weights"  # the committed files (package data)
CHECKSUMS = "SHA256SUMS"  # `sha256sum` format, in WEIGHTS_DIR: the pinned SHA-256 of every committed file
# The keys of a classifier file, in the order they are written (the order is part of the file's bytes).
ENTRY_KEYS = ("format_version", "recipe", "dataset", "level", "data", "data_sha256", "state_dict", "test_accuracy",
              "train_steps", "seed")
RETRAIN = "python scripts/train_fid_classifier.py"


class FIDClassifierError(RuntimeError):
    """A classifier file is missing, or differs from the SHA-256 pinned for it."""


class FIDClassifier(nn.Module):
    """A small CNN for 28x28 grayscale images in [0, 1]; `features()` is the 128-d penultimate layer.

    `test_accuracy` is the accuracy on the real test split recorded when it was trained, `data` that data's
    description, `sha256` the SHA-256 of the file it was loaded from (all set by `read_classifier`).
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
        self.sha256: str | None = None
        self.data = ""  # the data it was trained and tested on

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, 28, 28) in [0, 1] -> (B, feature_dim) penultimate activations."""
        return self.body((x - 0.5) / 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, 28, 28) in [0, 1] -> (B, num_classes) logits."""
        return self.head(self.features(x))


def check_dataset(dataset: str) -> None:
    if dataset not in SUPPORTED_DATASETS:
        raise ValueError(f"fid supports 28x28 grayscale datasets {SUPPORTED_DATASETS}, not {dataset!r}")


def classifier_file_name(dataset: str) -> str:
    check_dataset(dataset)
    return f"fid_classifier_{dataset}.pt"


def classifier_path(dataset: str) -> Path:
    """The committed classifier file of `dataset` (inside the installed `common` package)."""
    return WEIGHTS_DIR / classifier_file_name(dataset)


def pinned_sha256(weights_dir: Path | None = None) -> dict[str, str]:
    """{file name: SHA-256} pinned in `SHA256SUMS` of `weights_dir` (default: the package's `fid_weights`)."""
    path = (weights_dir or WEIGHTS_DIR) / CHECKSUMS
    pins = {}
    for line in path.read_text().splitlines():
        if line.strip():
            digest, name = line.split(maxsplit=1)
            pins[name.lstrip("*")] = digest.lower()
    return pins


# Plain fp32 for the yardstick: TF32 (which notebooks switch on, also oneDNN's on the CPU) and autocast off, so features
# are the same on every device. It is `common.fp32_exact`, which sets the matmul precision through torch's one API:
# the legacy `allow_tf32` flags alone left oneDNN in TF32 and made a nested `fp32_exact` raise.
exact_fp32 = fp32_exact


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
    with exact_fp32():
        for start in range(0, len(images), batch_size):
            x = to_unit_float(images[start:start + batch_size]).to(device)
            f = model.features(x)
            feats.append(f.cpu().double())  # float64 on the CPU only
            preds.append(model.head(f).argmax(1).cpu())
    return torch.cat(feats), torch.cat(preds)


def classifier_accuracy(model: FIDClassifier, images: torch.Tensor, labels: torch.Tensor,
                        device: torch.device | str = CPU) -> float:
    """Top-1 accuracy of `model` on uint8 (N, 1, 28, 28) `images` with int64 `labels`."""
    _, preds = extract_features(model, images, device)
    return float((preds == labels.cpu()).double().mean())


def serialise(entry: dict) -> bytes:
    """The bytes of a classifier file holding `entry` (the keys `ENTRY_KEYS`): byte-for-byte reproducible, so the
    file's SHA-256 names the network."""
    buffer = io.BytesIO()
    torch.save({key: entry[key] for key in ENTRY_KEYS}, buffer)
    return buffer.getvalue()


def read_classifier(path: Path, sha256: str | None = None) -> FIDClassifier:
    """The classifier in the file `path`, on the CPU in eval mode without gradients, with `.sha256` and
    `.test_accuracy` and `.data` set. With `sha256` given, a file with another SHA-256 raises `FIDClassifierError`."""
    path = Path(path)
    try:
        payload = path.read_bytes()
    except FileNotFoundError:
        raise FIDClassifierError(f"FID classifier file {path} is missing: reinstall the `common` package "
                                 f"(or `git checkout {path.name}`)") from None
    digest = hashlib.sha256(payload).hexdigest()
    if sha256 is not None and digest != sha256:
        raise FIDClassifierError(
            f"FID classifier file {path} has SHA-256 {digest}, not the pinned {sha256}: it was changed or is "
            f"corrupt, and fid numbers measured with it would not be comparable with anyone else's. Restore it "
            f"(`git checkout -- common/fid_weights`, or reinstall the package); to replace the classifier on "
            f"purpose, retrain it with `{RETRAIN}` and pin its SHA-256 in common/fid_weights/{CHECKSUMS}")
    entry = torch.load(io.BytesIO(payload), map_location=CPU, weights_only=True)  # the bytes that were checked
    with torch.random.fork_rng(devices=[]):  # building the module draws initial weights: not from the caller's RNG
        model = FIDClassifier()
    model.load_state_dict(entry["state_dict"])
    model.test_accuracy, model.sha256, model.data = float(entry["test_accuracy"]), digest, str(entry["data"])
    return model.eval().requires_grad_(False)


def load_classifier(dataset: str = "mnist", verbose: bool = True) -> FIDClassifier:
    """The committed FID classifier for `dataset` on the CPU in eval mode, checked against its pinned SHA-256."""
    name = classifier_file_name(dataset)
    pins = pinned_sha256()
    if name not in pins:
        raise FIDClassifierError(f"common/fid_weights/{CHECKSUMS} pins no SHA-256 for {name}")
    model = read_classifier(classifier_path(dataset), pins[name])
    if verbose:
        print(f"FID classifier ({dataset}): {name} (sha256 {model.sha256[:12]}, the committed one), "
              f"test accuracy {model.test_accuracy:.2%} on {model.data}")
    return model


def get_classifier(dataset: str = "mnist", device: torch.device | str = "cpu", verbose: bool = True) -> FIDClassifier:
    """The committed FID classifier for `dataset` in eval mode on `device` (the same network on every machine)."""
    return load_classifier(dataset, verbose=verbose).to(torch.device(device))


_SCORED: dict[str, str] = {}  # classifier file name -> SHA-256, for every classifier that scored in this process


def note_scored(model: FIDClassifier, dataset: str) -> None:
    """Remember that `model` scored samples in this process (`common.fid.fid` calls it)."""
    if model.sha256 is not None:
        _SCORED[classifier_file_name(dataset)] = model.sha256


def scored_classifiers() -> dict[str, str]:
    """{classifier file name: SHA-256} of every FID classifier that scored samples in this process."""
    return dict(_SCORED)
