"""Train the FID classifier of `common.fid` (the yardstick of every generative notebook), on the CPU.

    python scripts/train_fid_classifier.py --dataset mnist --check   # retrain; is it the committed network?
    python scripts/train_fid_classifier.py --dataset mnist           # retrain into common/fid_weights and pin it
    python scripts/train_fid_classifier.py --dataset mnist --out DIR --steps 20 --train-images 512  # a tiny try

The notebooks never train it: they load the committed file `common/fid_weights/fid_classifier_<dataset>.pt`,
whose SHA-256 is pinned in `common/fid_weights/SHA256SUMS`, so every machine measures `fid` with the same
network. This script is how that file was made, and the one way to replace it. It trains a small CNN
(`common.fid_classifier.FIDClassifier`) on the dataset's training split from a fixed seed: AdamW with a one-cycle
schedule, random shifts of up to 2 pixels as the only augmentation, plain fp32 on the CPU. The file it writes
holds only what determines the network (weights, recipe, dataset hash, test accuracy) and is byte-for-byte
reproducible for a given torch version, CPU type and thread count; another CPU type or thread count may train a
(slightly) different network, with another SHA-256. `--check` trains in memory and says whether the result is
the committed file. Replacing the committed file makes every committed record's fid incomparable with new ones
(the README's table flags records measured with another classifier): do it only with a reason, and say so.
"""

from __future__ import annotations

import argparse
import hashlib
import platform
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn.functional as F

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from common.checkpoint import atomic_write  # noqa: E402
from common.data import ImageData, load_image_dataset  # noqa: E402
from common.fid_classifier import (CHECKSUMS, CPU, FEATURE_DIM, FORMAT_VERSION, SEED, SUPPORTED_DATASETS,  # noqa: E402
                                   WEIGHTS_DIR, WIDTHS, FIDClassifier, classifier_accuracy, classifier_file_name,
                                   exact_fp32, pinned_sha256, serialise)
from common.record import cpu_model  # noqa: E402


@dataclass(frozen=True)
class TrainBudget:
    """How hard the classifier is trained."""

    steps: int  # optimizer steps
    batch_size: int  # images per step
    lr: float  # peak learning rate of the one-cycle schedule
    train_images: int | None  # use only the first n training images (None: all)


# "trained" made the committed files; "smoke" is a seconds-long budget to try the script (a useless yardstick).
BUDGETS: dict[str, TrainBudget] = {
    "smoke": TrainBudget(steps=60, batch_size=64, lr=3e-3, train_images=4096),
    "trained": TrainBudget(steps=1500, batch_size=128, lr=3e-3, train_images=None),
}


def recipe(budget: TrainBudget) -> str:
    """A fingerprint of how the classifier is built and trained, stored in its file."""
    return f"v{FORMAT_VERSION} widths={WIDTHS} feature_dim={FEATURE_DIM} seed={SEED} {budget}"


def new_classifier() -> FIDClassifier:
    """A freshly initialised classifier (seed SEED), leaving the caller's global random state untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(SEED)  # the CPU generator only: training runs on the CPU
        return FIDClassifier()


def random_shift(x: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
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


def batches(images: torch.Tensor, labels: torch.Tensor, batch_size: int,
            generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of shuffled full batches (the last, smaller one dropped) of uint8 `images` as floats in [0, 1].

    Written out here rather than borrowed from `common.data`, so that no change elsewhere can move the yardstick.
    """
    order = torch.randperm(len(images), device=CPU, generator=generator)
    for start in range(0, len(images) // batch_size * batch_size, batch_size):
        idx = order[start:start + batch_size]
        yield images[idx].float().div_(255), labels[idx]


def train_loop(model: FIDClassifier, data: ImageData, budget: TrainBudget) -> None:
    x, y = data.tensors("train")
    n = budget.train_images or len(x)
    x, y = x[:n], y[:n]
    generator = torch.Generator(device=CPU).manual_seed(SEED)  # data order and augmentation
    opt = torch.optim.AdamW(model.parameters(), lr=budget.lr, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=budget.lr, total_steps=budget.steps, pct_start=0.2)
    model.train()
    step = 0
    while step < budget.steps:
        for xb, yb in batches(x, y, budget.batch_size, generator):
            xb = random_shift(xb, 2, generator)
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


def train_classifier(data: ImageData, level: str, budget: TrainBudget) -> dict[str, Any]:
    """Train the classifier on `data` on the CPU with a fixed seed; return its file's entry (`ENTRY_KEYS`).

    The global random state is left untouched: training draws only from the seeded initialisation and its own
    generator, in plain fp32.
    """
    model = new_classifier()
    with torch.inference_mode(False), torch.enable_grad(), exact_fp32():
        train_loop(model, data, budget)
    accuracy = classifier_accuracy(model, *data.tensors("test"))
    return {"format_version": FORMAT_VERSION, "recipe": recipe(budget), "dataset": data.name, "level": level,
            "data": data.describe(), "data_sha256": data.sha256,
            "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "test_accuracy": accuracy, "train_steps": budget.steps, "seed": SEED}


def write_pinned(out: Path, name: str, payload: bytes) -> str:
    """Write the classifier file `name` into `out` and pin its SHA-256 in `out/SHA256SUMS`; return the SHA-256."""
    digest = hashlib.sha256(payload).hexdigest()
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / name) as f:
        f.write(payload)
    pins = pinned_sha256(out) if (out / CHECKSUMS).exists() else {}
    pins[name] = digest
    with atomic_write(out / CHECKSUMS) as f:
        f.write("".join(f"{sha}  {file}\n" for file, sha in sorted(pins.items())).encode())
    return digest


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=SUPPORTED_DATASETS, required=True)
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="trained",
                        help="'trained' made the committed files; 'smoke' trains in seconds")
    parser.add_argument("--steps", type=int, help="override the budget's optimizer steps")
    parser.add_argument("--train-images", type=int, help="override the budget's number of training images")
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR,
                        help="folder to write the file and its SHA256SUMS line into (default: common/fid_weights)")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 unless the trained file is the committed one, byte for byte")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    budget = BUDGETS[args.budget]
    if args.steps is not None or args.train_images is not None:
        budget = replace(budget, steps=args.steps or budget.steps,
                         train_images=args.train_images if args.train_images is not None else budget.train_images)
    level = args.budget if budget == BUDGETS[args.budget] else "custom"
    data = load_image_dataset(args.dataset)
    print(f"Training the FID classifier for {data.describe()}: {budget}, on the CPU ({cpu_model()}, "
          f"{torch.get_num_threads()} threads, {platform.machine()}, torch {torch.__version__})", flush=True)
    start = time.perf_counter()
    entry = train_classifier(data, level, budget)
    seconds = time.perf_counter() - start
    payload = serialise(entry)
    digest = hashlib.sha256(payload).hexdigest()
    name = classifier_file_name(args.dataset)
    committed = pinned_sha256().get(name)
    same = digest == committed
    print(f"trained in {seconds:.1f} s; test accuracy {entry['test_accuracy']:.2%}; {name} sha256 {digest}: "
          + ("the committed classifier, byte for byte" if same else f"NOT the committed one ({committed})"))
    if args.check:
        return 0 if same else 1
    digest = write_pinned(args.out, name, payload)
    print(f"wrote {args.out / name} and pinned it in {args.out / CHECKSUMS}")
    if args.out.resolve() == WEIGHTS_DIR.resolve() and not same:
        print("The committed classifier is replaced: fid numbers in committed records were measured with the old "
              "one and are no longer comparable with new ones (the README's table will flag them).")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
