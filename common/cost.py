"""How long will this preset take here? One line before training, so nobody waits hours by surprise.

    announce_cost(flops=6 * n_params * tokens, device=device, preset=PRESET)

prints the preset's estimated training time on `device`: its FLOPs divided by the throughput a short matmul probe
measures on that device (in the dtype training uses there), times the fraction of it a training loop reaches
(`utilization`). Given a time measured on this very device (`measured_seconds`, e.g. from a committed run record
of the same preset and GPU), it prints that instead. Either way it says how to choose another preset. On Colab's
GPU the default preset is `full`, sized for an RTX 4090: this line is what tells a learner it would take hours.
"""

from __future__ import annotations

import time

import torch

from common.device import describe_device, synchronize
from common.precision import amp_dtype
from common.preset import get_preset

UTILIZATION = 0.4  # the fraction of the probe's matmul throughput a training loop reaches (an assumption)
OTHER_PRESETS = {"smoke": "seconds: a test", "quick": "minutes on a laptop CPU", "full": "sized for an RTX 4090"}


def probe_flops(device: torch.device | str, seconds: float = 0.3, size: int | None = None, windows: int = 5) -> float:
    """Floating-point operations per second of square matmuls on `device` for about `seconds`, in the dtype
    training runs in there (`amp_dtype`, the one `common.autocast` uses: bf16 from compute capability 8.0, fp16 on
    7.x such as a T4, whose bf16 is only emulated; float32 elsewhere). `size`: the matrix side (default 4096
    on CUDA, 512 elsewhere). The time is cut into `windows` equal parts and the fastest part's rate is returned:
    a moment in which something else has the cores (another process, a thread finishing) slows one part, not the
    estimate (a data-parallelism run once averaged 0.016 TFLOP/s on a CPU that gives 0.13, and printed 32 min for a
    training of 3)."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    n = size or (4096 if cuda else 512)
    dtype = amp_dtype(device) or torch.float32
    gen = torch.Generator(device=device).manual_seed(0)  # its own stream: the notebook's random numbers stay as they are
    a = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    a @ b  # warm-up: kernels chosen and memory allocated outside the timed part
    synchronize(device)
    best = 0.0
    for _ in range(windows):
        count, start, elapsed = 0, time.perf_counter(), 0.0
        while elapsed < seconds / windows:
            for _ in range(4):
                a @ b
            count += 4
            synchronize(device)
            elapsed = time.perf_counter() - start
        best = max(best, 2 * n**3 * count / elapsed)
    return best


def format_duration(seconds: float) -> str:
    """'45 s', '12 min', '3.4 h', '2.1 days'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def announce_cost(flops: float, device: torch.device | str, preset: str | None = None, *,
                  utilization: float = UTILIZATION, measured_seconds: float | None = None,
                  probe_seconds: float = 0.3) -> float:
    """Print the estimated (or measured) training time of `preset` (default: the active one) on `device`, and
    how to choose another preset; return the seconds. `flops`: the preset's training FLOPs (e.g. 6 x parameters x
    tokens, or 3 x forward FLOPs x samples)."""
    device = torch.device(device)
    preset = preset or get_preset()
    name = describe_device(device)
    if measured_seconds is not None:
        seconds = float(measured_seconds)
        how = "measured on this device by a committed run"
    else:
        rate = probe_flops(device, probe_seconds)
        seconds = flops / (rate * utilization)
        how = (f"estimated: {flops:.2g} FLOPs at {utilization:.0%} of the {rate / 1e12:.3g} TFLOP/s a matmul probe "
               f"measured here")
    others = "; ".join(f"{p}: {text}" for p, text in OTHER_PRESETS.items() if p != preset)
    print(f"Preset `{preset}` on {name}: about {format_duration(seconds)} of training ({how}). "
          f"Another preset ({others}): run `%env DL_PRESET=quick` (or smoke) first, then the notebook again.")
    return seconds
