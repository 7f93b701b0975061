"""pydensecrf's interface on this book's permutohedral lattice: switch with one import.

    import deeplab_edu.crf.compat as dcrf     # instead of: import pydensecrf.densecrf as dcrf
    from deeplab_edu.crf import compat as utils  # instead of: from pydensecrf import utils

``DenseCRF(n_pixels, n_labels)`` and ``DenseCRF2D(width, height, n_labels)`` take pydensecrf's
arguments in its conventions (float32 C-contiguous arrays, unaries and marginals as
``(n_labels, n_pixels)``, pixel ``y * width + x``, features ``(D, n_pixels)``, ``compat`` a
number, a vector or a matrix) and give its results (the same mean field on the same kind of
lattice: at least 99.5% of labels agree in the tests). Beyond pydensecrf: pure PyTorch (no
compiler), any device (``device=``), and :func:`batch_inference` for a batch of images.

The model, as pydensecrf's C++ code computes it (Kraehenbuehl & Koltun 2011): each pairwise term
filters the marginals with a Gaussian kernel on its features, normalised as asked
(``NORMALIZE_SYMMETRIC``: $D^{-1/2} K D^{-1/2}$, ``NORMALIZE_AFTER``: $D^{-1} K$,
``NORMALIZE_BEFORE``: $K D^{-1}$, ``NO_NORMALIZATION``: $K$, with
$D = \\mathrm{diag}(K\\mathbf 1)$); the logits of an update are $-U$ plus, for a number $w$
(Potts), $+w\\,\\tilde K Q$, and for a vector $v$ or a matrix $C$,
$-\\mathrm{diag}(v)\\,\\tilde K Q$ or $-\\tfrac12(C + C^\\top)\\,\\tilde K Q$
(pydensecrf's signs: a number is a reward for agreeing labels, a vector or matrix a cost). The
kernel type (``CONST_KERNEL``, ``DIAG_KERNEL``, ``FULL_KERNEL``) only matters for learning
kernel parameters, which pydensecrf's Python interface does not offer: it is accepted and
checked, and changes nothing.

Where pydensecrf accepts ill-defined input, this module refuses it with a message saying what
was expected: fewer than 2 labels, a ``compat`` vector or matrix of the wrong size (pydensecrf
reads past it), non-finite unaries or features (pydensecrf returns NaN), pairwise features
with no rows (pydensecrf crashes the interpreter), kernel or normalisation values outside the
constants (pydensecrf accepts any integer). Unaries, features and images must be float32
(uint8 for images) as in pydensecrf; non-contiguous arrays are accepted (pydensecrf refuses
them), since a copy is all they need. ``inference`` returns a NumPy array (pydensecrf: an
Eigen matrix exposing the same (n_labels, n_pixels) buffer).
"""

from __future__ import annotations

import enum
import numbers
import warnings
from collections.abc import Sequence

import numpy as np
import torch

from deeplab_edu.crf.permutohedral import LatticeSum, PermutohedralLattice


class KernelType(enum.IntEnum):
    """pydensecrf's kernel types (they shape learning, not inference)."""

    CONST_KERNEL = 0
    DIAG_KERNEL = 1
    FULL_KERNEL = 2


class NormalizationType(enum.IntEnum):
    """pydensecrf's kernel normalisations (module docstring)."""

    NO_NORMALIZATION = 0
    NORMALIZE_BEFORE = 1
    NORMALIZE_AFTER = 2
    NORMALIZE_SYMMETRIC = 3


CONST_KERNEL, DIAG_KERNEL, FULL_KERNEL = KernelType
NO_NORMALIZATION, NORMALIZE_BEFORE, NORMALIZE_AFTER, NORMALIZE_SYMMETRIC = NormalizationType


def _float32(name: str, array: object, ndim: int) -> np.ndarray:
    """``array`` as a float32 NumPy array of ``ndim`` dimensions with finite values."""
    if not isinstance(array, np.ndarray) or array.dtype != np.float32:
        got = array.dtype if isinstance(array, np.ndarray) else type(array).__name__
        raise ValueError(f"{name} must be a float32 NumPy array (as in pydensecrf), got {got}")
    if array.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} holds NaN or infinite values (pydensecrf returns NaN then)")
    return array


class _Term:
    """One pairwise term: its lattice, its normalisation as scales before and after filtering
    (``inner``, ``outer``: $\\tilde K = \\mathrm{diag}(b) K \\mathrm{diag}(a)$) and its label
    compatibility (``potts``, a number, or ``matrix``, S)."""

    def __init__(
        self,
        features: torch.Tensor,
        compat: object,
        kernel: int,
        normalization: int,
        n_labels: int,
    ) -> None:
        if kernel not in set(KernelType):
            raise ValueError(f"kernel must be one of {[k.name for k in KernelType]}, got {kernel}")
        if normalization not in set(NormalizationType):
            raise ValueError(
                f"normalization must be one of {[n.name for n in NormalizationType]}, "
                f"got {normalization}"
            )
        self.potts, self.matrix = _compatibility(compat, n_labels, features.device)
        self.lattice = PermutohedralLattice(features)  # (N, D) features
        ones = torch.ones(features.shape[0], device=features.device)
        # $D = K \\mathbf 1$, through the fast sparse path
        degree = LatticeSum([self.lattice], [ones], [ones])(ones[:, None])[:, 0] + 1e-20
        self.inner, self.outer = ones, ones
        if normalization == NORMALIZE_SYMMETRIC:
            self.inner = self.outer = torch.rsqrt(degree)
        elif normalization == NORMALIZE_AFTER:
            self.outer = 1.0 / degree
        elif normalization == NORMALIZE_BEFORE:
            self.inner = 1.0 / degree


class _Messages:
    """What the pairwise terms add to the logits, $\\sum_k m_k(Q)$: the Potts terms as one
    fused sum (:class:`~deeplab_edu.crf.permutohedral.LatticeSum`, weights folded in), each
    vector or matrix term as its own filtering followed by $-S$."""

    def __init__(self, terms: list[_Term]) -> None:
        potts = [(t, t.potts) for t in terms if t.potts is not None]
        self.potts = None
        if potts:  # $+\\sum_k w_k \\tilde K_k Q$
            self.potts = LatticeSum(
                [t.lattice for t, _ in potts],
                [t.inner for t, _ in potts],
                [w * t.outer for t, w in potts],
            )
        self.others = [
            (LatticeSum([t.lattice], [t.inner], [t.outer]), t.matrix)
            for t in terms
            if t.matrix is not None
        ]

    def __call__(self, q: torch.Tensor) -> torch.Tensor:
        """``(N, M)`` marginals -> ``(N, M)``."""
        total = torch.zeros_like(q) if self.potts is None else self.potts(q)
        for fused, matrix in self.others:
            total -= fused(q) @ matrix  # $-S \\tilde K Q$, S symmetric
        return total


def _compatibility(
    compat: object, n_labels: int, device: torch.device
) -> tuple[float | None, torch.Tensor | None]:
    """``(w, None)`` for a number, ``(None, S)`` for a vector (S diagonal) or a matrix
    (S = (C + C^T) / 2, as pydensecrf symmetrises it)."""
    if isinstance(compat, numbers.Real) and not isinstance(compat, bool):
        if not np.isfinite(float(compat)):
            raise ValueError(f"compat must be finite, got {compat}")
        return float(compat), None
    array = np.asarray(compat) if isinstance(compat, np.ndarray) else None
    if array is None or array.ndim not in (1, 2):
        got = f"shape {array.shape}" if array is not None else type(compat).__name__
        raise ValueError(
            f"compat must be a number (Potts), a float32 vector of {n_labels} (one per label) "
            f"or a {n_labels}x{n_labels} float32 matrix, got {got}"
        )
    _float32("compat", array, array.ndim)
    if array.shape != (n_labels,) * array.ndim:
        raise ValueError(
            f"compat must have {n_labels} entries per dimension (one per label), got shape "
            f"{array.shape} (pydensecrf does not check this and reads past the array)"
        )
    matrix = torch.as_tensor(array, device=device)
    matrix = torch.diag(matrix) if array.ndim == 1 else (matrix + matrix.T) / 2
    return None, matrix


class DenseCRF:
    """pydensecrf's ``DenseCRF``: ``n_pixels`` variables with ``n_labels`` labels each.

    Args:
        n_pixels: the number of variables N.
        n_labels: the number of labels M (at least 2).
        device: where to compute (default: the CPU; "cuda" works, pydensecrf has no GPU).
    """

    def __init__(self, n_pixels: int, n_labels: int, *, device: str | torch.device = "cpu") -> None:
        for name, value, low in (("n_pixels", n_pixels, 1), ("n_labels", n_labels, 2)):
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        self.n_pixels, self.n_labels = int(n_pixels), int(n_labels)
        self.device = torch.device(device)
        self.unary = torch.zeros(self.n_pixels, self.n_labels, device=self.device)  # (N, M)
        self.terms: list[_Term] = []
        self._messages: _Messages | None = None  # built at the first inference after a change

    def setUnaryEnergy(self, unary: np.ndarray) -> None:  # noqa: N802 (pydensecrf's name)
        """The unary energies $U$ (negative log-probabilities), ``(n_labels, n_pixels)`` float32
        (copied: later changes to the array do not matter)."""
        unary = _float32("unary", unary, 2)
        if unary.shape != (self.n_labels, self.n_pixels):
            raise ValueError(
                f"Bad shape for unary energy (Need {(self.n_labels, self.n_pixels)}, got "
                f"{unary.shape})"
            )
        self.unary = torch.tensor(unary.T, device=self.device)  # (N, M), a copy

    def addPairwiseEnergy(  # noqa: N802 (pydensecrf's name)
        self,
        features: np.ndarray,
        compat: object,
        kernel: int = DIAG_KERNEL,
        normalization: int = NORMALIZE_SYMMETRIC,
    ) -> None:
        """A Gaussian kernel $\\exp(-\\frac12\\|f_i - f_j\\|^2)$ on ``features`` ``(D, n_pixels)``
        float32 (already divided by their bandwidths), weighted by ``compat``."""
        features = _float32("features", features, 2)
        if features.shape[0] == 0 or features.shape[1] != self.n_pixels:
            raise ValueError(
                f"Bad shape for pairwise energy (Need (D >= 1, {self.n_pixels}), got "
                f"{features.shape})"
            )
        points = torch.tensor(features.T, device=self.device)  # (N, D)
        self.terms.append(_Term(points, compat, kernel, normalization, self.n_labels))
        self._messages = None

    def _message(self, q: torch.Tensor) -> torch.Tensor:
        """$\\sum_k m_k(Q)$, ``(N, M)``: what the pairwise terms add to the logits."""
        if self._messages is None:
            self._messages = _Messages(self.terms)
        return self._messages(q)

    def _update(self, q: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self._message(q) - self.unary, dim=1)  # (N, M)

    def inference(self, iterations: int) -> np.ndarray:
        """``iterations`` mean-field updates from $Q = \\mathrm{softmax}(-U)$; returns Q,
        ``(n_labels, n_pixels)`` float32."""
        q = torch.softmax(-self.unary, dim=1)  # (N, M)
        for _ in range(int(iterations)):
            q = self._update(q)
        return np.ascontiguousarray(q.T.cpu().numpy())

    def startInference(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # noqa: N802
        """``(Q, tmp1, tmp2)``: Q = softmax(-U) ``(n_labels, n_pixels)`` and two empty arrays
        (pydensecrf's scratch matrices), for :meth:`stepInference`."""
        empty = np.zeros((0, 0), np.float32)
        return self.inference(0), empty, empty.copy()

    def stepInference(self, q: np.ndarray, tmp1: np.ndarray, tmp2: np.ndarray) -> None:  # noqa: N802
        """One mean-field update of ``Q`` in place (``tmp1`` and ``tmp2`` are unused)."""
        marginals = self._marginals(q)
        q[...] = self._update(marginals).T.cpu().numpy()

    def klDivergence(self, q: np.ndarray) -> float:  # noqa: N802 (pydensecrf's name)
        """pydensecrf's ``klDivergence``: $\\sum Q \\log Q + \\sum U Q - \\sum_k \\sum Q\\,
        m_k(Q)$ (no constant, pairwise terms counted once each way: usually negative)."""
        marginals = self._marginals(q)
        value = (marginals * torch.log(marginals.clamp_min(1e-20))).sum()
        value = value + (self.unary * marginals).sum()
        value = value - (marginals * self._message(marginals)).sum()
        return float(value)

    def _marginals(self, q: np.ndarray) -> torch.Tensor:
        q = _float32("Q", q, 2)
        if q.shape != (self.n_labels, self.n_pixels):
            raise ValueError(f"Q must be {(self.n_labels, self.n_pixels)}, got {q.shape}")
        return torch.tensor(q.T, device=self.device)  # (N, M)


class DenseCRF2D(DenseCRF):
    """pydensecrf's ``DenseCRF2D``: the pixels of a ``width`` x ``height`` image (note the
    order), pixel ``y * width + x``, with its two kernels built from pixel coordinates."""

    def __init__(
        self, width: int, height: int, n_labels: int, *, device: str | torch.device = "cpu"
    ) -> None:
        for name, value in (("width", width), ("height", height)):
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        super().__init__(int(width) * int(height), n_labels, device=device)
        self.width, self.height = int(width), int(height)

    def _positions(self, sxy: float | Sequence[float]) -> np.ndarray:
        """``(2, N)`` float32: x / sx (x the column), y / sy."""
        sx, sy = _pair(sxy, 2, "sxy")
        y, x = np.mgrid[0 : self.height, 0 : self.width].astype(np.float32)
        return np.stack([x.ravel() / sx, y.ravel() / sy]).astype(np.float32)

    def addPairwiseGaussian(  # noqa: N802 (pydensecrf's name)
        self,
        sxy: float | Sequence[float],
        compat: object,
        kernel: int = DIAG_KERNEL,
        normalization: int = NORMALIZE_SYMMETRIC,
    ) -> None:
        """The smoothness kernel on pixel positions, bandwidth ``sxy`` (a number or (sx, sy))."""
        self.addPairwiseEnergy(self._positions(sxy), compat, kernel, normalization)

    def addPairwiseBilateral(  # noqa: N802 (pydensecrf's name)
        self,
        sxy: float | Sequence[float],
        srgb: float | Sequence[float],
        rgbim: np.ndarray,
        compat: object,
        kernel: int = DIAG_KERNEL,
        normalization: int = NORMALIZE_SYMMETRIC,
    ) -> None:
        """The appearance kernel on positions / ``sxy`` and colours / ``srgb`` of ``rgbim``,
        an ``(height, width, 3)`` uint8 image."""
        if not isinstance(rgbim, np.ndarray) or rgbim.dtype != np.uint8:
            got = rgbim.dtype if isinstance(rgbim, np.ndarray) else type(rgbim).__name__
            raise ValueError(f"rgbim must be a uint8 NumPy array, got {got}")
        if rgbim.shape != (self.height, self.width, 3):
            raise ValueError(
                f"Bad shape for pairwise bilateral (Need {(self.height, self.width, 3)}, got "
                f"{rgbim.shape}); for other channels than RGB use "
                "create_pairwise_bilateral and addPairwiseEnergy"
            )
        scales = np.asarray(_pair(srgb, 3, "srgb"), np.float32)
        colours = (rgbim.reshape(-1, 3).astype(np.float32) / scales).T  # (3, N)
        features = np.concatenate([self._positions(sxy), colours]).astype(np.float32)
        self.addPairwiseEnergy(features, compat, kernel, normalization)


def _pair(value: float | Sequence[float], n: int, name: str) -> tuple[float, ...]:
    """A bandwidth for each of ``n`` coordinates: a number repeated, or ``n`` numbers."""
    values = (value,) * n if isinstance(value, numbers.Real) else tuple(value)  # type: ignore[arg-type]
    if len(values) != n or not all(isinstance(v, numbers.Real) and float(v) > 0 for v in values):
        raise ValueError(f"{name} must be a positive number or {n} positive numbers, got {value!r}")
    return tuple(float(v) for v in values)


def batch_inference(
    rgbims: np.ndarray,
    unaries: np.ndarray,
    iterations: int,
    *,
    gaussian: tuple[float, float] = (3.0, 3.0),
    bilateral: tuple[float, float, float] = (80.0, 13.0, 10.0),
    normalization: int = NORMALIZE_SYMMETRIC,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """The usual two-kernel CRF on a batch of images, on ``device`` (beyond pydensecrf).

    Args:
        rgbims: ``(B, H, W, 3)`` uint8 images.
        unaries: ``(B, n_labels, H * W)`` float32 unary energies (e.g. :func:`unary_from_softmax`
            of each image's probabilities).
        iterations: mean-field updates.
        gaussian: ``(sxy, compat)`` of the smoothness kernel (pydensecrf's README values).
        bilateral: ``(sxy, srgb, compat)`` of the appearance kernel.
        normalization: one of the normalisation constants.
        device: where to compute, e.g. "cuda".

    Returns:
        ``(B, n_labels, H * W)`` float32 marginals, as :meth:`DenseCRF.inference` gives each.
        Each image has its own lattice; they are built and solved in turn on ``device``.
    """
    if not isinstance(rgbims, np.ndarray) or rgbims.ndim != 4 or rgbims.shape[-1] != 3:
        got = rgbims.shape if isinstance(rgbims, np.ndarray) else type(rgbims).__name__
        raise ValueError(f"rgbims must be a (B, H, W, 3) uint8 array, got {got}")
    batch, height, width, _ = rgbims.shape
    unaries = _float32("unaries", unaries, 3)
    if unaries.shape[0] != batch or unaries.shape[2] != height * width:
        raise ValueError(
            f"unaries must be (B={batch}, n_labels, H*W={height * width}), got {unaries.shape}"
        )
    out = np.empty_like(unaries)
    for index in range(batch):
        crf = DenseCRF2D(width, height, unaries.shape[1], device=device)
        crf.setUnaryEnergy(unaries[index])
        crf.addPairwiseGaussian(gaussian[0], gaussian[1], normalization=normalization)
        crf.addPairwiseBilateral(
            bilateral[0], bilateral[1], rgbims[index], bilateral[2], normalization=normalization
        )
        out[index] = crf.inference(iterations)
    return out


# -- pydensecrf.utils ---------------------------------------------------------------------------


def unary_from_labels(
    labels: np.ndarray, n_labels: int, gt_prob: float, zero_unsure: bool = True
) -> np.ndarray:
    """Unary energies ``(n_labels, N)`` float32 from a label map (any shape, N pixels):
    probability ``gt_prob`` for the given label, the rest shared equally by the others. With
    ``zero_unsure``, label 0 means "unknown" (every label equally likely) and labels 1..n_labels
    stand for 0..n_labels-1, as in pydensecrf.

    Raises:
        ValueError: ``gt_prob`` outside (0, 1), fewer than 2 labels (pydensecrf divides by zero)
            or a label beyond ``n_labels``.
    """
    if not 0 < gt_prob < 1:
        raise ValueError(f"gt_prob must be in (0, 1), got {gt_prob}")
    if not isinstance(n_labels, numbers.Integral) or n_labels < 2:
        raise ValueError(f"n_labels must be an int >= 2, got {n_labels!r}")
    labels = np.asarray(labels).ravel()
    index = labels - 1 if zero_unsure else labels
    top = n_labels if zero_unsure else n_labels - 1
    if labels.size and (labels.min() < 0 or labels.max() > top):
        raise ValueError(f"labels must lie in 0..{top}, found {labels.min()}..{labels.max()}")
    unary = np.full((n_labels, labels.size), -np.log((1 - gt_prob) / (n_labels - 1)), np.float32)
    columns = np.arange(labels.size)
    unary[index, columns] = -np.log(gt_prob)
    if zero_unsure:
        unary[:, labels == 0] = -np.log(1.0 / n_labels)
    return unary


def compute_unary(labels: np.ndarray, M: int, GT_PROB: float = 0.5) -> np.ndarray:  # noqa: N803
    """Deprecated in pydensecrf: :func:`unary_from_labels` with ``zero_unsure=True``."""
    warnings.warn("compute_unary is deprecated: use unary_from_labels", DeprecationWarning, 2)
    return unary_from_labels(labels, M, GT_PROB)


def unary_from_softmax(
    sm: np.ndarray, scale: float | None = None, clip: float | None = 1e-5
) -> np.ndarray:
    """Unary energies $-\\log P$ ``(C, N)`` float32 from probabilities ``(C, ...)``.

    Args:
        sm: probabilities, classes first; they must sum to 1 over the classes (pydensecrf
            takes anything, logits too, and returns nonsense for them).
        scale: if given, in (0, 1]: the probabilities are blended with the uniform one,
            ``scale * P + (1 - scale) / C`` (less certain unaries).
        clip: the smallest probability kept (None: none, and a zero gives an infinite energy).

    Raises:
        ValueError: for probabilities that do not sum to 1 (logits, say) or a bad ``scale``.
    """
    sm = np.asarray(sm)
    if sm.ndim < 2 or not np.allclose(sm.sum(0), 1.0, atol=1e-3) or (sm < 0).any():
        raise ValueError(
            "sm must be probabilities (C, ...) that are >= 0 and sum to 1 over the classes; "
            "take the softmax of logits first"
        )
    if scale is not None:
        if not 0 < scale <= 1:
            raise ValueError(f"scale must be in (0, 1], got {scale}")
        sm = scale * sm + (1 - scale) / sm.shape[0]
    if clip is not None:
        sm = np.clip(sm, clip, 1.0)
    with np.errstate(divide="ignore"):
        return np.ascontiguousarray(-np.log(sm).reshape(sm.shape[0], -1), np.float32)


def softmax_to_unary(sm: np.ndarray, GT_PROB: float = 1) -> np.ndarray:  # noqa: N803
    """Deprecated in pydensecrf: :func:`unary_from_softmax` without clipping."""
    warnings.warn("softmax_to_unary is deprecated: use unary_from_softmax", DeprecationWarning, 2)
    return unary_from_softmax(sm, scale=None if GT_PROB == 1 else GT_PROB, clip=None)


def create_pairwise_gaussian(sdims: Sequence[float], shape: Sequence[int]) -> np.ndarray:
    """Position features ``(len(shape), N)`` float32 of a grid of ``shape``: row ``i`` is the
    coordinate along axis ``i`` divided by ``sdims[i]`` (for an image, y first, then x: the
    opposite order to :meth:`DenseCRF2D.addPairwiseGaussian`, as in pydensecrf).

    Raises:
        ValueError: if ``sdims`` does not give one bandwidth per axis (pydensecrf returns a
            wrongly shaped array then).
    """
    if len(sdims) != len(shape):
        raise ValueError(f"sdims needs one bandwidth per axis of {tuple(shape)}, got {sdims}")
    grids = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape), indexing="ij")
    return np.stack([g.ravel() / s for g, s in zip(grids, sdims, strict=True)]).astype(np.float32)


def create_pairwise_bilateral(
    sdims: Sequence[float], schan: float | Sequence[float], img: np.ndarray, chdim: int = -1
) -> np.ndarray:
    """Position and channel features ``(len(sdims) + C, N)`` float32 of an image with any
    number of channels (``chdim``: the channel axis, -1 for an image of one channel): the
    positions divided by ``sdims`` (as :func:`create_pairwise_gaussian`), then each channel
    divided by ``schan`` (a number or one per channel)."""
    img = np.asarray(img)
    channels = img[np.newaxis] if chdim == -1 else np.moveaxis(img, chdim, 0)
    positions = create_pairwise_gaussian(sdims, channels.shape[1:])
    scales = np.broadcast_to(np.asarray(schan, np.float32), (channels.shape[0],))
    colours = channels.reshape(channels.shape[0], -1).astype(np.float32) / scales[:, None]
    return np.concatenate([positions, colours]).astype(np.float32)
