"""The yardstick of `common.fid`: a small digit classifier, its training and its cache.

A small CNN is trained on the training split of the dataset itself (MNIST or Fashion-MNIST), once,
with a fixed seed, ON THE CPU whatever device the caller uses (so a GPU run and a CPU run are scored
by the same network), and cached next to the dataset in `DL_DATA_DIR`. Its 128-d penultimate-layer
features are what `common/fid.py` compares.

The cache file holds only what determines the network (weights, recipe, dataset hash, test accuracy)
and is written byte-for-byte reproducibly, so its SHA-256 names the yardstick: `fid()` remembers which
classifier files scored in this process (`scored_classifiers()`), and `write_run_record` writes the
SHA-256 into the record as `fid_classifier_sha256`. Two fid numbers are comparable only if they were
made with the same file (and the same dataset and sample count). Training on the CPU is deterministic
for a given torch version, CPU type and thread count; another one may give a (slightly) different
network, which then has a different SHA-256. Where and how long it trained is written beside the cache
in `<cache>.json`, outside the hashed file.

The quality follows the preset: `smoke` trains a tiny-budget classifier with its own cache file
(`fid_classifier_<dataset>_smoke.pt`), only a test of the plumbing; `quick` and `full` share one
well-trained classifier (`fid_classifier_<dataset>.pt`).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from common.checkpoint import atomic_write
from common.data import ImageData, data_dir, load_image_dataset
from common.preset import PRESETS, get_preset

SUPPORTED_DATASETS: tuple[str, ...] = ("mnist", "fashion_mnist")
FORMAT_VERSION = 1  # bump when the training code changes: caches of another version are retrained
WIDTHS = (24, 48, 96)  # channels of the three conv blocks
FEATURE_DIM = 128  # width of the penultimate layer whose activations are compared
SEED = 0  # seed of the classifier's initialisation, data order and augmentation, and of fid's PR subsets
BATCH = 500  # images per forward pass when extracting features
CPU = torch.device("cpu")
# The cache file's keys, in the order they are written (the order is part of the file's bytes).
ENTRY_KEYS = ("format_version", "recipe", "dataset", "level", "data", "data_sha256", "state_dict", "test_accuracy",
              "train_steps", "seed")


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

    `test_accuracy` is the accuracy on the real test split recorded when it was trained; `sha256` the
    SHA-256 of the cache file it was loaded from (set by `load_classifier`).
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

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, 28, 28) in [0, 1] -> (B, feature_dim) penultimate activations."""
        return self.body((x - 0.5) / 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, 28, 28) in [0, 1] -> (B, num_classes) logits."""
        return self.head(self.features(x))


def level_of(preset: str | None) -> str:
    """'smoke' for the smoke preset, else 'trained' (`preset` None: the active preset)."""
    preset = preset if preset is not None else get_preset()
    if preset not in PRESETS:
        raise ValueError(f"preset {preset!r} is not one of: {', '.join(PRESETS)}")
    return "smoke" if preset == "smoke" else "trained"


def check_dataset(dataset: str) -> None:
    if dataset not in SUPPORTED_DATASETS:
        raise ValueError(f"fid supports 28x28 grayscale datasets {SUPPORTED_DATASETS}, not {dataset!r}")


def classifier_path(dataset: str, preset: str | None = None) -> Path:
    """The cache file of the classifier for `dataset` at the quality level of `preset`."""
    check_dataset(dataset)
    suffix = "_smoke" if level_of(preset) == "smoke" else ""
    return data_dir() / f"fid_classifier_{dataset}{suffix}.pt"


@contextlib.contextmanager
def exact_fp32() -> Iterator[None]:
    """Plain fp32: TF32 (which notebooks switch on) and autocast off, so features are the same on every device."""
    old_matmul = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled,
                                        benchmark=torch.backends.cudnn.benchmark,
                                        deterministic=torch.backends.cudnn.deterministic, allow_tf32=False), \
                torch.autocast("cpu", enabled=False), torch.autocast("cuda", enabled=False):
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


def _batches(images: torch.Tensor, labels: torch.Tensor, batch_size: int,
             generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of shuffled full batches (the last, smaller one dropped) of uint8 `images` as floats in [0, 1].

    Written out here rather than borrowed from `common.data`, so that no change elsewhere can move the yardstick.
    """
    order = torch.randperm(len(images), device=CPU, generator=generator)
    for start in range(0, len(images) // batch_size * batch_size, batch_size):
        idx = order[start:start + batch_size]
        yield images[idx].float().div_(255), labels[idx]


def _train_loop(model: FIDClassifier, data: ImageData, budget: TrainBudget) -> None:
    x, y = data.tensors("train")
    n = budget.train_images or len(x)
    x, y = x[:n], y[:n]
    generator = torch.Generator(device=CPU).manual_seed(SEED)  # data order and augmentation
    opt = torch.optim.AdamW(model.parameters(), lr=budget.lr, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=budget.lr, total_steps=budget.steps, pct_start=0.2)
    model.train()
    step = 0
    while step < budget.steps:
        for xb, yb in _batches(x, y, budget.batch_size, generator):
            xb = _random_shift(xb, 2, generator)
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


def train_classifier(data: ImageData, level: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train the classifier of `level` on `data` on the CPU with a fixed seed.

    Returns (cache entry: the keys `ENTRY_KEYS`, provenance: where and how long it trained). The caller's
    global random state, grad mode and autocast are left untouched: training draws only from the seeded
    initialisation and its own generator, and runs with gradients on in plain fp32.
    """
    budget = BUDGETS[level]
    start = time.perf_counter()
    model = _new_classifier()
    with torch.inference_mode(False), torch.enable_grad(), exact_fp32():
        _train_loop(model, data, budget)
    seconds = time.perf_counter() - start
    accuracy = classifier_accuracy(model, *data.tensors("test"))
    entry = {"format_version": FORMAT_VERSION, "recipe": recipe(level), "dataset": data.name, "level": level,
             "data": data.describe(), "data_sha256": data.sha256,
             "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
             "test_accuracy": accuracy, "train_steps": budget.steps, "seed": SEED}
    return entry, _provenance(seconds)


def _provenance(seconds: float | None) -> dict[str, Any]:
    from common.record import cpu_model  # imported here: record.py imports this module

    return {"train_seconds": None if seconds is None else round(seconds, 2), "trained_on": "cpu",
            "cpu": cpu_model(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "machine": platform.machine()}


def _serialise(entry: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    torch.save({key: entry[key] for key in ENTRY_KEYS}, buffer)  # torch.save is byte-for-byte reproducible
    return buffer.getvalue()


def _write_atomically(path: Path, payload: bytes) -> None:
    """Write `payload` to `path` through a temporary file and a rename: a crash never leaves half a file."""
    with atomic_write(path) as f:
        f.write(payload)


def _write_cache(path: Path, entry: dict[str, Any], provenance: dict[str, Any]) -> str:
    """Write the cache file and its provenance beside it; return the file's SHA-256."""
    payload = _serialise(entry)
    digest = hashlib.sha256(payload).hexdigest()
    _write_atomically(path, payload)
    _write_atomically(path.with_suffix(".json"),
                      (json.dumps({**provenance, "file": path.name, "sha256": digest}, indent=2) + "\n").encode())
    return digest


def _read_cache(path: Path, data: ImageData, level: str) -> tuple[dict[str, Any] | None, str | None]:
    """(entry, the file's SHA-256) of the cache at `path` if it matches the current recipe and data, else
    (None, None) after one line saying why it will be retrained. A cache written by an earlier version of
    this module (with volatile keys such as its training time) is rewritten in the reproducible layout if it
    was trained on the CPU, and retrained if it was trained on a GPU."""
    if not path.exists():
        return None, None
    try:
        payload = path.read_bytes()
        entry = torch.load(io.BytesIO(payload), map_location=CPU, weights_only=True)
        if not isinstance(entry, dict):
            raise TypeError(f"holds a {type(entry).__name__}, not a dict")
    except Exception as e:  # a corrupt, truncated or foreign file: retrain rather than fail
        print(f"FID classifier cache {path} is unreadable ({type(e).__name__}: {str(e).splitlines()[0][:120]}); "
              f"retraining it")
        return None, None
    expected = {"format_version": FORMAT_VERSION, "recipe": recipe(level), "dataset": data.name, "level": level,
                "data_sha256": data.sha256}
    stale = [key for key, value in expected.items() if entry.get(key) != value]
    if not stale and not str(entry.get("trained_on", "cpu")).startswith("cpu"):
        stale = [f"trained on {entry['trained_on']}, not on the CPU"]
    if stale or any(key not in entry for key in ENTRY_KEYS):
        print(f"FID classifier cache {path} does not match ({', '.join(stale) or 'keys missing'}); retraining it")
        return None, None
    if set(entry) != set(ENTRY_KEYS):  # the earlier layout: same network, volatile keys beside it
        seconds = entry.get("train_seconds")
        return entry, _write_cache(path, entry, _provenance(float(seconds) if seconds is not None else None))
    return entry, hashlib.sha256(payload).hexdigest()


def load_classifier(dataset: str = "mnist", preset: str | None = None, data: ImageData | None = None,
                    verbose: bool = True) -> FIDClassifier:
    """The FID classifier for `dataset` on the CPU in eval mode, with `.sha256` and `.test_accuracy` set;
    trained on the CPU and cached on first use.

    `data` is the dataset if the caller has loaded it already (it is then not loaded again).
    """
    check_dataset(dataset)
    level = level_of(preset)
    path = classifier_path(dataset, preset)
    data = data if data is not None else load_image_dataset(dataset)
    entry, digest = _read_cache(path, data, level)
    if entry is None:
        entry, provenance = train_classifier(data, level)
        digest = _write_cache(path, entry, provenance)
        print(f"FID classifier ({dataset}, {level}): trained in {provenance['train_seconds']:.1f} s on the CPU "
              f"({provenance['torch_threads']} threads), test accuracy {entry['test_accuracy']:.2%} on "
              f"{entry['data']}; {path.name} sha256 {digest[:12]}")
    elif verbose:
        print(f"FID classifier ({dataset}, {level}): loaded {path.name} (sha256 {digest[:12]}), "
              f"test accuracy {entry['test_accuracy']:.2%} on {entry['data']}")
    model = _new_classifier()
    model.load_state_dict(entry["state_dict"])
    model.test_accuracy, model.sha256 = float(entry["test_accuracy"]), digest
    return model.eval().requires_grad_(False)


def get_classifier(dataset: str = "mnist", device: torch.device | str = "cpu", preset: str | None = None,
                   verbose: bool = True) -> FIDClassifier:
    """The FID classifier for `dataset` in eval mode on `device` (trained on the CPU and cached on first use).

    `preset` (default: the active preset) picks the quality level: 'smoke' uses a tiny-budget
    classifier with its own cache file; 'quick' and 'full' share the well-trained one. The
    cache lives in `DL_DATA_DIR` and is never downloaded; delete it to retrain.
    """
    return load_classifier(dataset, preset, verbose=verbose).to(torch.device(device))


_SCORED: dict[str, str] = {}  # cache file name -> SHA-256, for every classifier that scored in this process


def note_scored(model: FIDClassifier, dataset: str, preset: str | None) -> None:
    """Remember that `model` scored samples in this process (`common.fid.fid` calls it)."""
    if model.sha256 is not None:
        _SCORED[classifier_path(dataset, preset).name] = model.sha256


def scored_classifiers() -> dict[str, str]:
    """{cache file name: SHA-256} of every FID classifier that scored samples in this process."""
    return dict(_SCORED)
