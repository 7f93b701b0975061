"""Figures for the training, results and CRF-parameter chapters."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np

from deeplab_edu.data.voc import CLASSES

LABELS = {"dcnn": "DeepLab (DCNN only)", "crf": "DeepLab-CRF"}


def plot_training_curve(records: Sequence[dict], *, window: int = 25) -> plt.Figure:
    """Loss per iteration (faint) with its moving average, and the learning rate (right axis).

    Args:
        records: the ``metrics.jsonl`` records (``iteration``, ``loss``, ``lr``).
        window: moving-average length in iterations.
    """
    iterations = np.array([r["iteration"] for r in records])
    loss = np.array([r["loss"] for r in records])
    fig, ax = plt.subplots(figsize=(8, 3.6))
    ax.plot(iterations, loss, color="tab:blue", alpha=0.25, linewidth=0.8, label="loss")
    if len(loss) >= window:
        smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
        ax.plot(iterations[window - 1 :], smooth, color="tab:blue", label=f"mean of {window}")
    ax.set_xlabel("iteration")
    ax.set_ylabel("cross-entropy (stride-8 labels)")
    ax.legend(loc="center right")
    right = ax.twinx()
    right.step(iterations, [r["lr"] for r in records], where="post", color="tab:red")
    right.set_yscale("log")
    right.set_ylabel("base learning rate", color="tab:red")
    fig.tight_layout()
    return fig


def plot_trimap(summary: dict) -> plt.Figure:
    """The paper's Fig. 5 for our model: accuracy and mean IoU inside the boundary band
    against its width, without and with the CRF."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for method, curves in summary["trimap"].items():
        for ax, key in zip(axes, ("pixel_accuracy", "miou"), strict=True):
            ax.plot(
                curves["widths"],
                100 * np.array(curves[key], dtype=float),
                marker="o",
                markersize=3,
                label=LABELS.get(method, method),
            )
    for ax, name in zip(axes, ("pixel accuracy (%)", "mean IoU (%)"), strict=True):
        ax.set_xlabel("trimap band width (pixels)")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    if len(summary["trimap"]) > 2:  # many curves: the legend beside the panels, not on them
        axes[1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8)
    else:
        axes[1].legend()
    fig.tight_layout()
    return fig


def plot_per_class_iou(summary: dict) -> plt.Figure:
    """Per-class IoU without and with the CRF (classes absent from the data left out)."""
    per_class = summary["iou_per_class"]
    methods = list(per_class)
    names = [n for n in CLASSES if any(per_class[m][n] is not None for m in methods)]
    fig, ax = plt.subplots(figsize=(8, 0.32 * len(names) + 1.2))
    positions = np.arange(len(names))
    height = 0.8 / len(methods)
    for k, method in enumerate(methods):
        values = [100 * (per_class[method][n] or 0.0) for n in names]
        ax.barh(positions + k * height, values, height, label=LABELS.get(method, method))
    ax.set_yticks(positions + height * (len(methods) - 1) / 2, names)
    ax.invert_yaxis()
    ax.set_xlabel("IoU (%)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the bars, never over them
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def plot_crf_heatmap(trials: Sequence[dict], *, dcnn_miou: float | None = None) -> plt.Figure:
    """Mean IoU over (theta_alpha, theta_beta), one panel per w1, for the coarse-stage trials;
    the overall best trial (any stage) is circled when it lies on the grid."""
    coarse = [t for t in trials if t["stage"] == "coarse"]
    weights = sorted({t["w1"] for t in coarse})
    alphas = sorted({t["theta_alpha"] for t in coarse})
    betas = sorted({t["theta_beta"] for t in coarse})
    best = max(trials, key=lambda t: t["miou"])
    values = np.full((len(weights), len(alphas), len(betas)), np.nan)
    for t in coarse:
        index = weights.index(t["w1"]), alphas.index(t["theta_alpha"]), betas.index(t["theta_beta"])
        values[index] = 100 * t["miou"]
    fig, axes = plt.subplots(
        1, len(weights), figsize=(4.6 * len(weights), 3.6), squeeze=False, layout="constrained"
    )
    low, high = np.nanmin(values), np.nanmax(values)
    for k, (ax, w1) in enumerate(zip(axes[0], weights, strict=True)):
        image = ax.imshow(
            values[k], vmin=low, vmax=high, cmap="viridis", origin="lower", aspect="auto"
        )
        ax.set_xticks(range(len(betas)), [f"{b:g}" for b in betas])
        ax.set_yticks(range(len(alphas)), [f"{a:g}" for a in alphas])
        ax.set_xlabel(r"$\sigma_\beta$ (colour, RGB units)")
        ax.set_ylabel(r"$\sigma_\alpha$ (position, pixels)")
        ax.set_title(f"$w_1 = {w1:g}$")
        for i in range(len(alphas)):
            for j in range(len(betas)):
                # dark text on the light (yellow) end of viridis, white on the dark end
                light = values[k, i, j] > low + 0.6 * (high - low)
                ax.text(
                    j,
                    i,
                    f"{values[k, i, j]:.1f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="black" if light else "white",
                )
        if (best["w1"], best["theta_alpha"], best["theta_beta"]) in {
            (w1, a, b) for a in alphas for b in betas
        }:
            ax.scatter(
                [betas.index(best["theta_beta"])],
                [alphas.index(best["theta_alpha"])],
                s=300,
                facecolors="none",
                edgecolors="red",
                linewidths=2,
            )
    label = "mean IoU (%)"
    if dcnn_miou is not None:
        label += f"; without CRF {100 * dcnn_miou:.1f}"
    fig.colorbar(image, ax=axes[0].tolist(), label=label)
    return fig
