"""Building the permutohedral lattice, in plain steps (Adams, Baek & Davis, Eurographics 2010).

Where each point falls in the lattice, and what splat and blur need from it:

1. **Elevate** each feature onto the hyperplane $\\sum_k y_k = 0$ of $\\mathbb{R}^{d+1}$
   (:func:`elevate`).
2. Find its **enclosing simplex** (:func:`enclosing_simplex`: the nearest remainder-0 vertex and
   the rank of each coordinate) and its **barycentric weights** (:func:`barycentric_weights`).
3. The simplex's d+1 **vertices** (:func:`simplex_vertices`), and the distinct vertices that some
   point touches, numbered (:func:`find_vertices`: a sort of their coordinates, where the C++
   code uses a hash table); splat adds into them.
4. Each vertex's two **neighbours** along each of the d+1 lattice directions
   (:func:`neighbour_indices`), which blur averages.

Each step is a short function on whole tensors, written to be read. :func:`build` chains them;
:mod:`deeplab_edu.crf.fast_build` computes the same tables with less time and memory (the lattice
uses it by default) and the tests check that the two agree. Conventions follow Kraehenbuehl's
``permutohedral.cpp`` used by pydensecrf (coordinate order, rounding, tie-breaking).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

INT32_LIMIT = 2**31 - 1  # index tables with fewer entries than this are stored as int32


@dataclass
class LatticeTables:
    """What a lattice build produces, for ``N`` points in ``d`` dimensions and ``M`` vertices.

    Attributes:
        weights: ``(N, d+1)`` float32 barycentric weights (each row sums to 1).
        offsets: ``(N, d+1)`` the vertex index of each point's simplex corners.
        neighbours: ``(d+1, 2, M)`` each vertex's two neighbours along each direction (the value
            M means "absent": that vertex received nothing).
        splat_order: ``(N (d+1),)`` the (point, corner) pairs ``i (d+1) + q`` grouped by vertex.
        splat_starts: ``(M,)`` where each vertex's pairs begin in ``splat_order``.
        keys: returns the ``(M, d+1)`` integer coordinates of the vertices (on demand).
    """

    weights: torch.Tensor
    offsets: torch.Tensor
    neighbours: torch.Tensor
    splat_order: torch.Tensor
    splat_starts: torch.Tensor
    keys: Callable[[], torch.Tensor]


def index_dtype(entries: int) -> torch.dtype:
    """int32 for index tables of up to 2^31 - 1 entries (half of int64's memory), else int64."""
    return torch.int32 if entries <= INT32_LIMIT else torch.int64


def elevate(features: torch.Tensor) -> torch.Tensor:
    """Step 1: the points on the hyperplane $\\sum_k y_k = 0$ of $\\mathbb{R}^{d+1}$.

    $y = B\\,\\mathrm{diag}(s)\\,f$: the d columns of B are orthogonal, sum to zero and have norms
    $\\sqrt{(k+1)(k+2)}$; $s_k = \\sqrt{2/3}\\,(d+1)/\\sqrt{(k+1)(k+2)}$ undoes those norms and
    scales every distance by $\\sqrt{2/3}\\,(d+1)$, the scale at which the lattice's [1/2, 1, 1/2]
    blur approximates $\\exp(-\\frac12\\|f_i - f_j\\|^2)$. Coordinate order and summation follow
    the C++ code.

    Args:
        features: ``(N, d)`` float32 features, already divided by their bandwidths.

    Returns:
        ``(N, d+1)`` float32 elevated points (each row sums to 0).
    """
    d = features.shape[1]
    k = torch.arange(d, device=features.device, dtype=torch.float64)
    scale = (math.sqrt(2.0 / 3.0) * (d + 1) / torch.sqrt((k + 1) * (k + 2))).to(torch.float32)
    cf = features * scale  # (N, d)
    # $S_j = \sum_{k \ge j} cf_k$ (summed from the last coordinate, as the C++ code does)
    suffix = cf.flip(1).cumsum(1).flip(1)  # (N, d)
    after = torch.cat([suffix[:, 1:], torch.zeros_like(suffix[:, :1])], dim=1)  # S_{j+1}
    j = torch.arange(1, d + 1, device=features.device, dtype=torch.float32)
    # $y_0 = S_0$, $y_j = S_j - j\, cf_{j-1}$ for $j = 1..d$
    return torch.cat([suffix[:, :1], after - j * cf], dim=1)  # (N, d+1)


def enclosing_simplex(elevated: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Step 2: the simplex each elevated point falls in.

    Round each coordinate to the nearest multiple of d+1 (the nearest "remainder-0" vertex),
    then rank the coordinates of the residual in decreasing order (ties: a later index ranks
    higher): the ranks name the simplex. A point whose rounded coordinates do not sum to 0 is
    brought back onto the plane by wrapping its ranks.

    Args:
        elevated: ``(N, d+1)`` points from :func:`elevate`.

    Returns:
        ``(rem0, rank)``: ``(N, d+1)`` float32 remainder-0 vertex and int64 ranks 0..d.
    """
    n, d = elevated.shape[0], elevated.shape[1] - 1
    down = 1.0 / (d + 1)
    v = elevated * down
    up, lo = torch.ceil(v) * (d + 1), torch.floor(v) * (d + 1)
    rem0 = torch.where(up - elevated < elevated - lo, up, lo)  # (N, d+1)
    total = (rem0.sum(1) * down).round().to(torch.int64)  # (N,) coordinate sum / (d+1)
    residual = elevated - rem0  # (N, d+1)
    rank = torch.empty(n, d + 1, dtype=torch.int64, device=elevated.device)
    for axis in range(d + 1):  # a loop over the d+1 coordinates, not over points
        r_a = residual[:, axis : axis + 1]
        rank[:, axis] = (residual[:, axis + 1 :] > r_a).sum(1) + (residual[:, :axis] >= r_a).sum(1)
    rank += total[:, None]
    under, over = rank < 0, rank > d  # off the plane: wrap around
    rank = rank + (d + 1) * under - (d + 1) * over
    rem0 = rem0 + (d + 1) * under - (d + 1) * over
    return rem0, rank


def barycentric_weights(
    elevated: torch.Tensor, rem0: torch.Tensor, rank: torch.Tensor
) -> torch.Tensor:
    """Step 2: the weights of each point's d+1 simplex corners (non-negative, summing to 1).

    Adams et al. p. 10: with $r_i = (y_i - \\mathrm{rem0}_i)/(d+1)$, slot $d - \\mathrm{rank}_i$
    gets $+r_i$ and slot $d - \\mathrm{rank}_i + 1$ gets $-r_i$; then slot d+1 wraps onto slot 0.

    Returns:
        ``(N, d+1)`` float32: the weight of corner q (:func:`simplex_vertices`) of each point.
    """
    n, d = elevated.shape[0], elevated.shape[1] - 1
    r = (elevated - rem0) * (1.0 / (d + 1))
    bary = torch.zeros(n, d + 2, device=elevated.device, dtype=torch.float32)
    bary.scatter_add_(1, d - rank, r).scatter_add_(1, d - rank + 1, -r)
    bary[:, 0] += 1.0 + bary[:, d + 1]
    return bary[:, : d + 1]


def simplex_vertices(rem0: torch.Tensor, rank: torch.Tensor) -> torch.Tensor:
    """Step 3: the integer coordinates of each point's d+1 simplex corners.

    Corner q (q = 0..d) is $\\mathrm{rem0} + q - (d+1)[\\mathrm{rank} > d - q]$: every
    coordinate of it is congruent to q modulo d+1, and it lies on the plane.

    Returns:
        ``(N, d+1, d+1)`` int64: point, corner, coordinate.
    """
    d = rank.shape[1] - 1
    q = torch.arange(d + 1, device=rank.device)[None, :, None]  # (1, d+1, 1)
    shifted = (rank[:, None, :] > d - q).to(torch.int64)  # (N, d+1, d+1)
    return rem0.round().to(torch.int64)[:, None, :] + q - (d + 1) * shifted


def find_vertices(corners: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Step 3: the distinct vertices that some point touches, numbered in sorted order.

    Returns:
        ``(keys, offsets)``: ``(M, d+1)`` vertex coordinates and ``(N, d+1)`` the vertex index of
        each point's corners.
    """
    n, corners_per_point, d1 = corners.shape
    keys, offsets = torch.unique(corners.reshape(-1, d1), dim=0, return_inverse=True)
    return keys, offsets.reshape(n, corners_per_point)


def neighbour_indices(keys: torch.Tensor) -> torch.Tensor:
    """Step 4: each vertex's two neighbours along each lattice direction j = 0..d.

    The step along direction j adds -1 to every coordinate and d+1 to coordinate j (a vector of
    the lattice, on the plane); a neighbour that no point touched is absent (index M).

    Returns:
        ``(d+1, 2, M)`` int64: ``[j, 0]`` the vertex one step along j, ``[j, 1]`` one step back.
    """
    m, d1 = keys.shape
    eye = torch.eye(d1, dtype=keys.dtype, device=keys.device)
    step = d1 * eye - 1  # (d+1, d+1): row j is the step along direction j
    candidates = torch.stack(
        [keys + step[:, None], keys - step[:, None]], dim=1
    )  # (d+1, 2, M, d+1)
    # number every key that occurs, vertex or candidate; a candidate's number -> its vertex
    every, number = torch.unique(
        torch.cat([keys, candidates.reshape(-1, d1)]), dim=0, return_inverse=True
    )
    vertex = torch.full((len(every),), m, dtype=torch.int64, device=keys.device)
    vertex[number[:m]] = torch.arange(m, device=keys.device)
    return vertex[number[m:]].reshape(d1, 2, m)


def splat_groups(offsets: torch.Tensor, num_vertices: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The (point, corner) pairs ``i (d+1) + q`` grouped by the vertex they splat onto (points in
    increasing order), and where each vertex's group begins: the splat matrix's layout."""
    flat = offsets.reshape(-1).to(torch.int64)
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=num_vertices)
    return order, torch.cumsum(counts, 0) - counts


def build(features: torch.Tensor) -> LatticeTables:
    """The lattice's tables for ``(N, d)`` float32 features, step by step as above."""
    n, d = features.shape
    elevated = elevate(features)
    rem0, rank = enclosing_simplex(elevated)
    weights = barycentric_weights(elevated, rem0, rank)
    keys, offsets = find_vertices(simplex_vertices(rem0, rank))
    order, starts = splat_groups(offsets, len(keys))
    index = index_dtype(n * (d + 1))  # the fast build's index type, so both fill one lattice
    return LatticeTables(
        weights,
        offsets.to(index),
        neighbour_indices(keys).to(index),
        order.to(index),
        starts,
        keys=lambda: keys,
    )
