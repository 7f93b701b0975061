"""Figures for the data and evaluation chapters: the palette, images with their masks, the void
band, training crops with their subsampled labels, the confusion matrix and the trimap bands."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

from deeplab_edu.data.transforms import denormalize, subsample_labels
from deeplab_edu.data.voc import CLASSES, IGNORE_INDEX, PALETTE
from deeplab_edu.metrics import trimap_band
from deeplab_edu.models.deeplab import OUTPUT_STRIDE


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


def as_rgb(image: np.ndarray | torch.Tensor) -> np.ndarray:
    """An image as ``(H, W, 3)`` uint8 for plotting: accepts a ``(3, H, W)`` uint8 tensor, a
    normalised float tensor (denormalised first) or an ``(H, W, 3)`` array."""
    if isinstance(image, torch.Tensor):
        if image.is_floating_point():
            image = denormalize(image)
        image = image.detach().cpu().permute(1, 2, 0).numpy()
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected an RGB image, got shape {image.shape}")
    return image.astype(np.uint8)


def _labels(mask: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    return np.asarray(mask)


def overlay(image: np.ndarray | torch.Tensor, mask: np.ndarray | torch.Tensor, alpha: float = 0.55):
    """Blend class colours over an image: background pixels stay as they are, objects and void
    are tinted with their VOC colour. Returns ``(H, W, 3)`` uint8."""
    rgb, labels = as_rgb(image).astype(np.float64), _labels(mask)
    tint = colorize(labels).astype(np.float64)
    weight = np.where(labels[..., None] == 0, 0.0, alpha)
    return (rgb * (1 - weight) + tint * weight).round().astype(np.uint8)


def _legend(ax: plt.Axes, labels: np.ndarray) -> None:
    present = [int(v) for v in np.unique(labels)]
    handles = [plt.Rectangle((0, 0), 1, 1, color=PALETTE[v] / 255) for v in present]
    names = [CLASSES[v] if v < len(CLASSES) else "void" for v in present]
    ax.legend(
        handles, names, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, frameon=False
    )


def plot_examples(
    samples: Sequence[tuple[torch.Tensor, torch.Tensor]], titles: Sequence[str] | None = None
) -> plt.Figure:
    """Images (top row), their ground truth in VOC colours (middle) and the overlay (bottom)."""
    n = len(samples)
    fig, axes = plt.subplots(3, n, figsize=(2.3 * n + 1.2, 6.6), squeeze=False)
    all_labels = []
    for k, (image, mask) in enumerate(samples):
        labels = _labels(mask)
        all_labels.append(labels.ravel())
        axes[0, k].imshow(as_rgb(image))
        axes[1, k].imshow(colorize(labels))
        axes[2, k].imshow(overlay(image, labels))
        if titles is not None:
            axes[0, k].set_title(titles[k], fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for row, name in enumerate(("image", "ground truth", "overlay")):
        axes[row, 0].set_ylabel(name)
    _legend(axes[1, -1], np.concatenate(all_labels))
    fig.tight_layout()
    return fig


def plot_void_band(
    image: torch.Tensor, mask: torch.Tensor, box: tuple[int, int, int] | None = None
) -> plt.Figure:
    """The void band: a mask, and a zoom (``box`` = top, left, side) on an object outline where
    the 255 band separates the object from the background."""
    labels = _labels(mask)
    if box is None:  # centre the zoom on the first void pixel found
        ys, xs = np.nonzero(labels == IGNORE_INDEX)
        side = max(16, min(labels.shape) // 4)
        top = int(np.clip(ys[len(ys) // 2] - side // 2, 0, labels.shape[0] - side))
        left = int(np.clip(xs[len(xs) // 2] - side // 2, 0, labels.shape[1] - side))
        box = (top, left, side)
    top, left, side = box
    window = (slice(top, top + side), slice(left, left + side))
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.4))
    axes[0].imshow(colorize(labels))
    axes[0].add_patch(plt.Rectangle((left - 0.5, top - 0.5), side, side, fill=False, ec="red"))
    axes[0].set_title("mask (box: zoomed region)", fontsize=9)
    axes[1].imshow(as_rgb(image)[window], interpolation="nearest")
    axes[1].set_title("image, zoomed", fontsize=9)
    axes[2].imshow(colorize(labels[window]), interpolation="nearest")
    axes[2].set_title("labels, zoomed: cream = void (255)", fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return fig


def plot_training_crops(
    crops: Sequence[tuple[torch.Tensor, torch.Tensor]], stride: int = OUTPUT_STRIDE
) -> plt.Figure:
    """Training crops with the labels the loss sees: each ground-truth label subsampled by
    ``stride`` is drawn as a dot at the centre of its output cell (pixel ``stride * i``);
    void cells are drawn as crosses."""
    n = len(crops)
    fig, axes = plt.subplots(1, n, figsize=(2.8 * n, 3.0), squeeze=False)
    for ax, (image, target) in zip(axes[0], crops, strict=True):
        ax.imshow(as_rgb(image))
        coarse = _labels(subsample_labels(torch.as_tensor(target)))  # (h, w)
        rows, cols = np.mgrid[0 : coarse.shape[0], 0 : coarse.shape[1]] * stride
        void = coarse == IGNORE_INDEX
        ax.scatter(cols[~void], rows[~void], s=20, c=PALETTE[coarse[~void]] / 255,
                   edgecolors="white", linewidths=0.4)  # fmt: skip
        ax.scatter(cols[void], rows[void], s=20, marker="x", c="white", linewidths=0.6)
        ax.set_title(f"{tuple(target.shape)} crop, {coarse.shape} labels", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return fig


def plot_confusion_matrix(
    matrix: torch.Tensor | np.ndarray, names: Sequence[str], *, normalize: bool = True
) -> plt.Figure:
    """The confusion matrix (rows: ground truth, columns: prediction), each row divided by its
    total so that the diagonal is the per-class accuracy (recall)."""
    counts = np.asarray(matrix.cpu() if isinstance(matrix, torch.Tensor) else matrix, float)
    shown = counts / np.maximum(counts.sum(1, keepdims=True), 1) if normalize else counts
    n = len(names)
    fig, ax = plt.subplots(figsize=(0.55 * n + 2.2, 0.5 * n + 1.6))
    im = ax.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    for i in range(n):
        for j in range(n):
            if counts[i, j]:
                colour = "white" if shown[i, j] > 0.5 * shown.max() else "black"
                ax.text(j, i, f"{shown[i, j]:.2f}" if normalize else f"{int(counts[i, j])}",
                        ha="center", va="center", fontsize=7, color=colour)  # fmt: skip
    ax.set_xticks(range(n), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), names, fontsize=8)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    fig.colorbar(im, ax=ax, fraction=0.046, label="fraction of the row" if normalize else "pixels")
    fig.tight_layout()
    return fig


def plot_trimap_bands(
    image: torch.Tensor, target: torch.Tensor, widths: Sequence[int] = (2, 10)
) -> plt.Figure:
    """The paper's Fig. 5a: the pixels within ``w`` pixels of a void (object-outline) pixel,
    for each band width, shown white over a darkened image; the void pixels themselves (in the
    band but never scored) are grey."""
    fig, axes = plt.subplots(1, len(widths) + 1, figsize=(3.3 * (len(widths) + 1), 3.2))
    axes[0].imshow(overlay(image, target))
    axes[0].set_title("ground truth", fontsize=9)
    for ax, width in zip(axes[1:], widths, strict=True):
        band = trimap_band(torch.as_tensor(target), width).cpu().numpy()
        void = _labels(target) == IGNORE_INDEX
        shown = (as_rgb(image) * 0.35).astype(np.uint8)
        shown[band] = 255
        shown[void] = 150
        ax.imshow(shown)
        scored = (band & ~void).mean()
        ax.set_title(f"band of {width} px: {scored:.0%} of pixels scored", fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return fig
