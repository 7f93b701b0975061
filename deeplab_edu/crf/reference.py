"""Adapter to pydensecrf (``pip install pydensecrf2``), Kraehenbuehl's C++ implementation.

Optional: the package and the book work without it; comparisons then say they were skipped.
"""

from __future__ import annotations

import importlib.util

import numpy as np

from deeplab_edu.crf.kernels import CRFParams


def reference_available() -> bool:
    """Whether pydensecrf can be imported."""
    return importlib.util.find_spec("pydensecrf") is not None


def reference_dense_crf(image: np.ndarray, probs: np.ndarray, params: CRFParams) -> np.ndarray:
    """Run pydensecrf with the same parameters as :func:`deeplab_edu.crf.dense_crf`.

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        probs: ``(C, H, W)`` probabilities.
        params: the kernel weights and bandwidths, iterations and normalisation (``"after"`` or
            ``"symmetric"``).

    Returns:
        ``(C, H, W)`` float32 Q.

    Raises:
        ImportError: if pydensecrf is not installed.
        ValueError: for ``normalization="none"``: pydensecrf's ``NO_NORMALIZATION`` is the
            lattice's raw sum, whose mass differs from the exact kernel's, while our ``"none"``
            divides the lattice by that gain so that both methods approximate the same sum
            (:mod:`deeplab_edu.crf.compat` offers pydensecrf's raw sum).
    """
    if not reference_available():
        raise ImportError("method='pydensecrf' needs pydensecrf: pip install pydensecrf2")
    import pydensecrf.densecrf as dcrf  # here: the reference is optional (see the docstring)

    kinds = {"symmetric": dcrf.NORMALIZE_SYMMETRIC, "after": dcrf.NORMALIZE_AFTER}
    normalization = params.normalization
    if normalization not in kinds:
        raise ValueError(
            f"pydensecrf comparison supports normalization in {tuple(kinds)}, got "
            f"{normalization!r} (its NO_NORMALIZATION is the lattice's raw sum, not the exact "
            "kernel's)"
        )
    c, h, w = probs.shape
    crf = dcrf.DenseCRF2D(w, h, c)  # note the (width, height) order
    # unary: $-\log P$ with P clipped to [1e-5, 1] (pydensecrf.utils.unary_from_softmax)
    unary = -np.log(np.clip(probs, 1e-5, 1.0)).reshape(c, -1).astype(np.float32)
    crf.setUnaryEnergy(np.ascontiguousarray(unary))
    crf.addPairwiseGaussian(
        sxy=params.theta_gamma,
        compat=params.w2,
        kernel=dcrf.DIAG_KERNEL,
        normalization=kinds[normalization],
    )
    crf.addPairwiseBilateral(
        sxy=params.theta_alpha,
        srgb=params.theta_beta,
        rgbim=np.ascontiguousarray(image, dtype=np.uint8),
        compat=params.w1,
        kernel=dcrf.DIAG_KERNEL,
        normalization=kinds[normalization],
    )
    q = np.asarray(crf.inference(params.iterations), dtype=np.float32)  # (C, H*W)
    return q.reshape(c, h, w)
