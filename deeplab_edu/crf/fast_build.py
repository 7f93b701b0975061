"""The permutohedral lattice's construction, made fast: the tables of the plain steps
(:func:`deeplab_edu.crf.lattice_build.build`) in less time and memory.

The plain steps are easy to follow, but sorting rows of d+1 coordinates with ``torch.unique``,
twice, and keeping int64 tables of every point's corners cost seconds and hundreds of megabytes
on a megapixel image. This build makes the same tables (the same vertices, weights, corners and
neighbours, the vertices numbered in another order) with these speed-ups, each checked against
the plain step it replaces by the tests (``tests/test_crf.py``):

- **chunks**: steps 1-2 (the plain functions themselves) run on 32,768 points at a time, whose
  temporaries stay in the CPU's cache; their results are kept compactly (reduced coordinates as
  int32, ranks as int8) until the vertices are found;
- **one integer per vertex** (:class:`VertexCodes`): vertex q of a simplex is the code
  $q + (d+1) R$, R the mixed-radix number of its first d reduced coordinates, so that one
  stable sort of the codes finds the distinct vertices (the C++ code's hash table) and groups
  the (point, corner) pairs by vertex for the splat matrix at the same time;
- **32-bit sorting** when the codes' range allows it (relative to the smallest): a third less
  time than 64-bit, and half the memory;
- **int32 index tables** below 2^31 entries (offsets, splat order, neighbours), the inverse
  permutation written with ``scatter_`` (3x faster here than ``index_put_``);
- **neighbours by arithmetic on the codes** and ``torch.searchsorted``, one side looked up, the
  other side its inverse map.

The engineering appendix tells how each was measured.
"""

from __future__ import annotations

import math

import torch

from deeplab_edu.crf.lattice_build import (
    LatticeTables,
    barycentric_weights,
    elevate,
    enclosing_simplex,
    index_dtype,
)

KEY_BITS = 62  # integer codes must fit in int64 with a margin
CHUNK = 2**15  # points per chunk of steps 1-2 (their temporaries fit in a cache)
SORT32_RANGE = 2**31  # codes spanning less than this are sorted as 32-bit integers


def simplices(f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Steps 1-2 in chunks: ``(reduced, rank, weights)``, the remainder-0 vertex divided by d+1
    without its last coordinate (``(N, d)`` int32), the ranks (``(N, d+1)`` int8) and the
    barycentric weights (``(N, d+1)`` float32)."""
    n, d = f.shape
    reduced = torch.empty(n, d, dtype=torch.int32, device=f.device)
    rank = torch.empty(n, d + 1, dtype=torch.int8, device=f.device)
    weights = torch.empty(n, d + 1, dtype=torch.float32, device=f.device)
    for i in range(0, n, CHUNK):  # a loop over chunks of points, not over points
        elevated = elevate(f[i : i + CHUNK])
        rem0, ranks = enclosing_simplex(elevated)
        weights[i : i + CHUNK] = barycentric_weights(elevated, rem0, ranks)
        reduced[i : i + CHUNK] = (rem0[:, :d] * (1.0 / (d + 1))).round()
        rank[i : i + CHUNK] = ranks
    return reduced, rank, weights


class VertexCodes:
    """Lattice vertices as one int64 each, for points whose reduced coordinates are ``reduced``.

    A vertex all of whose coordinates are congruent to q modulo d+1 is the code $q + (d+1) R$,
    where R is the mixed-radix number of its first d coordinates divided by d+1 (the last one is
    minus the sum of the others), digits relative to the smallest seen, with room for the shifts
    of the simplex corners and of the neighbours.

    Raises:
        ValueError: if the range is too wide for 64-bit codes.
    """

    def __init__(self, reduced: torch.Tensor) -> None:
        self.d = d = reduced.shape[1]
        self.lo = reduced.min(0).values.to(torch.int64) - 2  # room for shifts, neighbours +-1
        self.span = reduced.max(0).values.to(torch.int64) + 2 - self.lo
        bits = float(torch.log2(self.span.to(torch.float64)).sum()) + math.log2(d + 1)
        if bits > KEY_BITS:
            raise ValueError(
                f"features span too wide a range to encode lattice keys in 64 bits ({bits:.0f} "
                "bits needed): divide them by larger bandwidths"
            )
        spans = torch.cat([self.span[1:], self.span.new_ones(1)])  # radix_i = prod_{k>i} span_k
        self.radix = spans.flip(0).cumprod(0).flip(0)  # (d,)

    def corners(self, reduced: torch.Tensor, rank: torch.Tensor) -> torch.Tensor:
        """The codes of the d+1 corners of each point's simplex, ``(n, d+1)`` int64 (corner q
        shifts coordinate i by -1 where $\\mathrm{rank}_i > d - q$, as the plain step)."""
        n, d = reduced.shape
        base = ((reduced - self.lo) * self.radix).sum(1)  # (n,) R of the q = 0 corner
        # coordinate i is shifted for the corners q > d - rank_i: an exclusive cumulative sum of
        # the radices ordered by d - rank_i gives the shift of R for every q at once
        by_position = torch.zeros(n, d + 1, dtype=torch.int64, device=reduced.device)
        by_position.scatter_(1, d - rank[:, :d], self.radix.expand(n, d))
        shift = by_position.cumsum(1) - by_position  # (n, d+1)
        return torch.arange(d + 1, device=reduced.device) + (d + 1) * (base[:, None] - shift)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """``(M, d+1)`` integer coordinates of the vertices of ``codes``."""
        d = self.d
        remainder, r_number = codes % (d + 1), codes // (d + 1)
        digits = (r_number[:, None] // self.radix) % self.span  # (M, d)
        first = (digits + self.lo) * (d + 1) + remainder[:, None]  # (M, d)
        return torch.cat([first, -first.sum(1, keepdim=True)], dim=1)

    def neighbours(self, codes: torch.Tensor, index: torch.dtype) -> torch.Tensor:
        """``(d+1, 2, M)`` neighbour indices of the sorted vertex ``codes``, as the plain step:
        one step along direction j (every coordinate -1, coordinate j +d: the remainder moves
        by -1 and R by one radix, or by all the others when it wraps), and its inverse map."""
        d, m = self.d, len(codes)
        remainder, r_number = codes % (d + 1), codes // (d + 1)
        total, wraps = self.radix.sum(), remainder == 0
        vertices = torch.arange(m, device=codes.device, dtype=index)
        neighbours = torch.full((d + 1, 2, m + 1), m, dtype=index, device=codes.device)
        for direction in range(d + 1):  # a loop over the d+1 axes, not over points
            radix_j = self.radix[direction] if direction < d else torch.zeros_like(total)
            along = torch.where(wraps, r_number - (total - radix_j), r_number + radix_j)
            along = _lookup(codes, torch.where(wraps, d, remainder - 1) + (d + 1) * along)
            neighbours[direction, 0, :m] = along
            neighbours[direction, 1].scatter_(0, along, vertices)  # absent ones land on row M
        return neighbours[:, :, :m].contiguous()


def _lookup(sorted_codes: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Vertex index of each code, or M where that vertex does not exist."""
    m = len(sorted_codes)
    index = torch.searchsorted(sorted_codes, codes).clamp_(max=m - 1)
    return index.masked_fill_(sorted_codes[index] != codes, m)


def build(f: torch.Tensor) -> LatticeTables:
    """The lattice's tables for ``(N, d)`` float32 features (:func:`lattice_build.build`'s).

    One function from the codes to the tables, so that each large temporary is freed (``del``)
    as soon as the next is made: at 1 megapixel they are tens of megabytes each.
    """
    n, d = f.shape
    index = index_dtype(n * (d + 1))
    reduced, rank, weights = simplices(f)
    coder = VertexCodes(reduced)
    q_codes = torch.empty(n, d + 1, dtype=torch.int64, device=f.device)
    for i in range(0, n, CHUNK):
        q_codes[i : i + CHUNK] = coder.corners(
            reduced[i : i + CHUNK].long(), rank[i : i + CHUNK].long()
        )
    del reduced, rank
    # one stable sort: the distinct vertices in code order, and the (point, corner) pairs grouped
    # by vertex, points in increasing order (the splat matrix's layout); 32-bit when it fits
    q_codes = q_codes.view(-1)  # (N*(d+1),)
    smallest = q_codes.min()
    if int(q_codes.max() - smallest) < SORT32_RANGE:
        q_codes = q_codes.sub_(smallest).to(torch.int32)  # in place, then narrowed
    else:
        smallest = torch.zeros_like(smallest)
    sorted_codes, position = torch.sort(q_codes, stable=True)
    del q_codes
    is_first = torch.ones_like(sorted_codes, dtype=torch.bool)
    is_first[1:] = sorted_codes[1:] != sorted_codes[:-1]
    codes = sorted_codes[is_first].to(torch.int64) + smallest  # (M,) sorted
    del sorted_codes
    vertex = torch.cumsum(is_first, 0, dtype=index).sub_(1)  # (N*(d+1),) of each sorted pair
    # the two per-point index tables in one block of memory (48 MB at 1 megapixel, mapped on its
    # own and returned whole when freed; smaller blocks stay in the C library's heap): row 0 the
    # offsets, the inverse of the sort's permutation; row 1 the permutation, the splat order
    tables = vertex.new_empty(2, n * (d + 1))
    offsets = tables[0].scatter_(0, position, vertex).view(n, d + 1)
    splat_order = tables[1].copy_(position)
    splat_starts = torch.nonzero(is_first)[:, 0]  # (M,) first pair of each vertex
    del vertex, position, tables
    neighbours = coder.neighbours(codes, index)
    return LatticeTables(
        weights, offsets, neighbours, splat_order, splat_starts, keys=lambda: coder.decode(codes)
    )
