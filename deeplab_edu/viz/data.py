"""Figures for the data and evaluation chapters: the palette, images with their masks, the void
band, training crops with their subsampled labels, the confusion matrix and the trimap bands."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

from deeplab_edu.data.transforms import denormalize, subsample_labels, to_hwc
from deeplab_edu.data.voc import CLASSES, IGNORE_INDEX, PALETTE
from deeplab_edu.metrics import trimap_band
from deeplab_edu.models.field import OUTPUT_STRIDE


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
    normalised float tensor (denormalised first) or an ``(H, W, 3)`` array or tensor."""
    if isinstance(image, torch.Tensor):
        if image.is_floating_point():
            image = denormalize(image)
        image = image.detach().cpu()
        image = (to_hwc(image) if image.shape[0] == 3 else image).numpy()
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected an RGB image, got shape {image.shape}")
    return image.astype(np.uint8)


def to_numpy(mask: np.ndarray | torch.Tensor) -> np.ndarray:
    """A tensor (any device) or array as a numpy array."""
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    return np.asarray(mask)


def overlay(
    image: np.ndarray | torch.Tensor, mask: np.ndarray | torch.Tensor, alpha: float = 0.55
) -> np.ndarray:
    """Blend class colours over an image: background pixels stay as they are, objects and void
    are tinted with their VOC colour. Returns ``(H, W, 3)`` uint8."""
    rgb, labels = as_rgb(image).astype(np.float64), to_numpy(mask)
    tint = colorize(labels).astype(np.float64)
    weight = np.where(labels[..., None] == 0, 0.0, alpha)
    return (rgb * (1 - weight) + tint * weight).round().astype(np.uint8)


def legend(
    fig: plt.Figure, labels: np.ndarray, class_names: Sequence[str] = CLASSES, *, right: float = 1
) -> None:
    """A row of class colours under the panels (the classes in ``labels``, named by
    ``class_names``), then the layout (panels left of ``right``, a fraction of the width)."""
    present = [int(v) for v in np.unique(labels)]
    handles = [plt.Rectangle((0, 0), 1, 1, color=PALETTE[v] / 255) for v in present]
    names = [class_names[v] if v < len(class_names) else "void" for v in present]
    rows = -(-len(names) // 8)
    height = fig.get_figheight()
    fig.legend(
        handles,
        names,
        loc="lower center",
        ncol=min(8, len(names)),
        fontsize=8,
        frameon=False,
        handlelength=1.2,
        columnspacing=1.0,
    )
    fig.tight_layout(rect=(0, min(0.4, (0.15 + 0.22 * rows) / height), right, 1))


def _label_map(x: np.ndarray | torch.Tensor) -> np.ndarray | None:
    """``x`` as an ``(H, W)`` label map (probabilities ``(C, H, W)`` by their argmax), or None
    if it is an RGB image (``(H, W, 3)`` uint8 array or ``(3, H, W)`` uint8 tensor)."""
    if isinstance(x, torch.Tensor) and x.dtype == torch.uint8 and x.ndim == 3 and x.shape[0] == 3:
        return None
    x = to_numpy(x)
    if x.ndim == 3 and x.shape[-1] == 3 and x.dtype == np.uint8:
        return None
    return x.argmax(0) if x.ndim == 3 else x


def _panel(x: np.ndarray | torch.Tensor) -> np.ndarray:
    """What one panel shows: an RGB image as it is, a label map in VOC colours."""
    labels = _label_map(x)
    return as_rgb(x) if labels is None else colorize(labels)


def plot_label_maps(
    image: np.ndarray | torch.Tensor,
    maps: Mapping[str, np.ndarray | torch.Tensor],
    *,
    ncols: int | None = None,
    image_title: str = "image",
    class_names: Sequence[str] = CLASSES,
) -> plt.Figure:
    """One image followed by one panel per label map (VOC colours, titled by the dict keys),
    with a legend of the classes that appear.

    Args:
        image: ``(H, W, 3)`` uint8 RGB (or a ``(3, H, W)`` uint8 tensor).
        maps: title -> ``(H, W)`` label map, or ``(C, H, W)`` probabilities (shown as argmax).
        ncols: panels per row (default: all in one row).
        class_names: the legend's name of each label (default: the VOC classes).
    """
    panels = [(image_title, _panel(image))] + [(t, _panel(m)) for t, m in maps.items()]
    ncols = ncols or len(panels)
    nrows = -(-len(panels) // ncols)
    aspect = panels[0][1].shape[0] / panels[0][1].shape[1]  # rows as high as the image needs
    size = (2.6 * ncols, (2.6 * aspect + 0.15) * nrows + 0.9)
    fig, axes = plt.subplots(nrows, ncols, figsize=size, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (title, picture) in zip(axes.flat, panels, strict=False):
        ax.imshow(picture)
        ax.set_title(title, fontsize=9)
    present = [_label_map(m) for m in maps.values()]
    legend(fig, np.concatenate([m.ravel() for m in present if m is not None]), class_names)
    return fig


def plot_examples(
    images: Sequence[np.ndarray | torch.Tensor],
    columns: Mapping[str, Sequence[np.ndarray | torch.Tensor]],
    *,
    titles: Sequence[str] | None = None,
) -> plt.Figure:
    """One row per image: the image, then one panel per column (label maps in VOC colours,
    or images such as :func:`overlay`), with a legend of the classes that appear.

    Args:
        images: RGB images (``(H, W, 3)`` uint8 arrays or ``(3, H, W)`` tensors).
        columns: column title -> one label map (or image) per row, e.g.
            ``{"ground truth": targets, "DCNN": dcnn, "DCNN + CRF": crf}``.
        titles: optional row titles.
    """
    heads = ["image", *columns]
    rows = len(images)
    fig, axes = plt.subplots(
        rows, len(heads), figsize=(2.5 * len(heads), 2.3 * rows + 0.9), squeeze=False
    )
    present = []
    for r in range(rows):
        cells = [images[r], *(column[r] for column in columns.values())]
        for c, cell in enumerate(cells):
            labels = _label_map(cell) if c > 0 else None
            if labels is not None:
                present.append(labels.ravel())
            axes[r, c].imshow(_panel(cell))
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
            if r == 0:
                axes[r, c].set_title(heads[c], fontsize=10)
        if titles is not None:
            axes[r, 0].set_ylabel(titles[r], fontsize=9)
    if present:
        legend(fig, np.concatenate(present))
    else:
        fig.tight_layout()
    return fig


def plot_void_band(
    image: torch.Tensor, mask: torch.Tensor, box: tuple[int, int, int] | None = None
) -> plt.Figure:
    """The void band: a mask, and a zoom (``box`` = top, left, side) on an object outline where
    the 255 band separates the object from the background."""
    labels = to_numpy(mask)
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
        coarse = to_numpy(subsample_labels(torch.as_tensor(target)))  # (h, w)
        rows, cols = np.mgrid[0 : coarse.shape[0], 0 : coarse.shape[1]] * stride
        void = coarse == IGNORE_INDEX
        ax.scatter(
            cols[~void],
            rows[~void],
            s=20,
            c=PALETTE[coarse[~void]] / 255,
            edgecolors="white",
            linewidths=0.4,
        )
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
                ax.text(
                    j,
                    i,
                    f"{shown[i, j]:.2f}" if normalize else f"{int(counts[i, j])}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color=colour,
                )
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
        void = to_numpy(target) == IGNORE_INDEX
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
