"""Seed every random number generator a notebook touches."""

from __future__ import annotations

import hashlib
import os
import random
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch (all devices).

    With `deterministic=True`, also ask torch for deterministic kernels (slower, and some
    operations then raise an error instead of running non-deterministically). Without it,
    runs on a GPU are close but not bit-identical from one run to the next.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # seeds CPU and every CUDA device
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    elif torch.are_deterministic_algorithms_enabled():
        # only when needed: this call imports torch.compile's machinery, seconds of a CPU run's start-up
        torch.use_deterministic_algorithms(False)


def seed_from_env(default: int) -> int:
    """The seed a notebook's Config uses: the integer in `DL_SEED` if that is set, else `default`. A second-seed run
    then needs no edit of the notebook (`DL_SEED=2 DL_PRESET=quick python scripts/run_notebook.py ...`); the run
    record's config shows the seed that ran."""
    value = os.environ.get("DL_SEED", "").strip()
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"DL_SEED={os.environ['DL_SEED']!r} is not an integer seed (unset it for the default, "
                         f"{default})") from None


def stream_seed(seed: int, stream: str) -> int:
    """The seed of one named random stream of a run seeded with `seed` ("batches", "augmentation", "noise", ...).

    Different streams of one run, and one stream of runs with different seeds, get unrelated seeds (the first four
    bytes of a SHA-256 of both): seeding two streams with `seed`, or streams of one run with `seed + k` while other
    runs use `seed + k` as their own seed, makes one repeat the other's draws. Equal values happen only by a
    1-in-2**32 chance. The value is below 2**32 because torch's CPU generator keeps only a seed's low 32 bits
    (2**32 + s draws what s draws): seeds apart by a multiple of 2**32 would not separate two streams there."""
    digest = hashlib.sha256(f"{int(seed)}/{stream}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def rng_state() -> dict[str, Any]:
    """The state of every global random generator (Python, NumPy, torch's CPU one, each CUDA device's and Apple
    MPS's, where there is one), in types a `weights_only` checkpoint accepts. Save it with a checkpoint, so that a resumed run draws the same
    dropout masks and noise as the uninterrupted run would have; `set_rng_state` puts it back."""
    kind, key, pos, has_gauss, cached = np.random.get_state()
    return {"python": random.getstate(),
            "numpy": (kind, torch.from_numpy(key.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else [],
            "mps": torch.mps.get_rng_state() if torch.backends.mps.is_available() else None}


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the generators saved by `rng_state` (CUDA's and MPS's only if the state has them and the device is
    here: a checkpoint written on the CPU resumes on a GPU with the GPU's streams as they are; one written on more
    GPUs than this machine has restores the streams of the GPUs it has)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, key, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, key.cpu().numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        # CUDA first: before it is initialised torch queues these calls and, on initialisation, runs queued seeding
        # (an earlier `seed_everything`) after them, which would put the streams back at the run's start.
        torch.cuda.init()
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]][:torch.cuda.device_count()])
    if state.get("mps") is not None and torch.backends.mps.is_available():  # absent from older checkpoints
        torch.mps.set_rng_state(state["mps"].cpu())
