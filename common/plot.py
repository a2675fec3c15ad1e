"""Two plots every notebook needs: a grid of images and training curves."""

from __future__ import annotations

import math
import warnings
from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch


def show_images(images: torch.Tensor | np.ndarray, nrow: int = 8, titles: Sequence[str] | None = None,
                title: str | None = None, scale: float = 1.2) -> plt.Figure:
    """Show a batch of images in a grid and return the figure.

    `images`: (B, C, H, W) or (B, H, W), either uint8 in [0, 255] or float in [0, 1]
    (floats are clipped). `titles`: one short caption per image.
    """
    x = torch.as_tensor(images).detach().cpu()
    if x.dim() == 3:
        x = x.unsqueeze(1)  # (B, H, W) -> (B, 1, H, W)
    x = x.float() / 255 if x.dtype == torch.uint8 else x.float().clamp(0, 1)
    x = x.permute(0, 2, 3, 1).numpy()  # (B, C, H, W) -> (B, H, W, C) for imshow
    b = x.shape[0]
    ncol = min(nrow, b)
    nrows = math.ceil(b / ncol)
    fig, axes = plt.subplots(nrows, ncol, figsize=(scale * ncol, scale * nrows * (1.25 if titles else 1)), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < b:
            img = x[i, :, :, 0] if x.shape[-1] == 1 else x[i]
            ax.imshow(img, cmap="gray" if x.shape[-1] == 1 else None, vmin=0, vmax=1)
            if titles is not None:
                ax.set_title(titles[i], fontsize=8)
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
