"""Two plots every notebook needs (a grid of images and training curves), and the footer every figure carries.

The footer: once a notebook has asked for its preset (`get_preset`) and its device (`get_device`), every figure it
then makes with pyplot carries one grey line under it naming the preset, the device and the notebook's wall clock
when the figure was made, e.g. "quick preset · cpu (2 threads, x86_64) · made 12.3 min after the notebook started".
So a figure copied out of a notebook still says where, in which preset and after how long it was drawn. It is
matplotlib's `figure.hooks` setting (matplotlib 3.7+) that calls `stamp_footer` on each new pyplot figure;
`footer_text()` says what the line reads now.
"""

from __future__ import annotations

import math
import warnings
from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

FOOTER_HOOK = "common.plot:stamp_footer"  # the `figure.hooks` entry (module:function) that stamps new figures
_RUN: dict[str, str] = {}  # what the footer names: "preset", "device" (set by get_preset and get_device)


def note_run(preset: str | None = None, device: str | None = None) -> None:
    """Remember the preset or the device's description for the footer, and make new pyplot figures carry it."""
    if preset is not None:
        _RUN["preset"] = preset
    if device is not None:
        _RUN["device"] = device
    hooks = list(plt.rcParams.get("figure.hooks", []))
    if FOOTER_HOOK not in hooks:
        plt.rcParams["figure.hooks"] = hooks + [FOOTER_HOOK]


def footer_text() -> str | None:
    """The footer a figure made now carries: preset, device and minutes since the notebook's first `import common`;
    None before the preset and the device are known."""
    if "preset" not in _RUN or "device" not in _RUN:
        return None
    from common.record import notebook_seconds  # late: common.record imports this module's package
    return f"{_RUN['preset']} preset · {_RUN['device']} · made {notebook_seconds() / 60:.1f} min after the notebook started"


def stamp_footer(fig: plt.Figure) -> None:
    """Write `footer_text()` under `fig` (outside its axes: a tight bounding box, as notebooks save, keeps it)."""
    text = footer_text()
    if text is not None:
        fig.text(0.5, 0.0, text, ha="center", va="top", fontsize=7, color="0.45")


def show_images(images: torch.Tensor | np.ndarray, nrow: int = 8, titles: Sequence[str] | None = None,
                title: str | None = None, scale: float = 1.2) -> plt.Figure:
    """Show a batch of images in a grid and return the figure.

    `images`: (B, C, H, W) or (B, H, W), either uint8 in [0, 255] or float in [0, 1]
    (floats are clipped). `titles`: one short caption per image, written above it.

    The grid is drawn as one picture on one pair of axes, with a white gap between the images: one axes per image
    cost about 13 ms each to build and lay out, over a second for a 10 x 10 grid.
    """
    x = torch.as_tensor(images).detach().cpu()
    if x.dim() == 3:
        x = x.unsqueeze(1)  # (B, H, W) -> (B, 1, H, W)
    x = x.float() / 255 if x.dtype == torch.uint8 else x.float().clamp(0, 1)
    x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x  # grey as RGB: (B, 1, H, W) -> (B, 3, H, W)
    x = x.permute(0, 2, 3, 1).numpy()  # (B, C, H, W) -> (B, H, W, C) for imshow
    b, h, w, _ = x.shape
    ncol = min(nrow, b)
    nrows = math.ceil(b / ncol)
    gap = max(1, h // 14)  # white pixels between neighbouring images
    band = round(0.3 * h) if titles is not None else 0  # pixels above each row for its captions
    cell_h, cell_w = band + h + gap, w + gap
    grid = np.ones((nrows * cell_h - gap, ncol * cell_w - gap, 3), dtype=np.float32)  # white
    for i in range(b):
        top, left = (i // ncol) * cell_h + band, (i % ncol) * cell_w
        grid[top:top + h, left:left + w] = x[i]
    fig, ax = plt.subplots(figsize=(scale * ncol, scale * nrows * (1.25 if titles else 1)))
    ax.imshow(grid, interpolation="nearest")
    ax.axis("off")
    for i, caption in enumerate((titles or [])[:b]):
        ax.text((i % ncol) * cell_w + (w - 1) / 2, (i // ncol) * cell_h + (band - 1) / 2, caption, fontsize=8,
                ha="center", va="center")
    if title:
        fig.suptitle(title)
    with warnings.catch_warnings():  # tiny grids cannot always fit their titles; the figure is still fine
        warnings.simplefilter("ignore", UserWarning)
        fig.tight_layout()
    return fig


def plot_curves(curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], xlabel: str = "step",
                ylabel: str = "loss", title: str | None = None, logy: bool = False,
                ax: plt.Axes | None = None) -> plt.Figure:
    """Plot named curves on one axis: `plot_curves({"train": (steps, losses), "val": (steps2, losses2)})`."""
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 3.5))
    else:
        fig = ax.figure
    for label, (xs, ys) in curves.items():
        ax.plot(list(xs), list(ys), label=label, marker="o" if len(xs) < 30 else None, markersize=3)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig
