"""Figures for the two CRF chapters: mean field step by step, parameter grids, the
permutohedral lattice in two dimensions, its accuracy and speed, and before/after examples."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

from deeplab_edu.crf.kernels import appearance_features, gaussian_kernel, smoothness_features
from deeplab_edu.crf.permutohedral import PermutohedralLattice
from deeplab_edu.viz.data import as_rgb, to_numpy


def plot_pixel_kernels(
    image: np.ndarray | torch.Tensor,
    pixel: tuple[int, int],
    theta_alpha: float,
    theta_beta: float,
    theta_gamma: float,
) -> plt.Figure:
    """How strongly every pixel is linked to one pixel by each of the CRF's two kernels.

    Args:
        image: ``(H, W, 3)`` uint8 RGB (or a ``(3, H, W)`` uint8 tensor).
        pixel: ``(row, column)`` of the pixel whose kernels are drawn.
        theta_alpha, theta_beta: the appearance kernel's bandwidths (pixels, RGB units).
        theta_gamma: the smoothness kernel's bandwidth (pixels).
    """
    rgb = as_rgb(image)
    height, width, _ = rgb.shape
    row, col = pixel
    index = row * width + col
    appearance = appearance_features(torch.from_numpy(rgb), theta_alpha, theta_beta)  # (N, 5)
    smoothness = smoothness_features(height, width, theta_gamma)  # (N, 2)
    # $k(f_i, f_j)$ for the chosen i and every j, as an image; on a log scale, because the
    # many weak links add up (a message sums over every pixel)
    maps = [
        np.log10(gaussian_kernel(f[index : index + 1], f).reshape(height, width).numpy() + 1e-12)
        for f in (appearance, smoothness)
    ]
    titles = [
        "the image and the pixel i",
        f"appearance kernel: $\\sigma_\\alpha$ = {theta_alpha:g} px, "
        f"$\\sigma_\\beta$ = {theta_beta:g}",
        f"smoothness kernel: $\\sigma_\\gamma$ = {theta_gamma:g} px",
    ]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), layout="constrained")
    axes[0].imshow(rgb)
    for ax, values in zip(axes[1:], maps, strict=True):
        shown = ax.imshow(values, cmap="magma", vmin=-4, vmax=0)
    fig.colorbar(shown, ax=axes[1:], shrink=0.8, label="$\\log_{10} k(f_i, f_j)$")
    for ax, title in zip(axes, titles, strict=True):
        ax.plot([col], [row], marker="+", color="cyan", markersize=14, markeredgewidth=2)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    return fig


def plot_confidence_history(
    history: Sequence[np.ndarray | torch.Tensor], steps: Sequence[int], label: int
) -> plt.Figure:
    """$Q_i(\\text{label})$ as a grey-level map after the chosen iterations."""
    fig, axes = plt.subplots(1, len(steps), figsize=(2.4 * len(steps), 2.4), squeeze=False)
    for ax, step in zip(axes[0], steps, strict=True):
        ax.imshow(to_numpy(history[step])[label], cmap="magma", vmin=0, vmax=1)
        ax.set_title(f"Q(label {label}), iteration {step}", fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    return fig


def plot_objective(energies: Mapping[str, Sequence[float]]) -> plt.Figure:
    """The mean-field free energy against the iteration, one line per run."""
    fig, ax = plt.subplots(figsize=(5, 3))
    for name, values in energies.items():
        ax.plot(range(len(values)), values, marker="o", ms=3, label=name)
    ax.set_xlabel("mean-field iteration")
    ax.set_ylabel("free energy F(Q)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _elevation_matrix(d: int) -> np.ndarray:
    """The elevation $E\\,\\mathrm{diag}(s)$ (features -> hyperplane), ``(d+1, d)``."""
    e = np.zeros((d + 1, d))
    for k in range(d):
        e[: k + 1, k] = 1.0
        e[k + 1, k] = -(k + 1)
        e[:, k] *= np.sqrt(2.0 / 3.0) * (d + 1) / np.sqrt((k + 1) * (k + 2))
    return e


def lattice_points_in_feature_space(keys: torch.Tensor) -> np.ndarray:
    """Lattice vertex keys ``(M, 3)`` of a d = 2 lattice, mapped back to feature coordinates."""
    e = _elevation_matrix(2)  # (3, 2); its columns are orthogonal with equal norms
    return to_numpy(keys).astype(np.float64) @ e / (e[:, 0] @ e[:, 0])  # (M, 2)


def plot_lattice_2d(points: torch.Tensor, *, show_weights: bool = True) -> plt.Figure:
    """The d = 2 permutohedral lattice under a few points: its triangles, the enclosing
    triangle of each point with lines to its 3 vertices (width = barycentric weight), and the
    vertices that received mass (area = splatted weight).

    Args:
        points: ``(N, 2)`` features (already divided by the bandwidth).
    """
    points = points.detach().to("cpu", torch.float32)  # a drawing: a few points, on the CPU
    lattice = PermutohedralLattice(points)
    lo, hi = (points.min(0).values - 1.5).tolist(), (points.max(0).values + 1.5).tolist()
    # every lattice vertex of the window: the vertices of a lattice built on a dense grid
    grid = torch.stack(
        torch.meshgrid(
            torch.linspace(lo[0], hi[0], 80), torch.linspace(lo[1], hi[1], 80), indexing="ij"
        ),
        -1,
    ).reshape(-1, 2)
    everything = lattice_points_in_feature_space(PermutohedralLattice(grid).keys)
    vertices = lattice_points_in_feature_space(lattice.keys)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    spacing = np.sort(np.linalg.norm(everything[1:] - everything[0], axis=1))[0]
    for i, a in enumerate(everything):  # edges between nearest lattice neighbours
        near = np.linalg.norm(everything - a, axis=1)
        for j in np.nonzero((near > 0) & (near < 1.01 * spacing))[0]:
            if j > i:
                ax.plot(*zip(a, everything[j], strict=True), color="0.85", lw=0.8, zorder=1)
    ax.scatter(
        everything[:, 0], everything[:, 1], s=6, color="0.6", zorder=2, label="lattice vertices"
    )
    mass = torch.zeros(lattice.num_vertices).index_add_(
        0, lattice.offsets.reshape(-1), lattice.weights.reshape(-1)
    )
    ax.scatter(
        vertices[:, 0],
        vertices[:, 1],
        s=120 * to_numpy(mass),
        color="tab:orange",
        alpha=0.7,
        zorder=3,
        label="splatted mass",
    )
    pts = to_numpy(points)
    if show_weights:
        for i in range(len(pts)):
            for q in range(3):
                v = vertices[lattice.offsets[i, q]]
                ax.plot(
                    *zip(pts[i], v, strict=True),
                    color="tab:blue",
                    lw=3 * float(lattice.weights[i, q]),
                    alpha=0.6,
                    zorder=4,
                )
    ax.scatter(pts[:, 0], pts[:, 1], s=18, color="tab:blue", zorder=5, label="input points")
    ax.set_xlim(lo[0], hi[0])
    ax.set_ylim(lo[1], hi[1])
    ax.set_aspect("equal")
    ax.set_xlabel("feature 1 (x / θ)")
    ax.set_ylabel("feature 2 (y / θ)")
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    return fig


def plot_filter_accuracy(results: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> plt.Figure:
    """Exact against lattice filter outputs (normalised), one panel per dimension d.

    Args:
        results: title -> (exact values, lattice values), flat arrays of the same size.
    """
    fig, axes = plt.subplots(1, len(results), figsize=(3.4 * len(results), 3.2), squeeze=False)
    for ax, (title, (exact, approx)) in zip(axes[0], results.items(), strict=True):
        exact, approx = to_numpy(exact).ravel(), to_numpy(approx).ravel()
        ax.scatter(exact, approx, s=2, alpha=0.3)
        ends = [min(exact.min(), approx.min()), max(exact.max(), approx.max())]
        ax.plot(ends, ends, color="k", lw=0.8)
        ax.set_title(f"{title}: max |error| {np.abs(exact - approx).max():.3f}", fontsize=9)
        ax.set_xlabel("exact (naive) filter")
        ax.set_ylabel("permutohedral lattice")
    fig.tight_layout()
    return fig


def plot_speed(pixels: Sequence[int], seconds: Mapping[str, Sequence[float]]) -> plt.Figure:
    """Seconds per mean-field run against the number of pixels, log-log, one line per method."""
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for name, values in seconds.items():
        xs = [p for p, s in zip(pixels, values, strict=True) if s is not None]
        ys = [s for s in values if s is not None]
        ax.plot(xs, ys, marker="o", label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("pixels N")
    ax.set_ylabel("seconds (10 iterations)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_compatibility(
    matrices: Mapping[str, torch.Tensor], classes: Sequence[int], names: Sequence[str]
) -> plt.Figure:
    """Label compatibility matrices $\\mu(l, l')$ as annotated heat maps, one panel each.

    Args:
        matrices: title -> a ``(C, C)`` compatibility matrix (row: the label being scored).
        classes: which labels to show (e.g. the ones present in the data).
        names: their names, in the order of ``classes``.
    """
    keep = list(classes)
    shown = {title: to_numpy(m.detach())[np.ix_(keep, keep)] for title, m in matrices.items()}
    bound = max(float(np.abs(m).max()) for m in shown.values())
    fig, axes = plt.subplots(
        1, len(shown), figsize=(3.6 * len(shown) + 0.8, 3.4), squeeze=False, layout="constrained"
    )
    for ax, (title, values) in zip(axes[0], shown.items(), strict=True):
        image = ax.imshow(values, cmap="RdBu_r", vmin=-bound, vmax=bound)
        for (row, col), value in np.ndenumerate(values):
            ax.text(col, row, f"{value:.2f}", ha="center", va="center", fontsize=7)
        ax.set_xticks(range(len(keep)), names, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(keep)), names, fontsize=8)
        ax.set_xlabel("neighbour's label l'", fontsize=8)
        ax.set_title(title, fontsize=9)
    axes[0][0].set_ylabel("label l", fontsize=8)
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label="penalty mu(l, l')")
    return fig
