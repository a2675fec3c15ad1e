"""Does sampling in bf16 change DDPM's fid beyond its seed-to-seed noise? A measurement for issue 23.

    DL_PRESET=quick python scripts/sampling_precision.py --n 1000 --seeds 0 10      # on a CPU (minutes)
    DL_PRESET=full python scripts/sampling_precision.py --n 10000 --seeds 0 10      # on a GPU

Runs the DDPM notebook's own cells, in a kernel, up to and including its training loop: with `resume = True`, so a
finished checkpoint of the preset (`common.checkpoint_path`) is loaded instead of trained again; without one the
preset is trained first. Then, in the same kernel, the notebook's headline sampler (DDIM with `headline_max_steps`
steps, unconditional, the EMA model) draws the same images twice for each seed, from the same initial noise:

- `fp32`: inside `fp32_exact()` (no TF32, no autocast), as the notebook samples everything it scores;
- `bf16`: the network under bf16 autocast (with TF32 allowed on CUDA), the sampler's own arithmetic still in fp32.
  On a CPU this is torch's CPU autocast with its convolutions and matrix products computed as bf16 tensor cores
  do (bf16 inputs, fp32 accumulation, bf16 output; `_TensorCoreBf16` below): the rounding a GPU's bf16 sampling
  applies, at about fp32 speed. A CPU's timing says nothing about a GPU's.

Each sample set is scored against the notebook's validation split (held-out training images: a choice of setting is
never made on the test split). Seeds differ in their initial noise, so |fid(seed a) - fid(seed b)| at one precision is
the noise a precision effect must exceed; the paired difference fid(bf16) - fid(fp32) at one seed is the effect. The
record (JSON) goes to `results/image_generation/ddpm/sampling_precision/`, a folder the README's table does not read.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parent))
from notebook_measurement import run_in_kernel, write_record  # noqa: E402  (kernel, provenance, record file)

REPO_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO_ROOT / "image_generation" / "ddpm" / "ddpm.ipynb"
OUT_DIR = REPO_ROOT / "results" / "image_generation" / "ddpm" / "sampling_precision"

TENSOR_CORE_BF16 = r'''
from torch.utils._python_dispatch import TorchDispatchMode as _TorchDispatchMode

class _TensorCoreBf16(_TorchDispatchMode):
    """Under CPU bf16 autocast: each convolution and matrix product whose inputs autocast made bf16 is computed in
    fp32 on those bf16 values, and its output rounded to bf16: what a GPU's bf16 tensor cores compute (bf16 inputs,
    fp32 accumulation, bf16 output), at about fp32 speed on a CPU without native bf16 (where torch's own bf16
    convolutions ran 23 times slower than fp32 on a 2-core AMD EPYC). Every other op runs as autocast made it."""
    OPS = {"convolution", "mm", "addmm", "bmm", "baddbmm", "_scaled_dot_product_flash_attention_for_cpu"}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        is_bf16 = lambda a: isinstance(a, torch.Tensor) and a.dtype == torch.bfloat16
        if func.__name__.split(".")[0] in self.OPS and any(is_bf16(a) for a in args):
            up = lambda a: a.float() if is_bf16(a) else a
            out = func(*[up(a) for a in args], **{k: up(v) for k, v in kwargs.items()})
            down = lambda o: o.bfloat16() if isinstance(o, torch.Tensor) and o.is_floating_point() else o
            return tuple(down(o) for o in out) if isinstance(out, tuple) else down(out)
        return func(*args, **kwargs)
'''

MEASURE = TENSOR_CORE_BF16 + r'''
import contextlib
import json as _json
import time as _time

from common.fid_classifier import scored_classifiers as _scored_classifiers

def _draw(precision: str, seed: int, n: int, steps: int) -> tuple[torch.Tensor, float]:
    """n unconditional DDIM samples in [0, 1] from the seed's noise, the network in `precision`; and seconds."""
    labels = torch.full((n,), num_classes, device=device)  # the null label: unconditional
    gen = torch.Generator(device=device).manual_seed(seed)
    if precision == "fp32":
        ctx, emulate = fp32_exact(), contextlib.nullcontext()
    else:
        enable_tf32()
        ctx = torch.autocast(device.type, dtype=torch.bfloat16)
        emulate = _TensorCoreBf16() if device.type == "cpu" else contextlib.nullcontext()
    out, start = [], _time.perf_counter()
    with ctx, emulate:
        for i in range(0, n, cfg.sample_batch):
            x = ddim_sample(ema_model, labels[i:i + cfg.sample_batch], steps, sched_buf["alpha_bars"], 0.0,
                            num_classes, cfg.prediction, gen)
            out.append(x.float().add(1).div(2).clamp(0, 1))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return torch.cat(out).cpu(), _time.perf_counter() - start

_steps = cfg.headline_max_steps
for _p in ("fp32", "bf16"):  # warm-up: one step per precision (cuDNN's kernel search), untimed
    _draw(_p, 0, min(cfg.sample_batch, __N__), 1)
_runs = []
for _seed in __SEEDS__:
    _images = {}
    for _p in ("fp32", "bf16"):
        _images[_p], _secs = _draw(_p, _seed, __N__, _steps)
        _r = fid(_images[_p], dataset=cfg.dataset, device=device, reference=x_val)  # the validation split
        _runs.append({"seed": _seed, "precision": _p, "val_fid": _r["fid"], "precision_metric": _r["precision"],
                      "recall": _r["recall"], "sample_seconds": _secs})
        print(f"seed {_seed}, {_p}: validation fid {_r['fid']:.2f} ({_secs:.0f} s)", flush=True)
    _diff = (_images["bf16"] - _images["fp32"]).abs()
    _runs[-1]["mean_abs_pixel_diff_vs_fp32"] = _diff.mean().item()
    _runs[-1]["max_abs_pixel_diff_vs_fp32"] = _diff.max().item()
print("RESULT " + _json.dumps({"runs": _runs, "steps": _steps, "n": __N__, "n_val": len(x_val),
                               "sampler": f"DDIM {_steps} steps, unconditional, EMA model",
                               "bf16_mode": "CPU autocast, tensor-core emulation" if device.type == "cpu" else "autocast",
                               "device": describe_device(device), "data": data.describe(),
                               "fid_classifier_sha256": _scored_classifiers(),
                               "train_steps": cfg.steps, "preset": PRESET}))
'''


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="samples per (seed, precision); fid wants >= 500")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 10], help="initial-noise seeds (at least two)")
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="folder of the JSON record")
    args = parser.parse_args()
    assert len(args.seeds) >= 2, "two seeds at least: their difference is the noise a precision effect must exceed"
    nb = nbformat.read(NOTEBOOK, as_version=4)
    config = next(c for c in nb.cells if c.cell_type == "code" and "resume: bool = False" in c.source)
    config.source = config.source.replace("resume: bool = False", "resume: bool = True")
    loop = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code" and "cfg.stop_after_steps" in c.source)
    cells = nb.cells[:loop + 1] + [nbformat.v4.new_code_cell(
        MEASURE.replace("__N__", str(args.n)).replace("__SEEDS__", repr(tuple(args.seeds))))]
    nb.cells = cells
    result, text = run_in_kernel(nb, NOTEBOOK, "image_generation/ddpm", "sampling precision: fp32 against bf16 autocast")
    path = write_record(result, args.out, "sampling_precision")
    print(text.replace("RESULT ", "").split("\n{")[0])
    print(f"record: {path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path}")


if __name__ == "__main__":
    sys.exit(main())
