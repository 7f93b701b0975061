"""The permutohedral lattice (Adams, Baek & Davis, Eurographics 2010) in pure PyTorch.

Gaussian filtering $v_i' = \\sum_j \\exp(-\\frac12\\|f_i - f_j\\|^2)\\, v_j$ of N points in d
dimensions, approximated in O(N d^2) time instead of O(N^2) (PAPER.md section 6):

1. **Elevate** each feature onto the hyperplane $\\{x \\in \\mathbb{R}^{d+1}: \\sum_k x_k = 0\\}$,
   scaled so that the lattice's blur has the right width.
2. Find the **enclosing simplex**: the d+1 lattice vertices around the point, and its
   **barycentric weights** (non-negative, summing to 1).
3. **Splat**: each point adds its value, times its weights, to its d+1 vertices. Only vertices
   that receive something exist: they are found by sorting integer keys (``torch.unique``) instead
   of the hash table of the C++ code.
4. **Blur** the vertex values with the kernel [1/2, 1, 1/2] along each of the d+1 lattice
   directions (precomputed neighbour indices; a missing neighbour counts as 0).
5. **Slice**: read each point's value back from its d+1 vertices with the same weights.

Conventions follow Kraehenbuehl's ``permutohedral.cpp`` used by pydensecrf (coordinate order,
rounding, tie-breaking, the [0.5, 1, 0.5] blur and the slice scale $1/(1 + 2^{-d})$), so that
the two agree to float round-off. The lattice is built once per feature set and reused for every
label, iteration and kernel normalisation. All steps are tensor operations with no Python loop
over points: the same code runs on CPU and CUDA tensors (the device of ``features``).
"""

from __future__ import annotations

import math
import warnings

import torch

_KEY_BITS = 62  # integer keys must fit in int64 with a margin


class PermutohedralLattice:
    """The lattice of one set of features, ready to filter any number of value channels.

    Args:
        features: ``(N, d)`` float tensor of features already divided by their bandwidths.

    Attributes:
        offsets: ``(N, d+1)`` int64 index of each point's simplex vertices.
        weights: ``(N, d+1)`` float32 barycentric weights (each row sums to 1).
        keys: ``(M, d)`` int64 coordinates of the M lattice vertices (the last, implicit
            coordinate is minus the sum of the others).
        neighbours: ``(d+1, 2, M)`` int64 indices of each vertex's two neighbours along each
            direction (the value M means "absent": that vertex received nothing).
        splat_matrix, slice_matrix: splatting and slicing as sparse ``(M, N)`` and ``(N, M)``
            matrices, so that filtering is ``slice_matrix @ blur(splat_matrix @ values)``.

    Raises:
        ValueError: if ``features`` is not a finite, non-empty ``(N, d)`` tensor with d >= 1,
            or its range is too wide to encode vertex keys in 64-bit integers.
    """

    def __init__(self, features: torch.Tensor) -> None:
        if features.ndim != 2 or features.shape[0] == 0 or features.shape[1] == 0:
            raise ValueError(f"features must be a non-empty (N, d) tensor, got {features.shape}")
        if not torch.isfinite(features).all():
            raise ValueError("features must be finite (found NaN or inf)")
        f = features.to(torch.float32)
        n, d = f.shape
        self.num_points, self.dim = n, d
        device = f.device
        down = 1.0 / (d + 1)

        # Elevation $y = E\,\mathrm{diag}(s)\,f$ with $s_k = \sqrt{2/3}\,(d+1)/\sqrt{(k+1)(k+2)}$:
        # the columns of E are orthogonal, of norm $\sqrt{(k+1)(k+2)}$, and sum to zero.
        k = torch.arange(d, device=device, dtype=torch.float64)
        scale = (math.sqrt(2.0 / 3.0) * (d + 1) / torch.sqrt((k + 1) * (k + 2))).to(torch.float32)
        cf = f * scale  # (N, d)
        # $S_j = \sum_{k \ge j} cf_k$ (summed from the last coordinate, as the C++ code does)
        suffix = cf.flip(1).cumsum(1).flip(1)  # (N, d)
        after = torch.cat([suffix[:, 1:], torch.zeros_like(suffix[:, :1])], dim=1)  # S_{j+1}
        j = torch.arange(1, d + 1, device=device, dtype=torch.float32)
        # $y_0 = S_0$, $y_j = S_j - j\, cf_{j-1}$ for $j = 1..d$
        elevated = torch.cat([suffix[:, :1], after - j * cf], dim=1)  # (N, d+1)

        # Nearest remainder-0 vertex: round each coordinate to a multiple of d+1
        v = elevated * down
        up, lo = torch.ceil(v) * (d + 1), torch.floor(v) * (d + 1)
        rem0 = torch.where(up - elevated < elevated - lo, up, lo)  # (N, d+1)
        total = (rem0.sum(1) * down).round().to(torch.int64)  # (N,) coordinate sum / (d+1)

        # Rank of each coordinate of the residual in decreasing order (ties: later index ranks
        # higher), which names the simplex the point falls in
        res = elevated - rem0  # (N, d+1)
        later = torch.ones(d + 1, d + 1, dtype=torch.bool, device=device).triu(1)  # b > a
        greater = res[:, None, :] > res[:, :, None]  # [n, a, b]: res_b > res_a
        at_least = res[:, None, :] >= res[:, :, None]
        rank = ((greater & later) | (at_least & later.T)).sum(2) + total[:, None]  # (N, d+1)
        # Points off the plane (total != 0) are brought back by wrapping the ranks
        under, over = rank < 0, rank > d
        rank = rank + (d + 1) * under - (d + 1) * over
        rem0 = rem0 + (d + 1) * under - (d + 1) * over

        # Barycentric weights (Adams et al. p. 10): slot d-rank_i gets +r_i, slot d-rank_i+1
        # gets -r_i, with $r_i = (y_i - \mathrm{rem0}_i)/(d+1)$; then wrap slot d+1 onto slot 0.
        r = (elevated - rem0) * down
        bary = torch.zeros(n, d + 2, device=device, dtype=torch.float32)
        bary.scatter_add_(1, d - rank, r).scatter_add_(1, d - rank + 1, -r)
        bary[:, 0] += 1.0 + bary[:, d + 1]
        self.weights = bary[:, : d + 1].contiguous()  # (N, d+1)

        # Vertex of remainder q: rem0_i + q, minus (d+1) where rank_i > d - q (first d coords)
        q = torch.arange(d + 1, device=device)
        rem0_int = rem0[:, :d].round().to(torch.int64)  # (N, d)
        shift = (rank[:, None, :d] > (d - q)[None, :, None]).to(torch.int64)  # (N, d+1, d)
        keys = rem0_int[:, None, :] + q[None, :, None] - (d + 1) * shift  # (N, d+1, d)
        keys = keys.reshape(-1, d)  # (N*(d+1), d)

        # Sparse vertices: sort the integer codes of the keys and keep the distinct ones
        self._d = d
        reduced = self._reduce(keys)
        self._lo = reduced.min(0).values - 1  # margin of 1 for neighbours outside the range
        self._span = reduced.max(0).values + 2 - self._lo
        bits = float(torch.log2(self._span.to(torch.float64)).sum()) + math.log2(d + 1)
        if bits > _KEY_BITS:
            raise ValueError(
                f"features span too wide a range to encode lattice keys in 64 bits ({bits:.0f} "
                "bits needed): divide them by larger bandwidths"
            )
        codes, inverse = torch.unique(self._encode(keys), sorted=True, return_inverse=True)
        self.codes = codes  # (M,) sorted
        self.offsets = inverse.reshape(n, d + 1)  # (N, d+1)
        m = codes.shape[0]
        self.num_vertices = m
        vertex_keys = torch.empty(m, d, dtype=torch.int64, device=device)
        vertex_keys[inverse] = keys
        self.keys = vertex_keys  # (M, d)

        # Neighbours along direction j: all coordinates -1 except coordinate j, which gets +d
        # (for j = d only the implicit last coordinate gets +d); and the opposite step.
        eye = torch.eye(d + 1, d, dtype=torch.int64, device=device)  # row d is all zero
        neighbours = torch.full((d + 1, 2, m), m, dtype=torch.int64, device=device)
        for direction in range(d + 1):  # d+1 directions: a loop over axes, not over points
            step = eye[direction] * (d + 1) - 1  # (d,)
            for side, sign in enumerate((1, -1)):
                neighbours[direction, side] = self._lookup(vertex_keys + sign * step)
        self.neighbours = neighbours

        # Slice scale: the blur returns $1 + 2^{-d}$ of a vertex's value to itself (going
        # once around all d+1 directions); dividing by it gives the vertex a self-weight of 1.
        self.alpha = 1.0 / (1.0 + 2.0 ** (-d))
        self._build_matrices()

    def _build_matrices(self) -> None:
        """Splat and slice as sparse CSR matrices: each is then one sparse x dense product (MKL
        on CPU, cuSPARSE on CUDA), several times faster than scattered index additions."""
        n, d, m = self.num_points, self._d, self.num_vertices
        device = self.offsets.device
        flat_vertex = self.offsets.reshape(-1)  # (N*(d+1),) vertex of each (point, q) pair
        flat_weight = self.weights.reshape(-1)
        with warnings.catch_warnings():  # sparse CSR is "beta" in PyTorch: silence the notice
            warnings.simplefilter("ignore", UserWarning)
            # slice: row i holds point i's d+1 barycentric weights, times alpha
            rows = torch.arange(0, n * (d + 1) + 1, d + 1, device=device)
            self.slice_matrix = torch.sparse_csr_tensor(
                rows, flat_vertex, flat_weight * self.alpha, size=(n, m), check_invariants=False
            )  # (N, M)
            # splat: the transpose (row v lists the points that splat onto vertex v)
            order = torch.argsort(flat_vertex, stable=True)
            counts = torch.bincount(flat_vertex, minlength=m)
            rows = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
            self.splat_matrix = torch.sparse_csr_tensor(
                rows, order // (d + 1), flat_weight[order], size=(m, n), check_invariants=False
            )  # (M, N)

    # -- integer keys -------------------------------------------------------------------------
    def _reduce(self, keys: torch.Tensor) -> torch.Tensor:
        """All coordinates of a vertex are congruent mod d+1: divide that remainder out."""
        remainder = torch.remainder(keys[:, :1], self._d + 1)
        return torch.div(keys - remainder, self._d + 1, rounding_mode="floor")

    def _encode(self, keys: torch.Tensor) -> torch.Tensor:
        """One int64 per key: remainder + (d+1) * mixed-radix number of the reduced key."""
        d = self._d
        remainder = torch.remainder(keys[:, 0], d + 1)
        digits = self._reduce(keys) - self._lo  # (K, d), each in [0, span)
        code = torch.zeros_like(remainder)
        for axis in range(d):  # d is small (2 or 5): a loop over coordinates
            code = code * self._span[axis] + digits[:, axis]
        return remainder + (d + 1) * code

    def _lookup(self, keys: torch.Tensor) -> torch.Tensor:
        """Vertex index of each key, or M where the vertex does not exist."""
        digits = self._reduce(keys) - self._lo
        inside = ((digits >= 0) & (digits < self._span)).all(1)
        code = self._encode(keys)
        m = self.num_vertices
        index = torch.searchsorted(self.codes, code).clamp_(max=m - 1)
        found = inside & (self.codes[index] == code)
        return torch.where(found, index, torch.full_like(index, m))

    # -- filtering ----------------------------------------------------------------------------
    def splat(self, values: torch.Tensor) -> torch.Tensor:
        """``(N, C)`` point values -> ``(M, C)`` vertex values."""
        # $V_v = \sum_{(i, q):\, v(i,q) = v} b_{iq}\, v_i$
        return self.splat_matrix @ values

    def blur(self, vertex_values: torch.Tensor) -> torch.Tensor:
        """Blur ``(M, C)`` vertex values with [1/2, 1, 1/2] along each of the d+1 directions."""
        m, c = vertex_values.shape
        v = vertex_values.new_zeros(m + 1, c)  # row M: the absent neighbour, always 0
        v[:m] = vertex_values
        for n1, n2 in self.neighbours:  # one pass per lattice direction
            both = v.index_select(0, n1).add_(v.index_select(0, n2))  # (M, C)
            # $V_v \leftarrow V_v + \frac12 (V_{v - e_j} + V_{v + e_j})$
            v[:m].add_(both, alpha=0.5)
        return v[:m]

    def slice(self, vertex_values: torch.Tensor) -> torch.Tensor:
        """``(M, C)`` vertex values -> ``(N, C)`` point values, scaled by ``alpha``."""
        # $v_i' = \alpha \sum_q b_{iq}\, V_{v(i,q)}$
        return self.slice_matrix @ vertex_values

    def __call__(self, values: torch.Tensor) -> torch.Tensor:
        """Approximate $\\sum_j \\exp(-\\frac12\\|f_i - f_j\\|^2) v_j$ for ``values`` ``(N, C)``."""
        return self.slice(self.blur(self.splat(values)))

    def gain(self) -> float:
        """Total mass of the lattice filter relative to the exact Gaussian, for dense points.

        Splat keeps mass, each blur direction doubles it, slicing integrates a vertex's hat
        function (the volume per vertex, $(3/2)^{d/2}/\\sqrt{d+1}$ in feature units) and scales
        by alpha; the exact kernel has mass $(2\\pi)^{d/2}$. Used to make ``normalization="none"``
        comparable between methods.
        """
        d = self._d
        volume = 1.5 ** (d / 2) / math.sqrt(d + 1)
        return volume * 2.0 ** (d + 1) * self.alpha / (2.0 * math.pi) ** (d / 2)
