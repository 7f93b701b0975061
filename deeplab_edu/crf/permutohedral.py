"""The permutohedral lattice (Adams, Baek & Davis, Eurographics 2010) in pure PyTorch.

Gaussian filtering $v_i' = \\sum_j \\exp(-\\frac12\\|f_i - f_j\\|^2)\\, v_j$ of N points in d
dimensions, approximated in O(N d^2) time instead of O(N^2) (Adams, Baek and Davis, 2010):

1. **Elevate** each feature onto the hyperplane $\\{x \\in \\mathbb{R}^{d+1}: \\sum_k x_k = 0\\}$,
   scaled so that the lattice's blur has the right width.
2. Find the **enclosing simplex**: the d+1 lattice vertices around the point, and its
   **barycentric weights** (non-negative, summing to 1).
3. **Splat**: each point adds its value, times its weights, to its d+1 vertices. Only vertices
   that receive something exist: they are found by sorting (``torch.unique``) instead of the
   hash table of the C++ code.
4. **Blur** the vertex values with the kernel [1/2, 1, 1/2] along each of the d+1 lattice
   directions (precomputed neighbour indices; a missing neighbour counts as 0).
5. **Slice**: read each point's value back from its d+1 vertices with the same weights.

Steps 1-2 and the tables that steps 3-4 need (the vertices, each point's corners, the
neighbours) are built once per feature set: in plain steps by :mod:`~deeplab_edu.crf.lattice_build`,
and by default by :mod:`~deeplab_edu.crf.fast_build`, which makes the same tables with less time
and memory. Splat, blur and slice are here (:class:`PermutohedralLattice`), and fused into two
sparse matrix products for mean field (:class:`LatticeSum`).

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

from deeplab_edu.crf import fast_build, lattice_build
from deeplab_edu.crf.lattice_build import index_dtype

_MAX_FEATURE = 2.0**15  # elevated coordinates stay far below float32's 2^24 integer limit


class PermutohedralLattice:
    """The lattice of one set of features, ready to filter any number of value channels.

    Args:
        features: ``(N, d)`` float tensor of features already divided by their bandwidths.
        plain: build with the plain steps of :mod:`~deeplab_edu.crf.lattice_build` instead of
            :mod:`~deeplab_edu.crf.fast_build` (the same lattice, its vertices numbered in
            another order; slower, for reading and checking).

    Attributes:
        offsets: ``(N, d+1)`` index of each point's simplex vertices.
        weights: ``(N, d+1)`` float32 barycentric weights (each row sums to 1).
        neighbours: ``(d+1, 2, M)`` indices of each vertex's two neighbours along each
            direction (the value M means "absent": that vertex received nothing).
        splat_order: ``(N (d+1),)`` the (point, corner) pairs ``i (d+1) + q`` sorted by vertex:
            the pairs that splat onto vertex ``v`` are ``splat_order[splat_starts[v]:
            splat_starts[v + 1]]`` (what :class:`LatticeSum` builds its splat matrix from).
        splat_starts: ``(M,)`` where each vertex's pairs begin in ``splat_order``.

    Index tables (``offsets``, ``neighbours``) are int32, half the memory of int64 (a
    1-megapixel image has 6 million offsets), unless N (d+1) passes 2^31 - 1: then int64.

    Raises:
        ValueError: if ``features`` is not a finite, non-empty ``(N, d)`` tensor with d >= 1,
            or its range is too wide to encode vertex keys in 64-bit integers.
    """

    def __init__(self, features: torch.Tensor, *, plain: bool = False) -> None:
        if features.ndim != 2 or features.shape[0] == 0 or features.shape[1] == 0:
            raise ValueError(f"features must be a non-empty (N, d) tensor, got {features.shape}")
        if not torch.isfinite(features).all():
            raise ValueError("features must be finite (found NaN or inf)")
        largest = features.abs().max().item()
        if largest > _MAX_FEATURE:  # float32 lattice coordinates would lose whole units
            raise ValueError(
                f"features span too wide a range for the lattice (largest |f| = {largest:.3g}, "
                f"at most {_MAX_FEATURE:g}): a bandwidth is far too small for these positions or "
                "colours; divide them by larger bandwidths"
            )
        f = features.to(torch.float32)
        self.num_points, self.dim = f.shape
        self.device = f.device
        self._d = d = self.dim
        tables = lattice_build.build(f) if plain else fast_build.build(f)
        self.weights, self.offsets = tables.weights, tables.offsets
        self.neighbours = tables.neighbours
        self.splat_order, self.splat_starts = tables.splat_order, tables.splat_starts
        self.num_vertices = tables.neighbours.shape[-1]
        self._keys = tables.keys
        # Slice scale: the blur returns $1 + 2^{-d}$ of a vertex's value to itself (going
        # once around all d+1 directions); dividing by it gives the vertex a self-weight of 1.
        self.alpha = 1.0 / (1.0 + 2.0 ** (-d))

    @property
    def keys(self) -> torch.Tensor:
        """``(M, d+1)`` integer coordinates of the vertices."""
        return self._keys()

    # -- filtering ----------------------------------------------------------------------------
    def splat(self, values: torch.Tensor) -> torch.Tensor:
        """``(N, C)`` point values -> ``(M, C)`` vertex values."""
        out = values.new_zeros(self.num_vertices, values.shape[1])
        for q in range(self._d + 1):  # the d+1 vertices of each simplex
            # $V_{v(i,q)} \mathrel{+}= b_{iq}\, v_i$ (index_add_ wants int64 indices: with the
            # stored int32 ones it takes a path ten times slower)
            index = self.offsets[:, q].long()
            out.index_add_(0, index, values * self.weights[:, q : q + 1])
        return out

    def blur(self, vertex_values: torch.Tensor) -> torch.Tensor:
        """Blur ``(M, C)`` vertex values with [1/2, 1, 1/2] along each of the d+1 directions."""
        m, c = vertex_values.shape
        padded = vertex_values.new_zeros(m + 1, c)  # row M: the absent neighbour, always 0
        padded[:m] = vertex_values
        return self.blur_(padded)[:m]

    def blur_(self, padded: torch.Tensor, work: torch.Tensor | None = None) -> torch.Tensor:
        """:meth:`blur` in place on ``(M+1, C)`` values whose last row is zero (and stays so).

        ``work``, a ``(2, M, C)`` buffer, receives the gathered neighbours instead of two fresh
        ``(M, C)`` tensors per direction: on a megapixel image, such blocks freed and allocated
        again and again leave the C library's heap fragmented, 100+ MB of it resident.
        """
        m = self.num_vertices
        for n1, n2 in self.neighbours:  # one pass per lattice direction
            if work is None:  # fresh tensors (autograd needs them), int64 indices: the
                # backward of index_select is an index_add_, ten times slower with int32 ones
                n1, n2 = n1.long(), n2.long()
                both = padded.index_select(0, n1).add_(padded.index_select(0, n2))  # (M, C)
            else:  # the same sums in the reused buffer
                both = torch.index_select(padded, 0, n1, out=work[0])
                both.add_(torch.index_select(padded, 0, n2, out=work[1]))
            # $V_v \leftarrow V_v + \frac12 (V_{v - e_j} + V_{v + e_j})$
            padded[:m].add_(both, alpha=0.5)
        return padded

    def slice(self, vertex_values: torch.Tensor) -> torch.Tensor:
        """``(M, C)`` vertex values -> ``(N, C)`` point values, scaled by ``alpha``."""
        out = vertex_values.new_zeros(self.num_points, vertex_values.shape[1])
        for q in range(self._d + 1):
            # $v_i' = \alpha \sum_q b_{iq}\, V_{v(i,q)}$
            out = out + vertex_values[self.offsets[:, q]] * self.weights[:, q : q + 1]
        return out * self.alpha

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

    # -- memory -------------------------------------------------------------------------------
    def drop_point_tables(self) -> None:
        """Free the per-point tables (``offsets``, ``weights`` and the splat order) once a
        :class:`LatticeSum` has copied them into its matrices: 108 MB for the CRF's two lattices
        at 1 megapixel. The lattice can still :meth:`blur_` (all a :class:`LatticeSum` needs of
        it), but no longer splat, slice or filter."""
        self.offsets = self.weights = self.splat_order = None  # type: ignore[assignment]


class LatticeSum:
    """$\\sum_m \\mathrm{diag}(b_m)\\, K_m\\, \\mathrm{diag}(a_m)$ for several lattices over the
    same N points (the CRF's two kernels with their weights and normalisations), computed as one
    sparse splat into all lattices, their blurs, and one sparse slice that also sums them.

    Args:
        lattices: lattices built on the same N points.
        inner: per lattice, ``(N,)`` scales $a_m$ applied before splatting.
        outer: per lattice, ``(N,)`` scales $b_m$ applied after slicing.

    Splat and slice become sparse CSR matrices (MKL on CPU, cuSPARSE on CUDA): one sparse x dense
    product each, several times faster than the scattered additions of
    :meth:`PermutohedralLattice.splat`, which compute the same sums step by step. The vertex
    values and the blur's gathered neighbours live in buffers reused by every call (unless
    autograd needs fresh tensors): on a megapixel image a fresh buffer per call costs more in
    page faults than the blur itself, and leaves the C library's heap fragmented.
    """

    def __init__(
        self,
        lattices: list[PermutohedralLattice],
        inner: list[torch.Tensor],
        outer: list[torch.Tensor],
    ) -> None:
        n = lattices[0].num_points
        if any(lattice.num_points != n for lattice in lattices):
            raise ValueError("all lattices must be built on the same points")
        self.lattices = lattices
        parts = _SparseParts(n, sum(lattice.dim + 1 for lattice in lattices), lattices[0].device)
        for lattice, a, b in zip(lattices, inner, outer, strict=True):
            parts.add(lattice, a, b)
        self.segments = parts.segments  # rows [start, start + M + 1) of the stacked values
        self.num_rows = parts.row
        self.splat_matrix, self.slice_matrix = parts.matrices()
        self._stacked: torch.Tensor | None = None  # the reused vertex values
        self._work: torch.Tensor | None = None  # the blur's reused (2, M, C) buffer

    def __call__(self, values: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """``(N, C)`` values -> ``(N, C)``: $\\sum_m b_m \\odot K_m (a_m \\odot v)$, written
        into ``out`` if given."""
        c = values.shape[1]
        reuse = not values.requires_grad  # autograd keeps every intermediate: fresh tensors
        if not reuse:
            stacked = self.splat_matrix @ values
        else:
            shape = (self.num_rows, c)
            if self._stacked is None or self._stacked.shape != shape:
                self._stacked = values.new_empty(shape)
                # the blur's buffer, as large as the largest lattice needs (the others use its
                # beginning), instead of two fresh (M, C) tensors per blur direction
                largest = max(lattice.num_vertices for lattice in self.lattices)
                self._work = values.new_empty(2 * largest * c)
            # (addmm with beta = 0 ignores the buffer's old values; plain mm with out= clears
            # it first, a pass over memory that made the slice twice as slow)
            stacked = torch.addmm(
                self._stacked, self.splat_matrix, values, beta=0, out=self._stacked
            )
        # stacked: (sum_m (M_m + 1), C); the padding rows stay 0
        for lattice, (start, rows) in zip(self.lattices, self.segments, strict=True):
            work = None
            if reuse and self._work is not None:
                work = self._work[: 2 * (rows - 1) * c].view(2, rows - 1, c)
            lattice.blur_(stacked[start : start + rows], work)
        if out is None:
            return self.slice_matrix @ stacked
        return torch.addmm(out, self.slice_matrix, stacked, beta=0, out=out)


class _SparseParts:
    """The indices and values of :class:`LatticeSum`'s splat and slice matrices, written in
    place lattice by lattice rather than concatenated from per-lattice pieces: they never exist
    twice (at 1 megapixel the pieces and their concatenations took about 200 MB more).

    Indices are 32-bit when they fit: less memory traffic, about 8% faster products, and half
    the memory.
    """

    def __init__(self, n: int, per_row: int, device: torch.device) -> None:
        self.n, self.index = n, index_dtype(n * per_row)  # per_row: non-zeros per point
        self.splat_cols = torch.empty(n * per_row, dtype=self.index, device=device)
        self.splat_values = torch.empty(n * per_row, dtype=torch.float32, device=device)
        self.slice_cols = torch.empty(n, per_row, dtype=self.index, device=device)
        self.slice_values = torch.empty(n, per_row, dtype=torch.float32, device=device)
        self.crows: list[torch.Tensor] = []
        self.segments: list[tuple[int, int]] = []
        self.row, self.pair, self.column = 0, 0, 0  # where the next lattice's block begins

    def add(self, lattice: PermutohedralLattice, a: torch.Tensor, b: torch.Tensor) -> None:
        """One lattice's block: $b_{iq} a_i$ splat entries, $\\alpha\\, b_i\\, b_{iq}$ slice
        entries (``a``, ``b``: its ``(N,)`` inner and outer scales)."""
        d, order = lattice.dim, lattice.splat_order
        # splat rows: one per vertex, listing the points that splat onto it; then one more,
        # empty row: the zero "absent neighbour" row of this lattice's blur
        crow = torch.cat([lattice.splat_starts, lattice.splat_starts.new_full((2,), len(order))])
        self.crows.append(crow[(1 if self.row else 0) :] + self.pair)
        pairs = slice(self.pair, self.pair + len(order))  # this lattice's (point, vertex) pairs
        point = self.splat_cols[pairs]
        point[:] = order // (d + 1)
        values = torch.index_select(
            lattice.weights.view(-1), 0, order, out=self.splat_values[pairs]
        )
        values.mul_(a[point])  # $b_{iq} a_i$
        columns = slice(self.column, self.column + d + 1)  # its non-zeros in each slice row
        torch.add(lattice.offsets, self.row, out=self.slice_cols[:, columns])
        torch.mul(lattice.weights, lattice.alpha * b[:, None], out=self.slice_values[:, columns])
        self.segments.append((self.row, lattice.num_vertices + 1))
        self.row += lattice.num_vertices + 1
        self.pair += len(order)
        self.column += d + 1

    def matrices(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The splat matrix ``(rows, N)`` and the slice matrix ``(N, rows)``, sparse CSR."""
        n, per_row = self.n, self.slice_cols.shape[1]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            splat = torch.sparse_csr_tensor(
                torch.cat(self.crows).to(self.index),
                self.splat_cols,
                self.splat_values,
                size=(self.row, n),
                check_invariants=False,
            )
            sliced = torch.sparse_csr_tensor(
                torch.arange(
                    0, n * per_row + 1, per_row, device=self.slice_cols.device, dtype=self.index
                ),
                self.slice_cols.view(-1),
                self.slice_values.view(-1),
                size=(n, self.row),
                check_invariants=False,
            )
        return splat, sliced
