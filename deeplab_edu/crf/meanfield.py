"""Mean-field inference in the fully connected CRF (Kraehenbuehl & Koltun, NIPS 2011).

With a fully factorised $Q(x) = \\prod_i Q_i(x_i)$, each iteration of the paper's CRF is

1. message passing: $\\tilde Q^{(m)}_i(l) = \\sum_{j} \\tilde k^{(m)}(f_i, f_j)\\, Q_j(l)$ for both
   kernels $m$ (Gaussian filtering; $\\tilde k$ is the normalised kernel, see below);
2. weighting and compatibility transform with Potts $\\mu(l, l') = [l \\ne l']$:
   $\\hat Q_i(l) = \\sum_{l' \\ne l} \\sum_m w_m \\tilde Q^{(m)}_i(l')$;
3. adding unaries and normalising: $Q_i(l) \\propto \\exp(-\\theta_i(l) - \\hat Q_i(l))$.

Because $\\sum_{l'} Q_j(l') = 1$, step 2 equals $\\sum_m w_m \\tilde Q^{(m)}_i(l)$ minus a term that
does not depend on $l$, which the softmax removes; the code uses that simpler form (so does the
reference C++ code, whose Potts compatibility is $-w$ on the diagonal).

Normalisation of the kernel matrix $K$ with $D = \\mathrm{diag}(K\\mathbf 1)$: ``"symmetric"``
$D^{-1/2} K D^{-1/2}$ (pydensecrf's default), ``"after"`` $D^{-1} K$ (the NIPS 2011 code DeepLab
used), ``"none"`` $K$ itself (the paper's equation; the lattice is divided by its mass gain so
that both methods approximate the same sum). The reference code keeps each pixel's own term
$j = i$ in the sum; ``exclude_self=True`` removes it ($k(f_i, f_i) = 1$ before normalisation).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from deeplab_edu.crf.kernels import (
    CRFParams,
    appearance_features,
    smoothness_features,
)
from deeplab_edu.crf.naive import NaiveFilter
from deeplab_edu.crf.permutohedral import LatticeSum, PermutohedralLattice
from deeplab_edu.crf.reference import reference_dense_crf

METHODS = ("permutohedral", "naive", "pydensecrf")
PROB_CLIP = 1e-5  # probabilities are clipped to [1e-5, 1] before -log, as pydensecrf does


@dataclass
class MeanFieldResult:
    """Q and its history for one image.

    Attributes:
        q: ``(C, H, W)`` final marginals.
        history: ``(C, H, W)`` marginals before the first iteration (softmax of the unaries)
            and after each iteration, when tracked.
        objective: the mean-field free energy (see :func:`mean_field`) of each entry of
            ``history``, when tracked.
    """

    q: torch.Tensor
    history: list[torch.Tensor] = field(default_factory=list)
    objective: list[float] = field(default_factory=list)


class PairwiseMessage:
    """The weighted, normalised message $m = \\sum_m w_m \\tilde K_m Q$ of both kernels.

    Each normalised kernel is written $\\tilde K_m = \\mathrm{diag}(b_m)\\, K_m\\,
    \\mathrm{diag}(a_m)$ with $D_m = K_m \\mathbf 1$: ``"symmetric"`` $a = b = D^{-1/2}$,
    ``"after"`` $a = 1, b = D^{-1}$, ``"none"`` $a = 1, b = 1/\\mathrm{gain}$ (the lattice's mass
    relative to the exact kernel, 1 for exact filtering). With lattices, the weights and scales
    are folded into one sparse splat and one sparse slice (:class:`LatticeSum`), and the
    message is written into one buffer reused from call to call (unless autograd needs fresh
    tensors): keep a copy of a message, not the message itself, if the next call is to leave it
    unchanged.

    Args:
        filters: per kernel, a :class:`NaiveFilter` or :class:`PermutohedralLattice`.
        weights: per kernel, $w_m$.
        normalization: one of :data:`NORMALIZATIONS`.
        exclude_self: leave out the $j = i$ terms ($k(f_i, f_i) = 1$ before normalisation).
    """

    def __init__(
        self,
        filters: Sequence[NaiveFilter | PermutohedralLattice],
        weights: Sequence[float],
        normalization: str,
        exclude_self: bool = False,
    ) -> None:
        self.filters, self.weights = list(filters), list(weights)
        n = filters[0].num_points
        device = filters[0].device
        ones = torch.ones(n, 1, device=device)
        self.inner, self.outer = [], []
        self_weight = torch.zeros(n, device=device)
        for filter_fn, w in zip(self.filters, self.weights, strict=True):
            degree = filter_fn(ones)[:, 0]  # (N,) $D = K \mathbf{1}$
            if normalization == "symmetric":
                a = b = torch.rsqrt(degree + 1e-20)  # $D^{-1/2}$
            elif normalization == "after":
                a, b = torch.ones_like(degree), 1.0 / (degree + 1e-20)  # $D^{-1}$
            else:
                gain = filter_fn.gain() if isinstance(filter_fn, PermutohedralLattice) else 1.0
                a, b = torch.ones_like(degree), torch.full_like(degree, 1.0 / gain)
            self.inner.append(a)
            self.outer.append(w * b)  # the weight $w_m$ folded into the outer scale
            self_weight += w * a * b
        self.self_weight = self_weight[:, None] if exclude_self else None
        self.fused = None
        lattices = [f for f in self.filters if isinstance(f, PermutohedralLattice)]
        if len(lattices) == len(self.filters):
            self.fused = LatticeSum(lattices, self.inner, self.outer)
        self._out: torch.Tensor | None = None  # the reused message

    def __call__(self, q: torch.Tensor) -> torch.Tensor:
        """``(N, C)`` marginals -> ``(N, C)`` message."""
        if self.fused is not None:
            out = None
            if not q.requires_grad:
                if self._out is None or self._out.shape != q.shape:
                    self._out = torch.empty_like(q)
                out = self._out
            # $m = \sum_m w_m\, b_m \odot K_m (a_m \odot Q)$ as one sparse splat/blur/slice
            message = self.fused(q, out=out)
        else:
            # $\sum_m w_m\, b_m \odot K_m (a_m \odot Q)$
            terms = zip(self.filters, self.inner, self.outer, strict=True)
            pieces = [b[:, None] * filter_fn(a[:, None] * q) for filter_fn, a, b in terms]
            message = pieces[0]
            for piece in pieces[1:]:
                message.add_(piece)
        if self.self_weight is not None:
            # remove the $j = i$ terms: $\sum_m w_m \tilde k^{(m)}_{ii} Q_i$
            message = message - self.self_weight * q
        return message


def update(
    unary: torch.Tensor, message: torch.Tensor, compatibility: torch.Tensor | None = None
) -> torch.Tensor:
    """One mean-field update's scores, whose softmax over labels is the new Q.

    $s_i(l) = -\\theta_i(l) - \\sum_{l'} \\mu(l, l')\\, m_i(l')$. With Potts compatibility
    (``compatibility=None``, $\\mu(l, l') = [l \\ne l']$) this is $-\\theta_i(l) + m_i(l)$ up to
    a per-pixel constant that the softmax removes, computed in the message's memory (the message
    is overwritten).

    Args:
        unary: ``(N, C)`` unary potentials $\\theta_i(l)$.
        message: ``(N, C)`` message $m = \\sum_k w_k \\tilde K_k Q$.
        compatibility: ``(C, C)`` label compatibility $\\mu$, or None for Potts.

    Returns:
        ``(N, C)`` scores.
    """
    if compatibility is None:
        return message.sub_(unary)  # $-\theta_i(l) + m_i(l)$
    return -unary - message @ compatibility.T  # $-\theta_i(l) - \sum_{l'} \mu(l, l') m_i(l')$


def iterate(
    unary: torch.Tensor,
    message_fn: Callable[[torch.Tensor], torch.Tensor],
    iterations: int,
    track: bool = False,
    compatibility: torch.Tensor | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """The mean-field loop on flattened tensors; no data leaves the device inside it.

    Args:
        unary: ``(N, C)`` unary potentials $\\theta_i(l) = -\\log P_i(l)$.
        message_fn: $Q \\mapsto \\sum_m w_m \\tilde K_m Q$ (``(N, C) -> (N, C)``).
        iterations: number of updates.
        track: keep each Q and its free energy (0-d tensors, without the constant
            $\\frac12 \\sum_{ij} \\sum_m w_m \\tilde k^{(m)}_{ij}$); Potts compatibility only.
        compatibility: ``(C, C)`` label compatibility $\\mu$ (see :func:`update`); None for
            Potts, the paper's.

    Returns:
        ``(Q, history, energies)`` with ``Q`` of shape ``(N, C)``.

    Raises:
        ValueError: for ``track`` with a compatibility matrix (the free energy here is Potts').
    """
    if track and compatibility is not None:
        raise ValueError("track=True computes the free energy of Potts compatibility only")
    # initialisation: $Q_i(l) \propto \exp(-\theta_i(l))$
    q = torch.softmax(-unary, dim=1)  # (N, C)
    # the new Q overwrites the old one (already used by the message) unless it must be kept:
    # on a megapixel image a fresh Q per step costs more in page faults than the softmax itself
    reuse = not track and not q.requires_grad
    history, energies = ([q], []) if track else ([], [])
    for step in range(iterations + (1 if track else 0)):
        # message passing, weighting: $m_i(l) = \sum_m w_m \sum_j \tilde k^{(m)}_{ij} Q_j(l)$
        message = message_fn(q)
        if track:
            # $F(Q) = \sum_i \langle Q_i, \theta_i + \log Q_i\rangle
            #   + \frac12 \sum_{ij} \sum_m w_m \tilde k^{(m)}_{ij} (1 - \langle Q_i, Q_j\rangle)$
            entropy_term = (q * torch.log(q.clamp_min(1e-30))).sum()
            energies.append((q * unary).sum() + entropy_term - 0.5 * (q * message).sum())
        if step == iterations:
            break
        # compatibility, unaries, normalisation: $Q_i(l) \propto \exp(s_i(l))$
        scores = update(unary, message, compatibility)
        if reuse and not scores.requires_grad:  # the softmax into Q's memory (softmax's out=)
            torch.ops.aten._softmax.out(scores, 1, False, out=q)
        else:
            q = torch.softmax(scores, dim=1)
        if track:
            history.append(q)
    return q, history, energies


def _as_image_tensor(image: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise TypeError(f"image must be uint8 RGB (H, W, 3), got dtype {image.dtype}")
        image = torch.from_numpy(np.ascontiguousarray(image))
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"image must be a numpy array or a tensor, got {type(image).__name__}")
    if image.dtype != torch.uint8:
        raise TypeError(f"image must be uint8 RGB (H, W, 3), got dtype {image.dtype}")
    return image.to(device)


def check_inputs(image: torch.Tensor, probs: torch.Tensor) -> None:
    """Validate one ``(H, W, 3)`` uint8 image and its ``(C, H, W)`` probabilities.

    Raises:
        ValueError: on wrong shapes (including swapped H and W), zero labels or pixels,
            probabilities that are negative, not finite or do not sum to 1 over labels.
        TypeError: on wrong dtypes.
    """
    if image.ndim != 3 or image.shape[2] != 3:
        hint = " (channels first? use image.permute(1, 2, 0))" if image.shape[:1] == (3,) else ""
        raise ValueError(f"image must be (H, W, 3) RGB, got shape {tuple(image.shape)}{hint}")
    if not isinstance(probs, torch.Tensor) or not probs.is_floating_point():
        raise TypeError(
            f"probs must be a float tensor (C, H, W), got {type(probs).__name__} "
            f"{getattr(probs, 'dtype', '')}"
        )
    if probs.ndim != 3:
        raise ValueError(f"probs must be (C, H, W), got shape {tuple(probs.shape)}")
    c, h, w = probs.shape
    if c == 0:
        raise ValueError("probs has zero labels (C = 0): need at least one label")
    if h == 0 or w == 0:
        raise ValueError(f"zero-size image: probs has shape {tuple(probs.shape)}")
    if tuple(image.shape[:2]) != (h, w):
        swapped = " (H and W swapped?)" if tuple(image.shape[:2]) == (w, h) else ""
        raise ValueError(
            f"image is {tuple(image.shape[:2])} (H, W) but probs are {(h, w)}{swapped}: "
            "they must have the same height and width"
        )
    if not torch.isfinite(probs).all():
        raise ValueError("probs contain NaN or inf: expected probabilities in [0, 1]")
    if (probs < 0).any():
        raise ValueError(f"probs contain negative values (min {probs.min().item():.3g})")
    # a half-precision probability is rounded to its dtype's step, and C of them add up
    tolerance = max(1e-3, c * torch.finfo(probs.dtype).eps)
    sums = probs.float().sum(0)
    if not torch.allclose(sums, torch.ones_like(sums), atol=tolerance):
        worst = (sums - 1).abs().max().item()
        raise ValueError(
            f"probs must sum to 1 over labels (dim 0) at every pixel; off by up to {worst:.3g}. "
            "Pass softmax probabilities, not scores or -log probabilities"
        )


def mean_field(
    image: np.ndarray | torch.Tensor,
    probs: torch.Tensor,
    params: CRFParams | None = None,
    *,
    method: str = "permutohedral",
    exclude_self: bool = False,
    track: bool = False,
    **changes: Any,
) -> MeanFieldResult:
    """Mean-field inference for one image, optionally keeping every Q and the free energy.

    The free energy $F(Q) = \\mathbb{E}_Q[E(x)] - H(Q)$ equals
    $\\mathrm{KL}(Q\\,\\|\\,P) - \\log Z$;
    with the symmetric normalisation (a positive semi-definite kernel matrix), self terms
    kept and Potts compatibility, the parallel update cannot increase it (Kraehenbuehl & Koltun,
    ICML 2013); the lattice's truncation makes that hold only approximately.

    Args: as :func:`dense_crf` (single image only), plus ``track``.

    Returns:
        A :class:`MeanFieldResult`.

    Raises:
        ValueError, TypeError: see :func:`dense_crf`.
    """
    params = _params(params, changes)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    image_t = _as_image_tensor(image, probs.device if isinstance(probs, torch.Tensor) else "cpu")
    check_inputs(image_t, probs)
    c, h, w = probs.shape
    if method == "pydensecrf":
        if track or exclude_self:
            raise ValueError("method='pydensecrf' supports neither track nor exclude_self")
        ref = reference_dense_crf(image_t.cpu().numpy(), probs.detach().cpu().numpy(), params)
        return MeanFieldResult(torch.from_numpy(ref).to(probs.device, probs.dtype))

    device = probs.device
    features = (
        appearance_features(image_t, params.theta_alpha, params.theta_beta),  # (N, 5)
        smoothness_features(h, w, params.theta_gamma, device),  # (N, 2)
    )
    filters = [NaiveFilter(f) if method == "naive" else PermutohedralLattice(f) for f in features]
    message_fn = PairwiseMessage(
        filters, (params.w1, params.w2), params.normalization, exclude_self
    )
    if message_fn.fused is not None:  # its matrices hold the lattices' per-point tables now
        for lattice in message_fn.fused.lattices:
            lattice.drop_point_tables()  # (memory: 108 MB at 1 megapixel)
    # unary: $\theta_i(l) = -\log P_i(l)$, probabilities clipped to [1e-5, 1]
    unary = probs.detach().to(torch.float32).reshape(c, h * w).T  # (N, C) view
    unary = unary.clone(memory_format=torch.contiguous_format).clamp_(PROB_CLIP, 1.0).log_().neg_()
    q, history, energies = iterate(unary, message_fn, params.iterations, track)
    if track:  # the constant $\frac12 \sum_{ij} \sum_m w_m \tilde k^{(m)}_{ij}$ of the energy
        constant = 0.5 * message_fn(torch.ones(h * w, 1, device=device)).sum()
        energies = [energy + constant for energy in energies]

    def to_chw(x: torch.Tensor) -> torch.Tensor:
        return x.T.reshape(c, h, w).to(probs.dtype)

    return MeanFieldResult(
        to_chw(q), [to_chw(x) for x in history], torch.stack(energies).tolist() if track else []
    )


def _params(params: CRFParams | None, changes: dict[str, Any]) -> CRFParams:
    """``params`` (default :class:`CRFParams`) with the keyword ``changes`` applied.

    Raises:
        TypeError: for a keyword that is not a :class:`CRFParams` field.
    """
    if params is not None and not isinstance(params, CRFParams):
        raise TypeError(f"params must be a CRFParams, got {type(params).__name__}")
    known = {f.name for f in dataclasses.fields(CRFParams)}
    unknown = sorted(set(changes) - known)
    if unknown:
        raise TypeError(f"unknown CRF parameters {unknown}; expected some of {sorted(known)}")
    return dataclasses.replace(params or CRFParams(), **changes)


def dense_crf(
    image: np.ndarray | torch.Tensor,
    probs: torch.Tensor,
    params: CRFParams | None = None,
    *,
    method: str = "permutohedral",
    exclude_self: bool = False,
    **changes: Any,
) -> torch.Tensor:
    """Refine class probabilities with DeepLab's fully connected CRF (paper section 4.2).

    Args:
        image: ``(H, W, 3)`` uint8 RGB image (numpy array or tensor), or ``(B, H, W, 3)``.
        probs: ``(C, H, W)`` float probabilities (summing to 1 over C), or ``(B, C, H, W)``;
            on any device.
        params: the CRF (:class:`CRFParams`: w1, theta_alpha, theta_beta, w2, theta_gamma,
            iterations, normalization); default ``CRFParams()``, DeepLab-LargeFOV's.
        method: ``"permutohedral"`` (ours, fast), ``"naive"`` (exact, small images only) or
            ``"pydensecrf"`` (the C++ reference, if installed).
        exclude_self: leave out each pixel's own term $j = i$ (off, like the reference code).
        **changes: any :class:`CRFParams` field, to change it for this call, e.g.
            ``dense_crf(image, probs, w1=5, normalization="symmetric")``.

    Returns:
        Q with the shape of ``probs``, on ``probs``' device.

    Raises:
        ValueError: bad shapes, labels, probabilities, parameters (negative or infinite) or
            method (the message says what was expected and what was given); the naive method
            above its size limit.
        TypeError: an image that is not uint8, probabilities that are not a float tensor, an
            unknown keyword.
        ImportError: ``method="pydensecrf"`` without pydensecrf installed.
    """
    params = _params(params, changes)
    if isinstance(probs, torch.Tensor) and probs.ndim == 4:
        if getattr(image, "ndim", 4) != 4:
            raise ValueError(
                f"probs are a batch (B, C, H, W) {tuple(probs.shape)} but image is not a batch "
                f"(B, H, W, 3): got shape {tuple(image.shape)}"
            )
        if len(image) != len(probs):
            raise ValueError(
                f"batch sizes differ: {len(image)} images, {len(probs)} probability maps"
            )
        if len(probs) == 0:  # an empty batch: an empty result
            return torch.empty_like(probs)
        return torch.stack(
            [
                mean_field(im, p, params, method=method, exclude_self=exclude_self).q
                for im, p in zip(image, probs, strict=True)
            ]
        )
    return mean_field(image, probs, params, method=method, exclude_self=exclude_self).q
