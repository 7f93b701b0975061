"""Exact Gaussian filtering in feature space: the O(N^2) message passing of mean field.

For every pixel $i$ and label $l$ the mean-field message is
$\\tilde Q_i(l) = \\sum_j k(f_i, f_j)\\, Q_j(l)$, a sum over *all* pixels. Written directly it
costs $N^2$ kernel evaluations per filtering: fine for a 64x64 image (16.8 million), hopeless
for a 500x375 photo (35 billion). It is the ground truth the permutohedral lattice is checked
against. Rows of the kernel matrix are processed in chunks so that memory stays bounded.
"""

from __future__ import annotations

import torch

from deeplab_edu.crf.kernels import gaussian_kernel

NAIVE_MAX_PIXELS = 160 * 160
"""The largest image (in pixels) the exact filter accepts: above it one mean-field run takes
minutes on a CPU; use ``method="permutohedral"`` instead."""

CACHE_MAX_ENTRIES = 4096 * 4096
"""Kernel matrices up to this many entries (64 MiB in float32) are computed once and kept."""


class NaiveFilter:
    """Exact filtering $K v$ with $K_{ij} = \\exp(-\\frac12\\|f_i - f_j\\|^2)$ (self included).

    Args:
        features: ``(N, d)`` scaled features (see :mod:`deeplab_edu.crf.kernels`).
        chunk_size: rows of $K$ computed at a time (memory ``chunk_size * N`` floats).
        max_pixels: refuse larger ``N`` (default :data:`NAIVE_MAX_PIXELS`).

    Raises:
        ValueError: if ``N`` exceeds ``max_pixels`` or the features are not a 2-D tensor.
    """

    def __init__(
        self, features: torch.Tensor, chunk_size: int = 2048, max_pixels: int = NAIVE_MAX_PIXELS
    ) -> None:
        if features.ndim != 2 or features.shape[0] == 0:
            raise ValueError(f"features must be a non-empty (N, d) tensor, got {features.shape}")
        n = features.shape[0]
        if n > max_pixels:
            raise ValueError(
                f"exact (naive) filtering is limited to {max_pixels} pixels (e.g. 160x160); "
                f"got {n}. Its cost grows as N^2: use method='permutohedral' for this image"
            )
        self.features = features.to(torch.float32)
        self.chunk_size = int(chunk_size)
        self.kernel: torch.Tensor | None = None  # (N, N) when small enough to keep
        if n * n <= CACHE_MAX_ENTRIES:
            self.kernel = gaussian_kernel(self.features, self.features)

    @property
    def num_points(self) -> int:
        """N, the number of points filtered."""
        return self.features.shape[0]

    @property
    def device(self) -> torch.device:
        """Where the features (and the filtering) are."""
        return self.features.device

    def __call__(self, values: torch.Tensor) -> torch.Tensor:
        """Filter ``values`` of shape ``(N, C)``; returns ``(N, C)`` = $K$ ``values`` (in the
        values' float dtype: float64 values give a float64 product, for gradient checks)."""
        if self.kernel is not None:
            # $\tilde Q_i = \sum_j k(f_i, f_j) Q_j$
            return self.kernel.to(values.dtype) @ values  # (N, C)
        out = torch.empty_like(values)
        for start in range(0, self.num_points, self.chunk_size):
            rows = self.features[start : start + self.chunk_size]  # (B, d)
            # $\tilde Q_i = \sum_j k(f_i, f_j) Q_j$ for the rows i of this chunk
            kernel = gaussian_kernel(rows, self.features).to(values.dtype)
            out[start : start + rows.shape[0]] = kernel @ values
        return out
