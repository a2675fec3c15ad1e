"""Datasets: MNIST, Fashion-MNIST, CIFAR-10 and Tiny Shakespeare, read from `DL_DATA_DIR`.

Image sets are stored as one `<name>.npz` file per dataset with the keys `x_train`,
`y_train`, `x_test`, `y_test` (all uint8; images (N, 28, 28) or (N, 32, 32, 3)). When the
file is missing it is built once: Fashion-MNIST from Debian's `dataset-fashion-mnist`
package if installed, otherwise by downloading with torchvision (which checks MD5 sums).
Tiny Shakespeare is the plain text file `tinyshakespeare.txt`, downloaded and checked
against its SHA-256 when missing. Offline with no file, loading fails with an error that
says which file to put where.

`DeviceImageLoader` keeps a whole small image set on the training device as uint8 and
serves shuffled, normalised batches without any worker processes: for CIFAR-sized data this
is much faster than a `DataLoader`.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent


def default_root() -> Path:
    """The folder that holds `data/`, `runs/` and `checkpoints/` by default: the repository root in a checkout
    (an editable install), else the current working folder (`common` installed from git, as on Colab)."""
    return REPO_ROOT if (REPO_ROOT / "pyproject.toml").is_file() else Path.cwd()

# name -> (image shape, number of classes, human-readable name, torchvision class name)
IMAGE_DATASETS: dict[str, tuple[tuple[int, ...], int, str, str]] = {
    "mnist": ((28, 28), 10, "MNIST", "MNIST"),
    "fashion_mnist": ((28, 28), 10, "Fashion-MNIST", "FashionMNIST"),
    "cifar10": ((32, 32, 3), 10, "CIFAR-10", "CIFAR10"),
}
# the full sizes of the original datasets (train, test), used to name subsets honestly
FULL_SIZES: dict[str, tuple[int, int]] = {
    "mnist": (60_000, 10_000),
    "fashion_mnist": (60_000, 10_000),
    "cifar10": (50_000, 10_000),
}
CLASS_NAMES: dict[str, list[str]] = {
    "mnist": [str(i) for i in range(10)],
    "fashion_mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                      "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"],
    "cifar10": ["airplane", "automobile", "bird", "cat", "deer",
                "dog", "frog", "horse", "ship", "truck"],
}
# SHA-256 of known copies that are not the original data, so records can name them honestly
KNOWN_COPIES: dict[str, str] = {
    "5f34067b7d36e6a0f4134006dfa45bfcc01aa4e25f0383625a8732072138cfa0": "decoded from a public JPEG copy",
    "9b36c2e599dc0d7ee19dca40f7e9266c8a34d9d367d81e6d6637689898755b22": "decoded from a public JPEG copy",
    "dec4f128eba980a5faa1b4af845d58d9ef09d96bb08c0bf10e7c37ba46c56b1c": "both splits cut from the official MNIST test set",
}
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"


class DatasetError(RuntimeError):
    """A dataset is missing (and could not be downloaded), corrupt or wrongly shaped."""


def data_dir() -> Path:
    """The data directory: `DL_DATA_DIR`, else `data/` at the repository root (git-ignored; see `default_root`)."""
    path = Path(os.environ.get("DL_DATA_DIR") or default_root() / "data").expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass
class ImageData:
    """An image classification dataset held in memory as uint8 NumPy arrays.

    Images are (N, H, W) for grayscale or (N, H, W, 3) for colour, as stored on disk.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    sha256: str = ""  # SHA-256 of the .npz file the arrays were read from
    note: str | None = None  # e.g. "decoded from a public JPEG copy" for a known non-original copy

    @property
    def classes(self) -> list[str]:
        return CLASS_NAMES[self.name]

    @property
    def is_full_size(self) -> bool:
        return (len(self.x_train), len(self.x_test)) == FULL_SIZES[self.name]

    def describe(self) -> str:
        """E.g. 'MNIST (8,000 train / 2,000 test images, a subset of 60,000 / 10,000)'."""
        full_train, full_test = FULL_SIZES[self.name]
        text = f"{IMAGE_DATASETS[self.name][2]} ({len(self.x_train):,} train / {len(self.x_test):,} test images"
        if not self.is_full_size:
            text += f", a subset of {full_train:,} / {full_test:,}"
        if self.note:
            text += f"; {self.note}"
        return text + ")"

    def tensors(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(images, labels) of `split` ('train' or 'test') as torch tensors: uint8 (N, C, H, W) and int64 (N,)."""
        x, y = (self.x_train, self.y_train) if split == "train" else (self.x_test, self.y_test)
        images = torch.from_numpy(x)
        images = images.unsqueeze(1) if images.dim() == 3 else images.permute(0, 3, 1, 2)  # -> (N, C, H, W)
        return images.contiguous(), torch.from_numpy(y).long()


def _missing_file_message(name: str, path: Path, reason: str) -> str:
    return (
        f"{name}: {path} not found and could not be downloaded ({reason}). "
        f"Offline? Put {path.name} (uint8 arrays x_train, y_train, x_test, y_test) in {path.parent}/ "
        f"or point DL_DATA_DIR at a folder that has it."
    )


def _validate(name: str, arrays: dict[str, np.ndarray], path: Path) -> None:
    image_shape = IMAGE_DATASETS[name][0]
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        problems = []
        if x.dtype != np.uint8 or y.dtype != np.uint8:
            problems.append(f"dtypes are {x.dtype}/{y.dtype}, expected uint8")
        if x.ndim != 1 + len(image_shape) or tuple(x.shape[1:]) != image_shape:
            problems.append(f"x_{split} has shape {x.shape}, expected (N, {', '.join(map(str, image_shape))})")
        if y.ndim != 1 or len(y) != len(x):
            problems.append(f"y_{split} has shape {y.shape} for {len(x)} images")
        elif len(y) and int(y.max()) >= IMAGE_DATASETS[name][1]:
            problems.append(f"y_{split} holds label {int(y.max())}")
        if len(x) == 0:
            problems.append(f"x_{split} is empty")
        if problems:
            raise DatasetError(f"{name}: {path} is malformed: {'; '.join(problems)}. Delete it to rebuild it.")


def _read_npz(name: str, path: Path) -> ImageData:
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = {"x_train", "y_train", "x_test", "y_test"} - set(f.files)
            if missing:
                raise DatasetError(f"{name}: {path} lacks the keys {sorted(missing)}. Delete it to rebuild it.")
            arrays = {k: f[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    except DatasetError:
        raise
    except Exception as e:  # zip/pickle/IO errors: the file is corrupt
        raise DatasetError(f"{name}: {path} is corrupt or unreadable ({e}). Delete it to rebuild it.") from e
    _validate(name, arrays, path)
    digest = sha256_of(path)
    return ImageData(name=name, **arrays, sha256=digest, note=KNOWN_COPIES.get(digest))


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def _read_idx_gz(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _from_debian_fashion_mnist(folder: Path) -> dict[str, np.ndarray]:
    files = {"x_train": "train-images-idx3-ubyte.gz", "y_train": "train-labels-idx1-ubyte.gz",
             "x_test": "t10k-images-idx3-ubyte.gz", "y_test": "t10k-labels-idx1-ubyte.gz"}
    return {key: _read_idx_gz(folder / fname) for key, fname in files.items()}


def _from_torchvision(name: str, root: Path) -> dict[str, np.ndarray]:
    import torchvision  # imported here: only the download path needs it

    cls = getattr(torchvision.datasets, IMAGE_DATASETS[name][3])
    arrays = {}
    for split, train in (("train", True), ("test", False)):
        ds = cls(root=str(root), train=train, download=True)
        x = ds.data.numpy() if isinstance(ds.data, torch.Tensor) else np.asarray(ds.data)
        y = ds.targets.numpy() if isinstance(ds.targets, torch.Tensor) else np.asarray(ds.targets)
        arrays[f"x_{split}"], arrays[f"y_{split}"] = x.astype(np.uint8), y.astype(np.uint8)
    return arrays


def load_image_dataset(name: str) -> ImageData:
    """Load 'mnist', 'fashion_mnist' or 'cifar10' from `DL_DATA_DIR/<name>.npz`, building it if missing."""
    if name not in IMAGE_DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; choose one of {sorted(IMAGE_DATASETS)}")
    path = data_dir() / f"{name}.npz"
    if not path.exists():
        if name == "fashion_mnist" and DEBIAN_FASHION_MNIST.is_dir():
            arrays = _from_debian_fashion_mnist(DEBIAN_FASHION_MNIST)
        else:
            try:
                arrays = _from_torchvision(name, data_dir() / "raw")
            except Exception as e:  # no network, a failed checksum, ...
                raise DatasetError(_missing_file_message(name, path, f"{type(e).__name__}: {e}")) from None
        _validate(name, arrays, path)
        _write_npz(path, arrays)
    return _read_npz(name, path)


def sha256_of(path: Path) -> str:
    """The SHA-256 hex digest of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_tinyshakespeare() -> str:
    """The Tiny Shakespeare corpus as one string (1,115,394 characters), downloaded once if missing."""
    path = data_dir() / "tinyshakespeare.txt"
    if not path.exists():
        with tempfile.NamedTemporaryFile(dir=path.parent, delete=False) as tmp:
            try:
                with urllib.request.urlopen(SHAKESPEARE_URL, timeout=30) as response:
                    shutil.copyfileobj(response, tmp)
            except Exception as e:
                os.unlink(tmp.name)
                raise DatasetError(
                    f"tinyshakespeare: {path} not found and could not be downloaded ({type(e).__name__}: {e}). "
                    f"Offline? Put tinyshakespeare.txt (from {SHAKESPEARE_URL}) in {path.parent}/ "
                    f"or point DL_DATA_DIR at a folder that has it."
                ) from None
        if sha256_of(Path(tmp.name)) != SHAKESPEARE_SHA256:
            os.unlink(tmp.name)
            raise DatasetError(f"tinyshakespeare: the download from {SHAKESPEARE_URL} failed its SHA-256 check.")
        os.replace(tmp.name, path)
    if sha256_of(path) != SHAKESPEARE_SHA256:
        raise DatasetError(f"tinyshakespeare: {path} has the wrong SHA-256 (corrupt or another text). Delete it to re-download.")
    return path.read_text(encoding="utf-8")


class DeviceImageLoader:
    """Shuffled mini-batches from a uint8 image set kept whole on the training device.

    A plain batcher: each batch is converted to float, scaled to [0, 1] and normalised with
    `mean`/`std`. Augmentation is left to the caller (the notebooks write their own, on the
    device, where a learner reads it; `loader.generator` is there to seed it). One pass over
    the loader is one epoch.

    Args:
        images: uint8 (N, C, H, W). labels: int64 (N,).
        batch_size: images per batch. shuffle: reshuffle every epoch.
        drop_last: skip the last, smaller batch (keeps batch statistics stable in training).
        mean, std: per-channel normalisation after scaling to [0, 1] (None: no normalisation).
        device: where the data lives and batches are made.
        generator_seed: seed of the loader's own random generator (shuffling).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, *, shuffle: bool = True,
                 drop_last: bool = False, mean: tuple[float, ...] | None = None,
                 std: tuple[float, ...] | None = None, device: torch.device | str = "cpu",
                 generator_seed: int = 0) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        self.device = torch.device(device)
        self.images = images.to(self.device)
        self.labels = labels.to(self.device)
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        channels = images.shape[1]
        self.mean = None if mean is None else torch.tensor(mean, device=self.device).view(1, channels, 1, 1)
        self.std = None if std is None else torch.tensor(std, device=self.device).view(1, channels, 1, 1)
        self.generator = torch.Generator(device=self.device).manual_seed(generator_seed)

    def __len__(self) -> int:
        n = len(self.images)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.images)
        order = (torch.randperm(n, device=self.device, generator=self.generator) if self.shuffle
                 else torch.arange(n, device=self.device))
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            idx = order[start:start + self.batch_size]
            x = self.images[idx].float().div_(255)
            if self.mean is not None:
                x = (x - self.mean) / self.std
            yield x, self.labels[idx]
