"""The permutohedral lattice (Adams, Baek & Davis, Eurographics 2010) in pure PyTorch.

Gaussian filtering $v_i' = \\sum_j \\exp(-\\frac12\\|f_i - f_j\\|^2)\\, v_j$ of N points in d
dimensions, approximated in O(N d^2) time instead of O(N^2) (Adams, Baek and Davis, 2010):

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
_MAX_FEATURE = 2.0**15  # elevated coordinates stay far below float32's 2^24 integer limit
_CHUNK = 2**15  # points per chunk of the per-point steps (their temporaries fit in a cache)
_SORT32_RANGE = 2**31  # codes spanning less than this are sorted as 32-bit integers
_INT32_LIMIT = 2**31 - 1  # index tables with fewer entries than this are stored as int32


def elevate(features: torch.Tensor) -> torch.Tensor:
    """Step 1: the points on the hyperplane $\\sum_k y_k = 0$ of $\\mathbb{R}^{d+1}$.

    $y = E\\,\\mathrm{diag}(s)\\,f$: the d columns of E are orthogonal, sum to zero and have norms
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


def _simplex(
    f: torch.Tensor, reduced: torch.Tensor, rank_out: torch.Tensor, weights: torch.Tensor
) -> None:
    """Steps 1-2 for ``(n, d)`` features: the enclosing simplex of each elevated point, written
    into ``reduced`` (its remainder-0 vertex divided by d+1, ``(n, d)`` integers, the last
    coordinate left out), ``rank_out`` (the rank 0..d of each coordinate, ``(n, d+1)``
    integers) and ``weights`` (the barycentric weights, ``(n, d+1)`` float32)."""
    n, d = f.shape
    down = 1.0 / (d + 1)
    elevated = elevate(f)  # (n, d+1)

    # Nearest remainder-0 vertex: round each coordinate to a multiple of d+1
    v = elevated * down
    up, lo = torch.ceil(v) * (d + 1), torch.floor(v) * (d + 1)
    rem0 = torch.where(up - elevated < elevated - lo, up, lo)  # (n, d+1)
    total = (rem0.sum(1) * down).round().to(torch.int64)  # (n,) coordinate sum / (d+1)

    # Rank of each coordinate of the residual in decreasing order (ties: later index ranks
    # higher), which names the simplex the point falls in
    res = elevated - rem0  # (n, d+1)
    rank = torch.empty(n, d + 1, dtype=torch.int64, device=f.device)
    for axis in range(d + 1):  # a loop over the d+1 coordinates, not over points
        r_a = res[:, axis : axis + 1]
        rank[:, axis] = (res[:, axis + 1 :] > r_a).sum(1) + (res[:, :axis] >= r_a).sum(1)
    rank += total[:, None]  # (n, d+1)
    # Points off the plane (total != 0) are brought back by wrapping the ranks
    under, over = rank < 0, rank > d
    rank = rank + (d + 1) * under - (d + 1) * over
    rem0 = rem0 + (d + 1) * under - (d + 1) * over

    # Barycentric weights (Adams et al. p. 10): slot d-rank_i gets +r_i, slot d-rank_i+1
    # gets -r_i, with $r_i = (y_i - \mathrm{rem0}_i)/(d+1)$; then wrap slot d+1 onto slot 0.
    r = (elevated - rem0) * down
    bary = torch.zeros(n, d + 2, device=f.device, dtype=torch.float32)
    bary.scatter_add_(1, d - rank, r).scatter_add_(1, d - rank + 1, -r)
    bary[:, 0] += 1.0 + bary[:, d + 1]
    weights.copy_(bary[:, : d + 1])
    reduced.copy_((rem0[:, :d] * down).round())
    rank_out.copy_(rank)


class PermutohedralLattice:
    """The lattice of one set of features, ready to filter any number of value channels.

    Args:
        features: ``(N, d)`` float tensor of features already divided by their bandwidths.

    Attributes:
        offsets: ``(N, d+1)`` index of each point's simplex vertices.
        weights: ``(N, d+1)`` float32 barycentric weights (each row sums to 1).
        codes: ``(M,)`` sorted int64 codes of the M lattice vertices (see :attr:`keys`).
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

    def __init__(self, features: torch.Tensor) -> None:
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
        n, d = f.shape
        self.num_points, self.dim = n, d
        self.device = device = f.device
        self._d = d
        # an index into N (d+1) entries fits int32 (half of int64's memory) unless N is huge
        index = torch.int32 if n * (d + 1) <= _INT32_LIMIT else torch.int64
        # Steps 1-2 point by point, in chunks that stay in the CPU's cache (the temporaries of
        # a whole 1-megapixel image would not): each point's simplex and barycentric weights.
        # Kept until the codes are made, compactly: reduced coordinates (small) as int32, ranks
        # (0..d) as int8; 26 instead of 88 MB at 1 megapixel for d = 5
        reduced = torch.empty(n, d, dtype=torch.int32, device=device)
        rank = torch.empty(n, d + 1, dtype=torch.int8, device=device)
        self.weights = torch.empty(n, d + 1, dtype=torch.float32, device=device)
        for i in range(0, n, _CHUNK):  # a loop over chunks of points, not over points
            _simplex(
                f[i : i + _CHUNK],
                reduced[i : i + _CHUNK],
                rank[i : i + _CHUNK],
                self.weights[i : i + _CHUNK],
            )

        # Vertex q of the simplex (q = 0..d) has coordinates
        # $\mathrm{rem0}_i + q - (d+1)[\mathrm{rank}_i > d-q]$.
        # All coordinates of a vertex are congruent to q mod (d+1), so a vertex is stored as the
        # integer code $q + (d+1) R$, where R is the mixed-radix number of the first d reduced
        # coordinates $\mathrm{rem0}_i/(d+1) - [\mathrm{rank}_i > d-q]$ (the last coordinate is
        # minus the sum of the others). Sorting the codes (``torch.sort``) replaces the hash
        # table of the C++ code.
        self._lo = reduced.min(0).values.to(torch.int64) - 2  # room for shifts, neighbours +-1
        self._span = reduced.max(0).values.to(torch.int64) + 2 - self._lo
        bits = float(torch.log2(self._span.to(torch.float64)).sum()) + math.log2(d + 1)
        if bits > _KEY_BITS:
            raise ValueError(
                f"features span too wide a range to encode lattice keys in 64 bits ({bits:.0f} "
                "bits needed): divide them by larger bandwidths"
            )
        spans = torch.cat([self._span[1:], self._span.new_ones(1)])  # radix_i = prod_{k>i} span_k
        self._radix = spans.flip(0).cumprod(0).flip(0)  # (d,)
        q_codes = torch.empty(n, d + 1, dtype=torch.int64, device=device)
        for i in range(0, n, _CHUNK):
            q_codes[i : i + _CHUNK] = self._codes(
                reduced[i : i + _CHUNK].long(), rank[i : i + _CHUNK].long()
            )
        del reduced, rank
        # Distinct vertices by one stable sort of the codes (vertices numbered in code order).
        # The sort also groups the (point, vertex) pairs by vertex, points in increasing order:
        # exactly the layout of the splat matrix. Codes are sorted as 32-bit integers (relative
        # to the smallest) when their range allows: a third less time than 64-bit ones, and
        # half the memory (made in place, then narrowed: no second 64-bit copy).
        q_codes = q_codes.view(-1)  # (N*(d+1),)
        smallest = q_codes.min()
        if int(q_codes.max() - smallest) < _SORT32_RANGE:
            q_codes = q_codes.sub_(smallest).to(torch.int32)
        else:
            smallest = torch.zeros_like(smallest)
        sorted_codes, position = torch.sort(q_codes, stable=True)
        del q_codes
        is_first = torch.ones_like(sorted_codes, dtype=torch.bool)
        is_first[1:] = sorted_codes[1:] != sorted_codes[:-1]
        self.codes = sorted_codes[is_first].to(torch.int64) + smallest  # (M,) sorted
        del sorted_codes
        self.num_vertices = m = self.codes.shape[0]
        # (N*(d+1),) vertex of each sorted pair, counted directly in the index type
        vertex = torch.cumsum(is_first, 0, dtype=index).sub_(1)
        # The two index tables kept per point, in one block of memory: row 0 the offsets, the
        # inverse of the sort's permutation (scatter_: 3x faster here than index_put_); row 1
        # the permutation itself, for the splat matrix. (One block of 48 MB at 1 megapixel,
        # which the C library maps on its own and returns whole when drop_point_tables frees
        # it; blocks under 32 MB live in its heap, which keeps freed memory resident.)
        tables = vertex.new_empty(2, n * (d + 1))
        self.offsets = tables[0].scatter_(0, position, vertex).view(n, d + 1)
        self.splat_order = tables[1].copy_(position)
        self.splat_starts = torch.nonzero(is_first)[:, 0]  # (M,) first pair of each vertex
        del vertex, position, tables

        # Neighbours along direction j: all coordinates -1 except coordinate j, which gets +d
        # (for j = d only the implicit last coordinate gets +d); and the opposite step. In
        # codes: the remainder moves by -1 (or +1) and R by one radix or by all the others.
        # The opposite step is the inverse map: look up one side, invert it for the other.
        remainder, r_number = self.codes % (d + 1), self.codes // (d + 1)
        total = self._radix.sum()
        wraps = remainder == 0
        vertices = torch.arange(m, device=device, dtype=index)
        neighbours = torch.full((d + 1, 2, m + 1), m, dtype=index, device=device)
        for direction in range(d + 1):  # a loop over the d+1 axes, not over points
            radix_j = self._radix[direction] if direction < d else torch.zeros_like(total)
            minus = torch.where(wraps, r_number - (total - radix_j), r_number + radix_j)
            minus = self._lookup(torch.where(wraps, d, remainder - 1) + (d + 1) * minus)
            neighbours[direction, 0, :m] = minus
            neighbours[direction, 1].scatter_(0, minus, vertices)  # absent ones land on row M
        neighbours = neighbours[:, :, :m].contiguous()
        self.neighbours = neighbours

        # Slice scale: the blur returns $1 + 2^{-d}$ of a vertex's value to itself (going
        # once around all d+1 directions); dividing by it gives the vertex a self-weight of 1.
        self.alpha = 1.0 / (1.0 + 2.0 ** (-d))

    # -- integer keys -------------------------------------------------------------------------
    def _codes(self, reduced: torch.Tensor, rank: torch.Tensor) -> torch.Tensor:
        """The codes of the d+1 vertices of each point's simplex, ``(n, d+1)`` int64."""
        n, d = reduced.shape
        base = ((reduced - self._lo) * self._radix).sum(1)  # (n,) R of the q = 0 vertex
        # coordinate i is shifted for the vertices q > d - rank_i: an exclusive cumulative sum
        # of the radices ordered by d - rank_i gives the shift of R for every q at once
        by_position = torch.zeros(n, d + 1, dtype=torch.int64, device=reduced.device)
        by_position.scatter_(1, d - rank[:, :d], self._radix.expand(n, d))
        shift = by_position.cumsum(1) - by_position  # (n, d+1)
        return torch.arange(d + 1, device=reduced.device) + (d + 1) * (base[:, None] - shift)

    def _lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """Vertex index of each code, or M where that vertex does not exist."""
        m = self.num_vertices
        index = torch.searchsorted(self.codes, codes).clamp_(max=m - 1)
        return index.masked_fill_(self.codes[index] != codes, m)

    @property
    def keys(self) -> torch.Tensor:
        """``(M, d+1)`` integer coordinates of the vertices (decoded from their codes)."""
        d = self._d
        remainder, r_number = self.codes % (d + 1), self.codes // (d + 1)
        digits = (r_number[:, None] // self._radix) % self._span  # (M, d)
        first = (digits + self._lo) * (d + 1) + remainder[:, None]  # (M, d)
        return torch.cat([first, -first.sum(1, keepdim=True)], dim=1)

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
        per_row = sum(lattice.dim + 1 for lattice in lattices)  # non-zeros per point
        device = lattices[0].offsets.device
        # 32-bit indices when they fit: less memory traffic, about 8% faster products, and
        # half the memory
        index = torch.int32 if n * per_row <= _INT32_LIMIT else torch.int64
        # Both matrices are written in place, lattice by lattice, rather than concatenated from
        # per-lattice pieces: their indices and values never exist twice (at 1 megapixel the
        # pieces and the concatenations took about 200 MB more than the matrices)
        splat_cols = torch.empty(n * per_row, dtype=index, device=device)
        splat_values = torch.empty(n * per_row, dtype=torch.float32, device=device)
        slice_cols = torch.empty(n, per_row, dtype=index, device=device)
        slice_values = torch.empty(n, per_row, dtype=torch.float32, device=device)
        crows = []
        start, nnz, column = 0, 0, 0
        self.segments = []  # rows [start, start + M + 1) of the stacked vertex values
        for lattice, a, b in zip(lattices, inner, outer, strict=True):
            d, order = lattice.dim, lattice.splat_order
            # splat rows: one per vertex, listing the points that splat onto it; then one more,
            # empty row: the zero "absent neighbour" row of this lattice's blur
            crow = torch.cat(
                [lattice.splat_starts, lattice.splat_starts.new_full((2,), len(order))]
            )
            crows.append(crow[(1 if start else 0) :] + nnz)
            pairs = range(nnz, nnz + len(order))  # this lattice's (point, vertex) pairs
            point = splat_cols[pairs.start : pairs.stop]
            point[:] = order // (d + 1)
            # $b_{iq} a_i$
            values = splat_values[pairs.start : pairs.stop]
            torch.index_select(lattice.weights.view(-1), 0, order, out=values).mul_(a[point])
            columns = range(column, column + d + 1)  # this lattice's non-zeros in each row
            torch.add(lattice.offsets, start, out=slice_cols[:, columns.start : columns.stop])
            torch.mul(
                lattice.weights,
                lattice.alpha * b[:, None],
                out=slice_values[:, columns.start : columns.stop],
            )
            self.segments.append((start, lattice.num_vertices + 1))
            start += lattice.num_vertices + 1
            nnz += len(order)
            column += d + 1
        self.num_rows = start
        self._stacked: torch.Tensor | None = None  # the reused vertex values
        self._work: torch.Tensor | None = None  # the blur's reused (2, M, C) buffer
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            self.splat_matrix = torch.sparse_csr_tensor(
                torch.cat(crows).to(index),
                splat_cols,
                splat_values,
                size=(start, n),
                check_invariants=False,
            )
            self.slice_matrix = torch.sparse_csr_tensor(
                torch.arange(0, n * per_row + 1, per_row, device=device, dtype=index),
                slice_cols.view(-1),
                slice_values.view(-1),
                size=(n, start),
                check_invariants=False,
            )

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
