"""pydensecrf's interface on our lattice: every public function against pydensecrf itself (on
generated and real images, every normalisation, compat as a number, a vector and a matrix,
arbitrary features, step-wise inference, klDivergence), pydensecrf's own test scenarios in our
words, and the clear errors where pydensecrf accepts ill-defined input."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import deeplab_edu.crf.compat as dcrf
from deeplab_edu.crf import simulate_unaries
from deeplab_edu.data.voc import read_mask

RNG = np.random.default_rng(0)
HEIGHT, WIDTH, LABELS = 30, 40, 3
IMAGE = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
IMAGE[8:22, 10:30] = (200, 60, 40)
IMAGE += RNG.integers(0, 40, IMAGE.shape, dtype=np.uint8)
PROBS = RNG.dirichlet(np.ones(LABELS), size=HEIGHT * WIDTH).T.astype(np.float32)  # (M, N)
UNARY = np.ascontiguousarray(-np.log(PROBS))
COMPATS = {
    "potts": 3.0,
    "vector": np.array([1.0, 2.0, 3.0], np.float32),
    "matrix": np.array([[0, 1, 2], [1, 0, 1], [3, 1, 0]], np.float32),
}


def _both(module, compat, normalization, iterations: int = 5):  # noqa: ANN001
    crf = module.DenseCRF2D(WIDTH, HEIGHT, LABELS)
    crf.setUnaryEnergy(UNARY)
    crf.addPairwiseGaussian(sxy=3, compat=compat, normalization=normalization)
    crf.addPairwiseBilateral(
        sxy=20, srgb=13, rgbim=IMAGE, compat=compat, normalization=normalization
    )
    return crf, np.array(crf.inference(iterations))


def _agree(ours: np.ndarray, reference: np.ndarray, atol: float = 1e-3) -> None:
    assert ours.shape == reference.shape and ours.dtype == np.float32
    agreement = (ours.argmax(0) == reference.argmax(0)).mean()
    assert agreement >= 0.995, agreement
    np.testing.assert_allclose(ours, reference, atol=atol)


@pytest.mark.parametrize("normalization", list(dcrf.NormalizationType))
@pytest.mark.parametrize("compat", list(COMPATS))
def test_every_normalisation_and_compatibility_agrees(pydensecrf, normalization, compat):
    reference_crf, reference = _both(pydensecrf, COMPATS[compat], int(normalization))
    crf, ours = _both(dcrf, COMPATS[compat], normalization)
    _agree(ours, reference)
    assert (ours.argmax(0) != PROBS.argmax(0)).mean() > 0.05  # the CRF changed the labels
    q, _, _ = crf.startInference()
    reference_q, _, _ = reference_crf.startInference()
    kl, reference_kl = crf.klDivergence(q), reference_crf.klDivergence(reference_q)
    assert kl == pytest.approx(reference_kl, rel=1e-4)


def test_the_kernel_type_changes_nothing(pydensecrf):
    results = []
    for kernel in dcrf.KernelType:
        crf = dcrf.DenseCRF2D(WIDTH, HEIGHT, LABELS)
        crf.setUnaryEnergy(UNARY)
        crf.addPairwiseBilateral(20, 13, IMAGE, 5.0, kernel=kernel)
        results.append(crf.inference(3))
    assert all(np.array_equal(results[0], r) for r in results[1:])
    assert [int(k) for k in dcrf.KernelType] == [
        pydensecrf.CONST_KERNEL,
        pydensecrf.DIAG_KERNEL,
        pydensecrf.FULL_KERNEL,
    ]
    assert [int(n) for n in dcrf.NormalizationType] == [
        pydensecrf.NO_NORMALIZATION,
        pydensecrf.NORMALIZE_BEFORE,
        pydensecrf.NORMALIZE_AFTER,
        pydensecrf.NORMALIZE_SYMMETRIC,
    ]


def test_step_wise_inference_and_its_divergence(pydensecrf):
    divergences = {}
    for name, module in (("ours", dcrf), ("reference", pydensecrf)):
        crf, _ = _both(module, 10.0, module.NORMALIZE_SYMMETRIC)
        q, tmp1, tmp2 = crf.startInference()
        values = []
        for _ in range(4):
            crf.stepInference(q, tmp1, tmp2)
            values.append(crf.klDivergence(q))
        np.testing.assert_array_equal(np.array(q), np.array(crf.inference(4)))
        divergences[name] = values
    np.testing.assert_allclose(divergences["ours"], divergences["reference"], rtol=1e-4)


def test_arbitrary_features_and_the_utils_agree(pydensecrf):
    import pydensecrf.utils as reference_utils

    labels = RNG.integers(0, LABELS + 1, (HEIGHT, WIDTH))
    for zero_unsure in (True, False):
        top = LABELS if zero_unsure else LABELS - 1
        clipped = labels.clip(0, top)
        np.testing.assert_allclose(
            dcrf.unary_from_labels(clipped, LABELS, 0.7, zero_unsure),
            reference_utils.unary_from_labels(clipped, LABELS, 0.7, zero_unsure),
            rtol=1e-6,
        )
    for scale, clip in ((None, 1e-5), (0.8, 1e-5), (None, None)):
        np.testing.assert_allclose(
            dcrf.unary_from_softmax(PROBS, scale, clip),
            reference_utils.unary_from_softmax(PROBS, scale, clip),
            rtol=1e-6,
        )
    four = RNG.integers(0, 256, (HEIGHT, WIDTH, 4), dtype=np.uint8)  # 4 channels: not RGB
    for ours, theirs in (
        (
            dcrf.create_pairwise_gaussian((2, 3), (HEIGHT, WIDTH)),
            reference_utils.create_pairwise_gaussian((2, 3), (HEIGHT, WIDTH)),
        ),
        (
            dcrf.create_pairwise_bilateral((10, 10), 5, four, chdim=2),
            reference_utils.create_pairwise_bilateral((10, 10), 5, four, chdim=2),
        ),
        (
            dcrf.create_pairwise_bilateral((4, 4), (3.0,), four[..., 0], chdim=-1),
            reference_utils.create_pairwise_bilateral((4, 4), (3.0,), four[..., 0], chdim=-1),
        ),
    ):
        np.testing.assert_allclose(ours, theirs, rtol=1e-6)
    features = dcrf.create_pairwise_bilateral((10, 10), 5, four, chdim=2)  # (6, N)
    results = []
    for module in (dcrf, pydensecrf):
        crf = module.DenseCRF(HEIGHT * WIDTH, LABELS)
        crf.setUnaryEnergy(UNARY)
        crf.addPairwiseEnergy(features, compat=COMPATS["matrix"])
        results.append(np.array(crf.inference(5)))
    _agree(*results)


def test_pydensecrfs_own_scenarios():
    # a 10x10 two-label problem: label 0 on a frame of ones, label 1 in the 3x3 centre, each
    # map (u + 1) / (column sum + 2); a bright square in the image. DenseCRF with the
    # bilateral features from the utils equals DenseCRF2D's own bilateral kernel.
    frame = np.zeros((10, 10), np.float32)
    frame[[0, -1], :] = frame[:, [0, -1]] = 1
    centre = np.zeros((10, 10), np.float32)
    centre[4:7, 4:7] = 1
    maps = np.stack([frame.ravel(), centre.ravel()])
    probs = (maps + 1) / (maps.sum(0) + 2)
    image = np.zeros((10, 10, 3), np.uint8)
    image[2:8, 2:8] = 255
    unary = np.ascontiguousarray(-np.log(probs), np.float32)
    crf2d = dcrf.DenseCRF2D(10, 10, 2)
    crf2d.setUnaryEnergy(unary)
    crf2d.addPairwiseBilateral(sxy=2, srgb=2, rgbim=image, compat=3)
    crf = dcrf.DenseCRF(100, 2)
    crf.setUnaryEnergy(unary)
    features = dcrf.create_pairwise_bilateral(sdims=(2, 2), schan=2, img=image, chdim=2)
    crf.addPairwiseEnergy(features, compat=3)
    labels2d = np.argmax(crf2d.inference(10), axis=0).reshape(10, 10)
    labels = np.argmax(crf.inference(10), axis=0).reshape(10, 10)
    np.testing.assert_array_equal(labels2d, labels)
    # compute_unary (deprecated): label 0 unsure (1/3 each), label k -> row k-1 at 0.8
    with pytest.warns(DeprecationWarning):
        unary = dcrf.compute_unary(np.array([[0, 1, 2, 3], [3, 2, 1, 0]]), 3, GT_PROB=0.8)
    expected = np.full((3, 8), 0.1)
    expected[:, [0, 7]] = 1 / 3
    for column, label in enumerate([1, 2, 3, 3, 2, 1], start=1):
        expected[label - 1, column] = 0.8
    np.testing.assert_allclose(unary, -np.log(expected), rtol=1e-6)


def test_a_real_photo_agrees(pydensecrf, voc_sample):
    photo = Image.open(voc_sample / "JPEGImages" / "2007_000032.jpg").convert("RGB")
    image = np.ascontiguousarray(np.array(photo)[:200, :250])  # the aeroplanes (time)
    mask = read_mask(voc_sample / "SegmentationClass" / "2007_000032.png")[:200, :250]
    probs = simulate_unaries(mask, seed=0).numpy()  # (C, H, W)
    unary = dcrf.unary_from_softmax(probs)
    height, width = mask.shape
    results = []
    for module in (dcrf, pydensecrf):
        crf = module.DenseCRF2D(width, height, probs.shape[0])
        crf.setUnaryEnergy(unary)
        crf.addPairwiseGaussian(sxy=3, compat=3)
        crf.addPairwiseBilateral(sxy=80, srgb=13, rgbim=image, compat=10)
        results.append(np.array(crf.inference(5)))
    _agree(*results, atol=1e-2)
    batch = dcrf.batch_inference(image[None], unary[None], 5)  # the same two kernels
    np.testing.assert_array_equal(batch[0], results[0])


def test_ill_defined_input_is_refused_clearly():
    crf = dcrf.DenseCRF2D(WIDTH, HEIGHT, LABELS)
    cases = [
        (lambda: crf.setUnaryEnergy(UNARY.astype(np.float64)), "float32 NumPy array"),
        (lambda: crf.setUnaryEnergy(UNARY[:, :10]), r"Bad shape for unary energy"),
        (lambda: crf.setUnaryEnergy(np.full_like(UNARY, np.nan)), "NaN or infinite"),
        (lambda: crf.addPairwiseGaussian(3, np.ones(2, np.float32)), "3 entries per dimension"),
        (lambda: crf.addPairwiseGaussian(3, np.ones((3, 3, 3), np.float32)), "a number"),
        (lambda: crf.addPairwiseGaussian(3, np.ones(3)), "float32 NumPy array"),  # float64
        (lambda: crf.addPairwiseGaussian(3, [1.0, 2.0, 3.0]), "a number"),
        (lambda: crf.addPairwiseGaussian(3, 3, kernel=7), "kernel must be one of"),
        (lambda: crf.addPairwiseGaussian(3, 3, normalization=-1), "normalization must be"),
        (lambda: crf.addPairwiseEnergy(np.zeros((0, WIDTH * HEIGHT), np.float32), 3), "D >= 1"),
        (lambda: crf.addPairwiseBilateral(3, 3, IMAGE[..., :2].copy(), 3), "pairwise bilateral"),
        (lambda: crf.addPairwiseBilateral(3, (3, 3), IMAGE, 3), "srgb must be"),
        (lambda: dcrf.DenseCRF(10, 1), "n_labels must be an int >= 2"),
        (lambda: dcrf.unary_from_labels(np.zeros(4, int), 1, 0.5), "n_labels must be"),
        (lambda: dcrf.unary_from_labels(np.zeros(4, int), 3, 1.0), r"gt_prob must be in"),
        (lambda: dcrf.unary_from_softmax(np.log(PROBS)), "take the softmax of logits"),
        (lambda: dcrf.create_pairwise_gaussian((3,), (4, 5)), "one bandwidth per axis"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()
    crf.setUnaryEnergy(np.asfortranarray(UNARY))  # not C-contiguous: a copy is all it needs
    assert crf.inference(0).shape == (LABELS, WIDTH * HEIGHT)


@pytest.mark.gpu
def test_on_cuda(cuda_device):
    results = {}
    for device in ("cpu", cuda_device):
        crf = dcrf.DenseCRF2D(WIDTH, HEIGHT, LABELS, device=device)
        crf.setUnaryEnergy(UNARY)
        crf.addPairwiseBilateral(20, 13, IMAGE, 5.0)
        results[str(device)] = crf.inference(5)
    np.testing.assert_allclose(results["cpu"], results[str(cuda_device)], atol=1e-4)
