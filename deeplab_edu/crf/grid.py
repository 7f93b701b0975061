"""A CRF on the pixel grid: the stepping stone to the fully connected CRF (the CRF primer).

Each pixel is linked to its 4 neighbours only, with a Potts penalty $w$ for disagreeing:

$E(x) = \\sum_i \\theta_i(x_i) + w \\sum_{i \\sim j} [x_i \\ne x_j]$, with
$\\theta_i(l) = -\\log P_i(l)$.

Mean field is the loop of the fully connected CRF (:func:`~deeplab_edu.crf.meanfield.iterate`)
with another message: $m_i(l) = w \\sum_{j \\in N(i)} Q_j(l)$, the neighbours' belief in $l$. As a
kernel matrix it is $w A$ with $A$ the grid's adjacency matrix; the fully connected CRF replaces
$A$ by Gaussian kernels over position and colour, so that every pixel talks to every other.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

# the 4-neighbourhood as a 3x3 filter: up, left, right, down (not the pixel itself)
_CROSS = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])


def grid_message(height: int, width: int, weight: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """The Potts message of a 4-connected grid, for :func:`~deeplab_edu.crf.meanfield.iterate`.

    Args:
        height, width: the grid's size (N = height * width pixels, row-major).
        weight: $w$, the penalty for two neighbours that disagree (>= 0).

    Returns:
        ``message(Q)`` mapping ``(N, C)`` marginals to ``(N, C)`` sums $w \\sum_{j \\in N(i)} Q_j$
        (pixels on the border have fewer neighbours).

    Raises:
        ValueError: for a negative or non-finite weight or an empty grid.
    """
    if not (weight >= 0 and weight != float("inf")):
        raise ValueError(f"weight must be finite and >= 0, got {weight}")
    if height < 1 or width < 1:
        raise ValueError(f"the grid must have at least one pixel, got {height}x{width}")

    def message(q: torch.Tensor) -> torch.Tensor:
        classes = q.shape[1]
        maps = q.T.reshape(classes, 1, height, width)  # one channel per label
        cross = _CROSS.to(q.device, q.dtype)[None, None] * weight  # (1, 1, 3, 3)
        # $m_i(l) = w \sum_{j \in N(i)} Q_j(l)$; zero padding: no neighbour beyond the border
        summed = F.conv2d(maps, cross, padding=1)  # (C, 1, H, W)
        return summed.reshape(classes, height * width).T

    return message


def grid_energy(labels: torch.Tensor, unary: torch.Tensor, weight: float) -> float:
    """$E(x)$ of a labelling of the grid.

    Args:
        labels: ``(H, W)`` integer labels $x$.
        unary: ``(H * W, C)`` unary potentials $\\theta_i(l)$ (row-major pixels).
        weight: $w$.

    Returns:
        The unary sum plus $w$ times the number of disagreeing neighbour pairs.
    """
    flat = labels.reshape(-1, 1).long()
    data_term = unary.gather(1, flat).sum()  # $\sum_i \theta_i(x_i)$
    # each pair once: right neighbours and down neighbours
    cuts = (labels[:, 1:] != labels[:, :-1]).sum() + (labels[1:] != labels[:-1]).sum()
    return float(data_term + weight * cuts)
