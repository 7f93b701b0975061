"""The two Gaussian kernels of the fully connected CRF (paper section 4.2), defined once.

The pairwise potential of DeepLab's CRF is

$$\\theta_{ij}(x_i, x_j) = \\mu(x_i, x_j)\\Big[
w_1 \\exp\\Big(-\\frac{\\|p_i-p_j\\|^2}{2\\sigma_\\alpha^2}
    - \\frac{\\|I_i-I_j\\|^2}{2\\sigma_\\beta^2}\\Big)
+ w_2 \\exp\\Big(-\\frac{\\|p_i-p_j\\|^2}{2\\sigma_\\gamma^2}\\Big)\\Big].$$

Both kernels have the form $k(f_i, f_j) = \\exp(-\\tfrac12\\|f_i - f_j\\|^2)$ once each pixel's
feature vector $f_i$ is divided by the bandwidths: $f = (x/\\sigma_\\alpha, y/\\sigma_\\alpha,
R/\\sigma_\\beta, G/\\sigma_\\beta, B/\\sigma_\\beta)$ for the appearance (bilateral) kernel and
$f = (x/\\sigma_\\gamma, y/\\sigma_\\gamma)$ for the smoothness kernel. The order of the
coordinates (x = column first, then y = row, then R, G, B) is pydensecrf's; it matters only for
the permutohedral lattice, whose approximation is not symmetric under permuting coordinates.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass

import torch

NORMALIZATIONS = ("after", "symmetric", "none")  # see deeplab_edu.crf.meanfield


@dataclass(frozen=True)
class CRFParams:
    """Everything that defines DeepLab's CRF for one image: the five kernel parameters, the
    number of mean-field iterations and the kernel normalisation. One object carries them from
    the search's JSON to evaluation and the chapters.

    Defaults: (w1, theta_alpha, theta_beta) = (4, 121, 5), the DeepLab-LargeFOV values of the
    authors' released scripts (the paper does not print its choice), with the paper's fixed
    w2 = 3, theta_gamma = 3 and 10 iterations (section 4.2), and the authors' "after"
    normalisation (the 2011 dense-CRF code DeepLab used; pydensecrf defaults to "symmetric").
    """

    w1: float = 4.0  # weight of the appearance (bilateral) kernel
    theta_alpha: float = 121.0  # its spatial bandwidth, in pixels
    theta_beta: float = 5.0  # its colour bandwidth, in RGB units (0..255)
    w2: float = 3.0  # weight of the smoothness kernel (fixed by the paper)
    theta_gamma: float = 3.0  # its spatial bandwidth, in pixels (fixed by the paper)
    iterations: int = 10  # mean-field iterations (10 in all of the paper's experiments)
    normalization: str = "after"  # one of NORMALIZATIONS

    def __post_init__(self) -> None:
        for name in ("theta_alpha", "theta_beta", "theta_gamma"):
            value = getattr(self, name)
            if not (isinstance(value, numbers.Real) and math.isfinite(value) and float(value) > 0):
                raise ValueError(f"{name} must be a positive, finite bandwidth, got {value!r}")
        for name in ("w1", "w2"):
            value = getattr(self, name)
            if not (isinstance(value, numbers.Real) and math.isfinite(value) and float(value) >= 0):
                raise ValueError(
                    f"{name} must be a non-negative, finite kernel weight, got {value!r}"
                )
        if (
            isinstance(self.iterations, bool)
            or not isinstance(self.iterations, int)
            or (self.iterations < 0)
        ):
            raise ValueError(f"iterations must be a non-negative int, got {self.iterations!r}")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(
                f"normalization must be one of {NORMALIZATIONS}, got {self.normalization!r}"
            )

    def to_dict(self) -> dict:
        """Plain values for JSON (the inverse is ``CRFParams(**values)``)."""
        return dataclasses.asdict(self)


def pixel_positions(height: int, width: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Pixel coordinates (x, y) = (column, row) in row-major pixel order.

    Returns:
        A float32 tensor of shape ``(H * W, 2)``.
    """
    rows = torch.arange(height, device=device, dtype=torch.float32)
    cols = torch.arange(width, device=device, dtype=torch.float32)
    y, x = torch.meshgrid(rows, cols, indexing="ij")  # (H, W) each
    return torch.stack([x.reshape(-1), y.reshape(-1)], dim=1)  # (N, 2)


def appearance_features(image: torch.Tensor, theta_alpha: float, theta_beta: float) -> torch.Tensor:
    """Features of the appearance (bilateral) kernel.

    Args:
        image: ``(H, W, 3)`` RGB image (any real dtype, values 0..255), on the target device.
        theta_alpha: spatial bandwidth in pixels.
        theta_beta: colour bandwidth in RGB units.

    Returns:
        ``(H * W, 5)`` float32 features ``(x/theta_alpha, y/theta_alpha, rgb/theta_beta)``.
    """
    height, width, _ = image.shape
    positions = pixel_positions(height, width, image.device)  # (N, 2)
    colours = image.reshape(-1, 3).to(torch.float32)  # (N, 3)
    # $f_i = (p_i / \sigma_\alpha,\; I_i / \sigma_\beta)$
    return torch.cat([positions / theta_alpha, colours / theta_beta], dim=1)  # (N, 5)


def smoothness_features(
    height: int, width: int, theta_gamma: float, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Features of the smoothness kernel: ``(H * W, 2)`` positions divided by theta_gamma."""
    # $f_i = p_i / \sigma_\gamma$
    return pixel_positions(height, width, device) / theta_gamma  # (N, 2)


def gaussian_kernel(f_i: torch.Tensor, f_j: torch.Tensor) -> torch.Tensor:
    """The exact kernel between two sets of (already scaled) features.

    Args:
        f_i: ``(A, d)`` features.
        f_j: ``(B, d)`` features.

    Returns:
        ``(A, B)`` matrix of $\\exp(-\\frac12 \\|f_i - f_j\\|^2)$.
    """
    # $\|f_i - f_j\|^2$ from the differences (not the expanded dot products, which lose
    # precision in float32 when features are large, e.g. RGB / 5 or positions / 3)
    sq = torch.cdist(f_i, f_j, compute_mode="donot_use_mm_for_euclid_dist").square_()  # (A, B)
    # $k(f_i, f_j) = \exp(-\tfrac12 \|f_i - f_j\|^2)$
    return torch.exp_(sq.mul_(-0.5))
