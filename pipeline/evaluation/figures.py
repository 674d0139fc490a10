"""Attention figures: the image, then one panel per generated word with its attention map on top.

Used by `evaluate` (a few test images) and `caption` (new photos). Matplotlib with the Agg
backend, so it works on machines without a display.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

from pipeline.encoder.images import read_rgb
from pipeline.files import atomic_path

COLUMNS = 5


def attention_grid(alpha: torch.Tensor) -> torch.Tensor:
    """(P,) attention weights -> (g, g) grid, row-major as the encoder lays regions out."""
    grid = math.isqrt(alpha.numel())
    if grid * grid != alpha.numel():
        raise ValueError(f"{alpha.numel()} attention weights do not form a square grid")
    return alpha.reshape(grid, grid)


def upsample(alpha: torch.Tensor, height: int, width: int) -> np.ndarray:
    """(P,) attention -> (height, width) map, bilinear, for drawing over the image."""
    grid = attention_grid(alpha.float())[None, None]  # (1, 1, g, g)
    return F.interpolate(grid, size=(height, width), mode="bilinear", align_corners=False)[0, 0].numpy()


def draw_attention(image_path: str | Path, words: Sequence[str], alphas: torch.Tensor, out_path: str | Path,
                   title: str | None = None) -> None:
    """Write a PNG: the image, then each word over its attention map. alphas (L, P)."""
    # decoded as the encoder decodes it: upright, 16-bit scaled to 8-bit (PIL's convert would clip it to white)
    image = read_rgb(image_path).permute(1, 2, 0).numpy()  # (H, W, 3) uint8
    height, width = image.shape[:2]
    panels = 1 + len(words)
    rows = math.ceil(panels / COLUMNS)
    figure, axes = plt.subplots(rows, COLUMNS, figsize=(2.6 * COLUMNS, 2.8 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    axes.flat[0].imshow(image)
    axes.flat[0].set_title(title or Path(image_path).name, fontsize=8)
    for ax, word, alpha in zip(axes.flat[1:], words, alphas):
        ax.imshow(image)
        ax.imshow(upsample(alpha, height, width), cmap="jet", alpha=0.5)
        ax.set_title(word, fontsize=11)
    figure.tight_layout()
    with atomic_path(out_path) as tmp:
        figure.savefig(tmp, format="png", dpi=80)
    plt.close(figure)
