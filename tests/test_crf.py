"""The fully connected CRF: exact vs lattice filtering, mean field, and the pydensecrf reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from deeplab_edu.crf import (
    NAIVE_MAX_PIXELS,
    NaiveFilter,
    PermutohedralLattice,
    dense_crf,
    fast_build,
    lattice_build,
    mean_field,
    simulate_unaries,
)
from deeplab_edu.crf.kernels import appearance_features, smoothness_features
from deeplab_edu.crf.meanfield import PairwiseMessage, iterate
from deeplab_edu.crf.permutohedral import LatticeSum
from deeplab_edu.data.toy import make_toy_voc
from deeplab_edu.data.transforms import to_hwc
from deeplab_edu.data.voc import VOCSegmentation, read_mask


def two_region_scene(height: int = 40, width: int = 48, seed: int = 0):
    """A disc of one colour on a background of another, with pixel noise; its mask."""
    g = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    mask = ((y - height / 2) ** 2 + (x - width / 2.5) ** 2 < (height / 3) ** 2).long()  # (H, W)
    colours = torch.tensor([[40.0, 90.0, 160.0], [200.0, 60.0, 40.0]])
    image = colours[mask] + 12.0 * torch.randn(height, width, 3, generator=g)
    return image.clamp(0, 255).to(torch.uint8), mask


# -- filtering --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("d", "max_bound", "mean_bound"),
    # measured on seeds 0..4 (3000 points in [0, 5]^d, values in [0, 1]): worst max error
    # 0.0049 (d=2) and 0.067 (d=5), mean error 0.0007 and 0.0041. The lattice replaces the
    # Gaussian by a piecewise-linear kernel of nearly the same width, so errors grow with d
    # (coarser lattice relative to the kernel); the bounds allow ~1.5-2x the measured values.
    [(2, 0.01, 0.0015), (5, 0.1, 0.008)],
)
def test_lattice_matches_exact_filtering(d, max_bound, mean_bound):
    g = torch.Generator().manual_seed(11)
    features = torch.rand(3000, d, generator=g) * 5.0
    values = torch.rand(3000, 4, generator=g)
    lattice, exact = PermutohedralLattice(features), NaiveFilter(features)
    ones = torch.ones(3000, 1)
    approx = lattice(values) / lattice(ones)  # normalised filter outputs
    truth = exact(values) / exact(ones)
    error = (approx - truth).abs()
    assert error.max() < max_bound and error.mean() < mean_bound, (error.max(), error.mean())
    # the barycentric weights are a partition of unity, and the vertices are shared
    assert torch.allclose(lattice.weights.sum(1), torch.ones(3000), atol=1e-5)
    assert (lattice.weights >= -1e-6).all()
    assert lattice.num_vertices < 3000 * (d + 1)


def test_barycentric_weights_rebuild_the_points_from_their_simplex():
    from deeplab_edu.viz.crf import lattice_points_in_feature_space

    points = torch.rand(50, 2, generator=torch.Generator().manual_seed(4)) * 6
    lattice = PermutohedralLattice(points)
    vertices = torch.from_numpy(lattice_points_in_feature_space(lattice.keys)).float()
    rebuilt = (lattice.weights[:, :, None] * vertices[lattice.offsets]).sum(1)
    assert torch.allclose(rebuilt, points, atol=1e-4)
    assert (lattice.keys.sum(1) == 0).all()  # vertices lie on the hyperplane
    assert (torch.remainder(lattice.keys - lattice.keys[:, :1], 3) == 0).all()  # congruent mod 3


def _same_lattice(fast: PermutohedralLattice, plain: PermutohedralLattice) -> None:
    """The two builds hold the same lattice, up to the numbering of its vertices."""
    assert fast.num_vertices == plain.num_vertices
    position = {tuple(key): i for i, key in enumerate(plain.keys.tolist())}
    renumber = torch.tensor([position[tuple(key)] for key in fast.keys.tolist()])
    absent = torch.tensor([plain.num_vertices])  # the "no neighbour" index maps to itself
    assert torch.equal(fast.weights, plain.weights)
    assert torch.equal(renumber[fast.offsets.long()], plain.offsets.long())
    assert torch.equal(
        torch.cat([renumber, absent])[fast.neighbours.long()],
        plain.neighbours.long()[:, :, renumber],
    )
    for lattice in (fast, plain):  # each groups the (point, corner) pairs by its own vertices
        grouped = lattice.offsets.reshape(-1)[lattice.splat_order.long()]
        assert torch.equal(grouped, torch.sort(lattice.offsets.reshape(-1), stable=True).values)
        assert torch.equal(
            grouped[lattice.splat_starts], torch.arange(lattice.num_vertices).to(grouped)
        )


@pytest.mark.parametrize("d", [1, 2, 5])
def test_the_fast_build_makes_the_lattice_of_the_plain_steps(d):
    features = torch.rand(4000, d, generator=torch.Generator().manual_seed(d)) * 9
    fast, plain = PermutohedralLattice(features), PermutohedralLattice(features, plain=True)
    _same_lattice(fast, plain)
    values = torch.rand(4000, 3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(fast(values), plain(values))  # splat, blur, slice: the same sums


def test_each_speed_up_equals_its_plain_step():
    image, _ = two_region_scene(41, 53)  # an image's appearance features: d = 5
    f = appearance_features(image, 10.0, 13.0)
    elevated = lattice_build.elevate(f)
    rem0, rank = lattice_build.enclosing_simplex(elevated)
    corners = lattice_build.simplex_vertices(rem0, rank)  # (N, 6, 6) coordinates
    # steps 1-2 in chunks, kept compactly: the same simplices and weights
    reduced, ranks, weights = fast_build.simplices(f)
    assert torch.equal(weights, lattice_build.barycentric_weights(elevated, rem0, rank))
    assert torch.equal(ranks.long(), rank) and torch.equal(reduced.long() * 6, rem0[:, :5].long())
    # the corners as integer codes: decoded, the plain coordinates
    coder = fast_build.VertexCodes(reduced)
    codes = coder.corners(reduced.long(), ranks.long())
    assert torch.equal(coder.decode(codes.reshape(-1)), corners.reshape(-1, 6))
    # one sort of the codes finds the vertices that torch.unique finds
    keys, _ = lattice_build.find_vertices(corners)
    unique_codes = torch.unique(codes)
    assert torch.equal(torch.unique(coder.decode(unique_codes), dim=0), keys)
    # neighbours by arithmetic on the codes: those found by looking the coordinates up
    by_codes = coder.neighbours(unique_codes, torch.int64)
    by_keys = lattice_build.neighbour_indices(coder.decode(unique_codes))
    assert torch.equal(by_codes, by_keys)


def test_a_point_in_its_triangle_by_hand():
    """d = 2: the lattice's vertices are the points with coordinates congruent modulo 3 that sum to
    0; a point's weights are its barycentric coordinates in its triangle."""
    point = torch.tensor([[0.4, 0.3]])
    elevated = lattice_build.elevate(point)
    rem0, rank = lattice_build.enclosing_simplex(elevated)
    corners = lattice_build.simplex_vertices(rem0, rank)[0]  # (3, 3)
    weights = lattice_build.barycentric_weights(elevated, rem0, rank)[0]
    assert (corners.sum(1) == 0).all()
    assert all(len(set((c % 3).tolist())) == 1 for c in corners)
    assert (weights >= 0).all() and torch.isclose(weights.sum(), torch.tensor(1.0))
    assert torch.allclose((weights[:, None] * corners.float()).sum(0), elevated[0], atol=1e-5)


def test_fused_sparse_filtering_equals_the_step_by_step_lattice():
    g = torch.Generator().manual_seed(2)
    points = torch.rand(2000, 2, generator=g) * 30
    colours = torch.rand(2000, 3, generator=g) * 40
    appearance = PermutohedralLattice(torch.cat([points / 8, colours / 5], 1))
    smoothness = PermutohedralLattice(points / 3)
    a, b = [torch.rand(2000, generator=g) + 0.5 for _ in range(2)]
    values = torch.rand(2000, 7, generator=g)
    fused = LatticeSum([appearance, smoothness], [a, torch.ones(2000)], [b, 2 * torch.ones(2000)])
    steps = b[:, None] * appearance(a[:, None] * values) + 2 * smoothness(values)
    assert torch.allclose(fused(values), steps, rtol=1e-4, atol=1e-4)
    # and the neighbour tables are each other's inverse (a step and its opposite)
    m = appearance.num_vertices
    minus, plus = appearance.neighbours[:, 0], appearance.neighbours[:, 1]
    has = minus < m
    assert torch.equal(
        plus.gather(1, minus.clamp(max=m - 1))[has], torch.arange(m).expand(6, -1)[has]
    )


@pytest.mark.parametrize("chunk", [7, 1000])
def test_lattice_built_in_chunks_or_with_64_bit_sorting_is_the_same(monkeypatch, chunk):
    # the per-point steps run in chunks (boundaries inside the image here) and the codes are
    # sorted as 32-bit integers when they fit: neither may change a single index or weight
    image, _ = two_region_scene(23, 31)
    features = appearance_features(image, 10.0, 13.0)
    whole = PermutohedralLattice(features)
    monkeypatch.setattr(fast_build, "CHUNK", chunk)
    monkeypatch.setattr(fast_build, "SORT32_RANGE", 0)  # always the 64-bit sort
    other = PermutohedralLattice(features)
    for name in ("offsets", "weights", "keys", "neighbours", "splat_order", "splat_starts"):
        assert torch.equal(getattr(whole, name), getattr(other, name)), name


def test_reused_buffers_change_no_result():
    # the message, the vertex values and Q live in buffers reused across iterations and calls
    image, mask = two_region_scene(30, 36)
    probs = simulate_unaries(mask.numpy(), num_classes=3, stride=4, noise=0.2, seed=1)
    first, again = dense_crf(image, probs), dense_crf(image, probs)
    assert torch.equal(first, again)
    fresh = mean_field(image, probs, track=True).q  # tracking keeps every Q: fresh tensors
    assert torch.allclose(first, fresh, atol=1e-6)
    features = [appearance_features(image, 10.0, 13.0), smoothness_features(30, 36, 3.0)]
    message = PairwiseMessage([PermutohedralLattice(f) for f in features], (4, 3), "after")
    q = torch.softmax(torch.randn(30 * 36, 3), 1)
    kept = q.clone()
    one = message(q).clone()
    message(torch.softmax(torch.randn(30 * 36, 3), 1))  # another call reuses the buffers
    assert torch.equal(q, kept) and torch.equal(message(q), one)


def test_memory_savings_change_no_result(monkeypatch):
    # what saves memory on large images must not change a single value: int32 index tables
    # (against int64 ones), the blur into a reused buffer (against fresh tensors, as autograd
    # gets them) and the per-point tables dropped once the fused matrices hold them
    image, mask = two_region_scene(30, 36)
    probs = simulate_unaries(mask.numpy(), num_classes=4, stride=4, noise=0.2, seed=2)
    features = [appearance_features(image, 10.0, 13.0), smoothness_features(30, 36, 3.0)]
    narrow = [PermutohedralLattice(f) for f in features]
    monkeypatch.setattr(lattice_build, "INT32_LIMIT", 0)  # int64 everywhere
    wide = [PermutohedralLattice(f) for f in features]
    monkeypatch.undo()
    for small, large in zip(narrow, wide, strict=True):
        assert small.offsets.dtype == small.neighbours.dtype == torch.int32
        assert large.offsets.dtype == large.neighbours.dtype == torch.int64
        assert torch.equal(small.offsets.long(), large.offsets)
        assert torch.equal(small.neighbours.long(), large.neighbours)
        assert torch.equal(small.splat_order.long(), large.splat_order)
        padded = torch.cat([torch.rand(small.num_vertices, 4), torch.zeros(1, 4)])
        work = torch.full((2, small.num_vertices, 4), float("nan"))  # stale contents: unused
        assert torch.equal(small.blur_(padded.clone(), work), large.blur_(padded.clone()))
    q = torch.softmax(torch.randn(30 * 36, 4), 1)
    message = PairwiseMessage(narrow, (4, 3), "symmetric")
    reused = message(q).clone()
    assert torch.equal(reused, PairwiseMessage(wide, (4, 3), "symmetric")(q))
    assert torch.equal(reused, message(q.clone().requires_grad_()).detach())  # fresh tensors
    for lattice in narrow:
        lattice.drop_point_tables()
    assert torch.equal(message(q), reused)
    # dense_crf drops its lattices' tables: the same Q as a mean field that keeps them
    unary = -torch.log(probs.clamp(1e-5, 1.0)).reshape(4, -1).T.contiguous()
    kept = PairwiseMessage([PermutohedralLattice(f) for f in features], (4, 3), "symmetric")
    q_kept = iterate(unary, kept, 5)[0].T.reshape(4, 30, 36)
    params = {"w1": 4, "theta_alpha": 10.0, "theta_beta": 13.0, "w2": 3, "theta_gamma": 3.0}
    q_crf = dense_crf(image, probs, iterations=5, normalization="symmetric", **params)
    assert torch.equal(q_crf, q_kept)


def test_lattice_gain_predicts_the_unnormalised_mass():
    # dense points far from the boundary: the lattice's total mass / the Gaussian's is gain()
    y, x = torch.meshgrid(torch.arange(60.0), torch.arange(60.0), indexing="ij")
    features = torch.stack([x.reshape(-1), y.reshape(-1)], 1) / 3.0  # a 60x60 grid, sigma 3
    lattice, exact = PermutohedralLattice(features), NaiveFilter(features)
    ones = torch.ones(3600, 1)
    ratio = (lattice(ones) / exact(ones)).reshape(60, 60)[20:40, 20:40]  # interior pixels
    assert abs(ratio.mean().item() / lattice.gain() - 1) < 0.03


def test_naive_refuses_large_images_clearly():
    with pytest.raises(ValueError, match="permutohedral"):
        NaiveFilter(torch.zeros(NAIVE_MAX_PIXELS + 1, 2))


def test_naive_chunked_equals_cached():
    features = torch.rand(500, 5, generator=torch.Generator().manual_seed(0)) * 3
    values = torch.rand(500, 3)
    cached = NaiveFilter(features)
    chunked = NaiveFilter(features, chunk_size=64)
    chunked.kernel = None  # force the chunked path
    assert torch.allclose(cached(values), chunked(values), atol=1e-5)


# -- mean field -------------------------------------------------------------------------------


def test_naive_and_lattice_mean_field_agree():
    image, mask = two_region_scene(40, 48)
    probs = simulate_unaries(mask.numpy(), num_classes=3, stride=4, noise=0.2, seed=1)
    for normalization in ("symmetric", "after", "none"):
        exact = dense_crf(image, probs, method="naive", normalization=normalization)
        approx = dense_crf(image, probs, normalization=normalization)
        agreement = (exact.argmax(0) == approx.argmax(0)).float().mean().item()
        # measured (3 seeds, 3 normalisations): agreement >= 0.997, mean |dQ| <= 0.0017, at most
        # 0.21% of pixels with |dQ| > 0.1. The lattice kernel differs from the Gaussian by a few
        # per cent (see the filtering test); that only flips pixels whose labels were nearly
        # tied, where Q can then differ by up to 1: so bound the mean and the count, not the max.
        difference = (exact - approx).abs()
        assert agreement >= 0.99, (normalization, agreement)
        assert difference.mean() < 0.005, normalization
        assert (difference > 0.1).float().mean() < 0.01, normalization


@pytest.mark.parametrize("method", ["naive", "permutohedral"])
def test_objective_does_not_increase_and_q_is_a_distribution(method):
    image, mask = two_region_scene(32, 36, seed=2)
    probs = simulate_unaries(mask.numpy(), num_classes=4, stride=4, noise=0.3, seed=3)
    result = mean_field(image, probs, method=method, iterations=8, track=True)
    energy = np.array(result.objective)
    assert len(result.history) == 9 and len(energy) == 9
    # exact filtering: guaranteed (concave pairwise term, CCCP); the lattice: nearly symmetric
    tolerance = 1e-3 * abs(energy[0]) if method == "permutohedral" else 1e-4 * abs(energy[0])
    assert (np.diff(energy) <= tolerance).all(), np.diff(energy)
    assert energy[-1] < energy[0]
    for q in result.history:
        assert torch.allclose(q.sum(0), torch.ones(32, 36), atol=1e-5)
        assert (q >= 0).all()
    assert torch.equal(result.q, result.history[-1])


def test_crf_recovers_a_two_colour_image_from_noisy_unaries():
    image, mask = two_region_scene(48, 56, seed=4)
    g = torch.Generator().manual_seed(5)
    # 30% of pixels get the wrong label, independently: salt-and-pepper unaries
    noisy = torch.where(torch.rand(mask.shape, generator=g) < 0.3, 1 - mask, mask)
    probs = torch.nn.functional.one_hot(noisy, 2).permute(2, 0, 1).float() * 0.4 + 0.3
    before = (probs.argmax(0) == mask).float().mean().item()
    q = dense_crf(image, probs, w1=10, theta_alpha=20, theta_beta=20)
    after = (q.argmax(0) == mask).float().mean().item()
    assert before < 0.75 and after > 0.99, (before, after)


def test_exclude_self_changes_little_but_something():
    image, mask = two_region_scene(24, 24)
    probs = simulate_unaries(mask.numpy(), num_classes=2, stride=4, seed=0)
    kept = dense_crf(image, probs, method="naive", normalization="symmetric")
    left_out = dense_crf(image, probs, method="naive", normalization="symmetric", exclude_self=True)
    difference = (kept - left_out).abs().max().item()
    assert 1e-4 < difference < 0.2


@pytest.mark.parametrize("num_classes", [1, 2, 21])
def test_batched_and_label_counts(num_classes):
    image, mask = two_region_scene(20, 24)
    probs = simulate_unaries(mask.clamp(max=num_classes - 1).numpy(), num_classes, stride=4)
    batch = dense_crf(torch.stack([image, image.flip(1)]), torch.stack([probs, probs.flip(2)]))
    assert batch.shape == (2, num_classes, 20, 24)
    assert torch.allclose(batch[0], dense_crf(image.numpy(), probs), atol=1e-6)
    assert torch.allclose(batch[0].sum(0), torch.ones(20, 24), atol=1e-5)


def test_the_loop_never_moves_data_to_the_cpu():
    # on the meta device any .item(), bool() or .cpu() of data raises: the loop must not need any
    unary = torch.empty(100, 5, device="meta")

    def message(q):
        return 4.0 * q.flip(0) + 3.0 * q

    q, history, energies = iterate(unary, message, 3, track=True)
    assert q.device.type == "meta" and len(history) == 4 and len(energies) == 4
    q, _, _ = iterate(unary, message, 3)  # the path that writes each Q into the last one's memory
    assert q.device.type == "meta"


@pytest.mark.gpu
def test_same_code_on_cuda(cuda_device):
    image, mask = two_region_scene(40, 48)
    probs = simulate_unaries(mask.numpy(), num_classes=3, stride=4)
    on_cpu = dense_crf(image, probs)
    on_gpu = dense_crf(image.to(cuda_device), probs.to(cuda_device))
    assert on_gpu.device.type == "cuda"
    assert torch.allclose(on_gpu.cpu(), on_cpu, atol=1e-4)
    exact = dense_crf(image.to(cuda_device), probs.to(cuda_device), method="naive")
    assert (exact.argmax(0) == on_gpu.argmax(0)).float().mean() > 0.99
    # the real loop (lattices, sparse products, softmax) never synchronises with the host
    features = [
        appearance_features(image.to(cuda_device), 121.0, 5.0),
        smoothness_features(40, 48, 3.0, cuda_device),
    ]
    message = PairwiseMessage([PermutohedralLattice(f) for f in features], (4, 3), "symmetric")
    unary = -torch.log(probs.to(cuda_device).clamp(1e-5)).reshape(3, -1).T.contiguous()
    torch.cuda.set_sync_debug_mode("error")
    try:
        iterate(unary, message, 10, track=True)
    finally:
        torch.cuda.set_sync_debug_mode(0)


# -- bad input --------------------------------------------------------------------------------


def test_bad_inputs_say_what_was_expected():
    image, mask = two_region_scene(20, 24)
    probs = simulate_unaries(mask.numpy(), num_classes=2, stride=4)
    with pytest.raises(ValueError, match="negative"):
        dense_crf(image, probs - 0.6)
    with pytest.raises(ValueError, match="NaN"):
        dense_crf(image, torch.full_like(probs, float("nan")))
    with pytest.raises(ValueError, match="sum to 1"):
        dense_crf(image, probs * 2)
    with pytest.raises(ValueError, match="swapped"):
        dense_crf(image.transpose(0, 1), probs)
    with pytest.raises(ValueError, match="same height and width"):
        dense_crf(image[:10], probs)
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        dense_crf(image.permute(2, 0, 1), probs)
    with pytest.raises(TypeError, match="uint8"):
        dense_crf(image.float(), probs)
    with pytest.raises(TypeError, match="uint8"):
        dense_crf(image.numpy().astype(np.float64), probs)
    with pytest.raises(ValueError, match="zero labels"):
        dense_crf(image, probs[:0])
    with pytest.raises(ValueError, match="zero-size"):
        dense_crf(image[:0], probs[:, :0])
    with pytest.raises(ValueError, match="method"):
        dense_crf(image, probs, method="fast")
    with pytest.raises(ValueError, match="normalization"):
        dense_crf(image, probs, normalization="before")
    with pytest.raises(ValueError, match="theta_beta"):
        dense_crf(image, probs, theta_beta=0)
    with pytest.raises(ValueError, match="160x160"):
        big = torch.zeros(200, 200, 3, dtype=torch.uint8)
        dense_crf(big, torch.ones(1, 200, 200), method="naive")


def test_simulate_unaries_is_a_documented_deterministic_distribution():
    mask = np.zeros((50, 60), dtype=np.uint8)
    mask[10:40, 20:50] = 7
    mask[9, :] = 255  # void
    probs = simulate_unaries(mask, seed=3)
    assert probs.shape == (21, 50, 60) and probs.dtype == torch.float32
    assert torch.allclose(probs.sum(0), torch.ones(50, 60), atol=1e-5)
    assert torch.equal(probs, simulate_unaries(mask, seed=3))
    accuracy = (probs.argmax(0).numpy() == mask)[mask != 255].mean()
    assert 0.7 < accuracy < 1.0  # coarse and noisy, but mostly right
    with pytest.raises(ValueError, match="labels"):
        simulate_unaries(np.full((8, 8), 30))


@pytest.mark.parametrize("stride", [4, 8, 16, 32])
def test_simulated_cells_stay_on_their_own_pixels(stride):
    # straight edges on cell boundaries, in an image whose sides are not multiples of the stride
    # (the last cells are partial): with pure cells and no noise, the argmax recovers the mask
    # exactly. Stretching the cells over the image instead (interpolating to its size) moves the
    # far edges by up to half a cell. (Corners are rounded by any bilinear upsampling: none here.)
    height, width = 5 * stride + 3, 7 * stride + 1
    columns = np.zeros((height, width), dtype=np.uint8)
    columns[:, 5 * stride :] = 3  # a vertical edge near the partial last column
    rows = np.zeros((height, width), dtype=np.uint8)
    rows[4 * stride :, :] = 5  # a horizontal edge near the partial last row
    for mask in (columns, rows):
        probs = simulate_unaries(mask, stride=stride, blur_sigma=0.0, noise=0.0, confidence=1.0)
        assert probs.shape == (21, height, width)
        np.testing.assert_array_equal(probs.argmax(0).numpy(), mask)


# -- the reference ------------------------------------------------------------------------------

# two photos with VOC's void band (train) and two SBD ones, with pydensecrf's default
# normalisation, and one with the NIPS 2011 code's ("after"); 10 iterations, paper parameters
REFERENCE_CASES = [
    ("2007_000032", "symmetric"),
    ("2008_002176", "symmetric"),
    ("2008_007586", "symmetric"),
    ("2008_008246", "symmetric"),
    ("2008_002176", "after"),
]


@pytest.mark.parametrize(("image_id", "normalization"), REFERENCE_CASES)
def test_agrees_with_pydensecrf_on_real_photos(voc_sample, pydensecrf, image_id, normalization):
    image = np.array(Image.open(voc_sample / "JPEGImages" / f"{image_id}.jpg").convert("RGB"))
    mask = read_mask(voc_sample / "SegmentationClass" / f"{image_id}.png")
    probs = simulate_unaries(mask, seed=0)
    ours = dense_crf(image, probs, normalization=normalization)
    reference = dense_crf(image, probs, normalization=normalization, method="pydensecrf")
    agreement = (ours.argmax(0) == reference.argmax(0)).double().mean().item()
    # measured: 100% of pixels, max |dQ| < 5e-5 (same lattice conventions; float round-off)
    assert agreement >= 0.995, agreement
    assert (ours - reference).abs().max() < 1e-2
    # and the CRF helps: it recovers outlines blurred by the stride-8 simulation
    valid = mask != 255
    before = (probs.argmax(0).numpy() == mask)[valid].mean()
    after = (ours.argmax(0).numpy() == mask)[valid].mean()
    assert after > before


@pytest.mark.parametrize("normalization", ["symmetric", "after"])
def test_agrees_with_pydensecrf_on_generated_images(pydensecrf, tmp_path, normalization):
    # the same comparison on the generated teaching set, so that it runs without the VOC sample
    root = make_toy_voc(tmp_path / "toy", n_train=3, n_val=1, size=96, seed=3)
    for image, mask in VOCSegmentation(root, "train"):
        rgb, probs = to_hwc(image), simulate_unaries(mask, seed=1)
        ours = dense_crf(rgb, probs, normalization=normalization)
        reference = dense_crf(rgb, probs, normalization=normalization, method="pydensecrf")
        agreement = (ours.argmax(0) == reference.argmax(0)).double().mean().item()
        assert agreement >= 0.995, agreement
        assert (ours - reference).abs().max() < 1e-2


def test_reference_adapter_refuses_what_it_cannot_compare(pydensecrf):
    image, mask = two_region_scene(16, 16)
    probs = simulate_unaries(mask.numpy(), num_classes=2, stride=4)
    with pytest.raises(ValueError, match="NO_NORMALIZATION"):
        dense_crf(image, probs, method="pydensecrf", normalization="none")
    with pytest.raises(ValueError, match="exclude_self"):
        dense_crf(image, probs, method="pydensecrf", exclude_self=True)


def test_grid_message_is_the_adjacency_matrix_times_q():
    from deeplab_edu.crf.grid import grid_energy, grid_message
    from deeplab_edu.crf.meanfield import iterate

    height, width, n = 5, 7, 35
    adjacency = torch.zeros(n, n)
    for i in range(height):
        for j in range(width):
            for di, dj in ((0, 1), (1, 0), (0, -1), (-1, 0)):
                if 0 <= i + di < height and 0 <= j + dj < width:
                    adjacency[i * width + j, (i + di) * width + j + dj] = 1.0
    q = torch.softmax(torch.randn(n, 4), 1)
    torch.testing.assert_close(grid_message(height, width, 0.7)(q), 0.7 * adjacency @ q)
    unary = -torch.log_softmax(torch.randn(n, 4), 1)
    unchanged, _, _ = iterate(unary, grid_message(height, width, 0.0), iterations=5)
    torch.testing.assert_close(unchanged, torch.softmax(-unary, 1))
    # E = unaries of the chosen labels + w per disagreeing neighbour pair (2 cuts here)
    labels = torch.zeros(2, 2, dtype=torch.long)
    labels[0, 0] = 1
    costs = torch.arange(8.0).reshape(4, 2)  # theta_i(l) = 2 i + l
    assert grid_energy(labels, costs, 1.5) == (1 + 2 + 4 + 6) + 1.5 * 2
    for bad in (-1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="weight must be finite and >= 0"):
            grid_message(3, 3, bad)
