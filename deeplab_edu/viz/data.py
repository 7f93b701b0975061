"""Figures for the data chapters: the palette, images with their masks."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from deeplab_edu.data.voc import CLASSES, IGNORE_INDEX, PALETTE


def colorize(mask: np.ndarray) -> np.ndarray:
    """Class indices ``(H, W)`` to VOC colours ``(H, W, 3)`` uint8 (void drawn in cream)."""
    return PALETTE[np.asarray(mask, dtype=np.uint8)]


def plot_palette() -> plt.Figure:
    """The 21 VOC classes and the void label as colour swatches with their indices."""
    labels = [*range(len(CLASSES)), IGNORE_INDEX]
    names = [*CLASSES, "void"]
    fig, ax = plt.subplots(figsize=(9, 2.6))
    for position, (label, name) in enumerate(zip(labels, names, strict=True)):
        row, col = divmod(position, 11)
        ax.add_patch(plt.Rectangle((col, -row), 0.95, 0.55, color=PALETTE[label] / 255))
        ax.text(col + 0.47, -row - 0.12, f"{label}\n{name}", ha="center", va="top", fontsize=7)
    ax.set_xlim(-0.1, 11)
    ax.set_ylim(-1.75, 0.65)
    ax.axis("off")
    fig.tight_layout()
    return fig
