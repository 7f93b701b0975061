"""Figures for the network chapters: atrous taps, receptive fields, shift-and-stitch, fc6, and
the stride-8 scores beside their bilinear upsampling."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

from deeplab_edu.data.voc import CLASSES
from deeplab_edu.models.deeplab import upsample_scores
from deeplab_edu.models.field import OUTPUT_STRIDE, FieldStep
from deeplab_edu.models.vgg import decimation_taps
from deeplab_edu.viz.data import as_rgb, colorize, legend, to_numpy


def plot_atrous_1d(kernel: int = 3, rates: Sequence[int] = (1, 2), length: int = 13) -> plt.Figure:
    """The hole algorithm in 1-D (after the paper's Fig. 1): which inputs each output reads.

    Each panel shows an input row and an output row (stride 1, "same" padding); the lines join
    three outputs to the ``kernel`` inputs their filter reads, ``rate`` samples apart.
    """
    fig, axes = plt.subplots(len(rates), 1, figsize=(8, 1.9 * len(rates)), squeeze=False)
    positions = np.arange(length)
    for ax, rate in zip(axes[:, 0], rates, strict=True):
        half = rate * (kernel - 1) // 2
        ax.scatter(positions, np.zeros(length), s=60, c="0.75", zorder=3)
        ax.scatter(positions, np.ones(length), s=60, c="0.75", zorder=3)
        outputs = (length // 2 - 3, length // 2, length // 2 + 3)
        for output, colour in zip(outputs, ("tab:red", "tab:green", "tab:blue"), strict=True):
            taps = output - half + rate * np.arange(kernel)
            inside = (taps >= 0) & (taps < length)
            for tap in taps[inside]:
                ax.plot([output, tap], [1, 0], color=colour, lw=1.5)
            ax.scatter(taps[inside], np.zeros(inside.sum()), s=60, c=colour, zorder=4)
            ax.scatter([output], [1], s=80, c=colour, zorder=4)
        ax.set_yticks([0, 1], ["input", "output"])
        ax.set_xticks(positions)
        ax.set_ylim(-0.4, 1.4)
        ax.set_title(f"kernel {kernel}, rate (input stride) {rate}", fontsize=10)
        for side in ("top", "right", "left"):
            ax.spines[side].set_visible(False)
    fig.tight_layout()
    return fig


def plot_kernel_taps(kernel: int = 3, rates: Sequence[int] = (1, 2, 4, 12)) -> plt.Figure:
    """Where a ``kernel`` x ``kernel`` filter samples its input at several rates (same scale)."""
    extent = max(rates) * (kernel - 1) // 2 + 1
    fig, axes = plt.subplots(1, len(rates), figsize=(2.6 * len(rates), 2.8))
    for ax, rate in zip(np.atleast_1d(axes), rates, strict=True):
        offsets = rate * (np.arange(kernel) - (kernel - 1) / 2)
        ys, xs = np.meshgrid(offsets, offsets, indexing="ij")
        span = offsets[-1] - offsets[0]
        ax.add_patch(plt.Rectangle((offsets[0],) * 2, span, span, fill=False, ls="--", color="0.5"))
        ax.scatter(xs, ys, s=30, c="tab:red", zorder=3)
        ax.set_xlim(-extent, extent)
        ax.set_ylim(-extent, extent)
        ax.set_aspect("equal")
        ax.set_title(f"rate {rate}: field {rate * (kernel - 1) + 1}", fontsize=10)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    return fig


def plot_field_growth(stacks: Mapping[str, Sequence[FieldStep]]) -> plt.Figure:
    """Receptive field after every layer, one line per network, layers aligned by name (the
    x axis lists the layers of the longest network)."""
    longest = max(stacks.values(), key=len)
    names = [step.name for step in longest]
    fig, ax = plt.subplots(figsize=(9, 3.6))
    # networks that share their first layers draw the same points: distinct dashes and markers,
    # the earlier lines wider, keep every curve visible where they overlap
    styles = [("-", "o", 4.0), ("--", "s", 3.0), (":", "^", 2.2), ("-.", "d", 1.5)]
    for k, (label, steps) in enumerate(stacks.items()):
        dash, marker, width = styles[k % len(styles)]
        xs = [names.index(step.name) for step in steps]
        ax.plot(
            xs,
            [step.receptive_field for step in steps],
            linestyle=dash,
            marker=marker,
            ms=3 + width / 2,
            linewidth=width,
            alpha=0.8,
            label=label,
        )
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    ax.set_ylabel("receptive field (pixels)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_stitch_pattern(factor: int = 4, cells: int = 3) -> plt.Figure:
    """Shift and stitch: which of the ``factor``^2 shifted passes fills each dense output."""
    size = factor * cells
    rows, cols = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    shift = (rows % factor) * factor + cols % factor  # pass (a, b) -> a factor + b
    fig, ax = plt.subplots(figsize=(4.2, 4.2))
    ax.imshow(shift, cmap="tab20", vmin=0, vmax=19)
    for r in range(size):
        for c in range(size):
            ax.text(c, r, f"{r % factor},{c % factor}", ha="center", va="center", fontsize=6)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"dense output: shift (a, b) of each cell, {factor * factor} passes", fontsize=9)
    fig.tight_layout()
    return fig


def plot_timings(seconds: Mapping[str, float], title: str = "") -> plt.Figure:
    """A horizontal bar chart of wall times in seconds."""
    fig, ax = plt.subplots(figsize=(6, 0.6 + 0.5 * len(seconds)))
    labels = list(seconds)
    ax.barh(labels, [seconds[k] for k in labels], color="tab:blue")
    for i, label in enumerate(labels):
        ax.text(seconds[label], i, f" {seconds[label]:.3f} s", va="center", fontsize=8)
    ax.set_xlabel("seconds (this machine, this run)")
    ax.set_xlim(0, 1.25 * max(seconds.values()))
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_fc6_decimation(kernels: Sequence[int] = (4, 3), size: int = 7) -> plt.Figure:
    """The taps of VGG-16's 7x7 fc6 kept when it is decimated to each of ``kernels``."""
    fig, axes = plt.subplots(1, len(kernels), figsize=(3.2 * len(kernels), 3.2))
    for ax, kernel in zip(np.atleast_1d(axes), kernels, strict=True):
        kept = np.zeros((size, size))
        taps = decimation_taps(kernel, size)
        kept[np.ix_(taps, taps)] = 1
        ax.imshow(kept, cmap="Greys", vmin=-0.3, vmax=1.3)
        for r in range(size):
            for c in range(size):
                ax.text(
                    c,
                    r,
                    f"{r},{c}",
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="white" if kept[r, c] else "black",
                )
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"7x7 -> {kernel}x{kernel}: taps {taps}", fontsize=9)
    fig.tight_layout()
    return fig


def plot_fields(
    fields: Mapping[str, int],
    image_size: int = 321,
    title: str = "receptive field of one output (pixels)",
) -> plt.Figure:
    """Squares of each network's receptive field, centred on an ``image_size`` crop."""
    fig, ax = plt.subplots(figsize=(7.5, 5))
    half = max(max(fields.values()), image_size) / 2 + 10
    ax.add_patch(
        plt.Rectangle(
            (-image_size / 2, -image_size / 2),
            image_size,
            image_size,
            color="0.9",
            label=f"{image_size}x{image_size} crop",
        )
    )
    styles = ("-", "--", ":", "-.")  # networks with the same field stay visible
    for index, (label, field) in enumerate(fields.items()):
        ax.add_patch(
            plt.Rectangle(
                (-field / 2, -field / 2),
                field,
                field,
                fill=False,
                lw=2,
                color=plt.get_cmap("tab10")(index % 10),
                ls=styles[index % 4],
                label=f"{label}: {field}",
            )
        )
    ax.set_xlim(-half, half)
    ax.set_ylim(-half, half)
    ax.set_aspect("equal")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_upsampling(
    image: torch.Tensor, scores: torch.Tensor, target: torch.Tensor, class_index: int
) -> plt.Figure:
    """The network's stride-8 scores beside their bilinear upsampling (idea 2 of the paper).

    Top row: the image, the probability of ``class_index`` per stride-8 cell (each cell drawn as
    the 8x8 block of pixels nearest to the pixel it scores) and after :func:`upsample_scores`,
    both with the class's true outline. Bottom row: the ground truth and the two argmax label maps.

    Args:
        image: ``(3, H, W)`` uint8 RGB.
        scores: ``(C, h, w)`` stride-8 scores of that image, ``h = (H - 1) // 8 + 1``.
        target: ``(H, W)`` ground truth.
        class_index: the class whose probability is drawn.
    """
    height, width = target.shape
    scores = scores.detach().float().cpu()
    fine = upsample_scores(scores[None], (height, width))[0]  # (C, H, W)
    coarse_p, fine_p = torch.softmax(scores, 0), torch.softmax(fine, 0)
    h, w = scores.shape[-2:]
    # each pixel shows the cell whose centre (8 i, 8 j) is nearest: the cells as 8x8 blocks
    half = OUTPUT_STRIDE // 2  # ties (pixel 8 i + 4) go to the next cell, for every i alike
    rows = ((torch.arange(height) + half) // OUTPUT_STRIDE).clamp(max=h - 1)
    cols = ((torch.arange(width) + half) // OUTPUT_STRIDE).clamp(max=w - 1)
    blocks = coarse_p[:, rows][:, :, cols]  # (C, H, W)
    truth = to_numpy(target) == class_index
    fig, axes = plt.subplots(2, 3, figsize=(8.4, 6.6))
    name = CLASSES[class_index]
    top = [
        ("image", as_rgb(image)),
        (f"stride {OUTPUT_STRIDE}: P({name}), {h}x{w} cells", blocks[class_index].numpy()),
        (f"bilinear: P({name}), {height}x{width}", fine_p[class_index].numpy()),
    ]
    for ax, (title, picture) in zip(axes[0], top, strict=True):
        shown = ax.imshow(picture, cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
        ax.contour(truth, levels=[0.5], colors="white", linewidths=1.2)
        ax.set_title(title, fontsize=9)
    bottom = [
        ("ground truth", to_numpy(target)),
        (f"stride {OUTPUT_STRIDE}: argmax per cell", blocks.argmax(0).numpy()),
        ("bilinear: argmax per pixel", fine_p.argmax(0).numpy()),
    ]
    for ax, (title, labels) in zip(axes[1], bottom, strict=True):
        ax.imshow(colorize(labels), interpolation="nearest")
        ax.set_title(title, fontsize=9)
    for ax in axes.flat:
        ax.axis("off")
    present = np.concatenate([labels.ravel() for _, labels in bottom])  # every class drawn
    legend(fig, present, right=0.9)
    box = axes[0, 2].get_position()
    fig.colorbar(shown, cax=fig.add_axes((0.91, box.y0, 0.015, box.height)), label=f"P({name})")
    return fig
