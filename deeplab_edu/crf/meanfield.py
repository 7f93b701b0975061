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

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from deeplab_edu.crf.kernels import CRFParams, appearance_features, smoothness_features
from deeplab_edu.crf.naive import NaiveFilter
from deeplab_edu.crf.permutohedral import PermutohedralLattice

METHODS = ("permutohedral", "naive", "pydensecrf")
NORMALIZATIONS = ("symmetric", "after", "none")
PROB_CLIP = 1e-5  # probabilities are clipped to [1e-5, 1] before -log, as pydensecrf does
_DEFAULT = CRFParams()


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


class NormalizedKernel:
    """One Gaussian kernel with its normalisation: $\\tilde K Q$ for ``Q`` of shape ``(N, C)``.

    Args:
        filter_fn: computes $K v$ for ``(N, C)`` values (a lattice or an exact filter).
        normalization: one of :data:`NORMALIZATIONS`.
        exclude_self: leave out the $j = i$ term.
        gain: mass of ``filter_fn`` relative to the exact kernel (1 for exact filtering).
    """

    def __init__(
        self,
        filter_fn: Callable[[torch.Tensor], torch.Tensor],
        normalization: str,
        exclude_self: bool,
        num_points: int,
        device: torch.device,
        gain: float = 1.0,
    ) -> None:
        self.filter_fn, self.normalization, self.exclude_self = (
            filter_fn,
            normalization,
            exclude_self,
        )
        ones = torch.ones(num_points, 1, device=device)
        self.degree = filter_fn(ones)  # (N, 1) = $D = K \mathbf{1}$
        if normalization == "symmetric":
            self.scale = torch.rsqrt(self.degree + 1e-20)  # $D^{-1/2}$
        elif normalization == "after":
            self.scale = 1.0 / (self.degree + 1e-20)  # $D^{-1}$
        else:
            self.scale = torch.full_like(self.degree, 1.0 / gain)
        self.self_weight = self.scale.square() if normalization == "symmetric" else self.scale

    def __call__(self, q: torch.Tensor) -> torch.Tensor:
        if self.normalization == "symmetric":
            # $D^{-1/2} K D^{-1/2} Q$
            out = self.scale * self.filter_fn(self.scale * q)
        else:
            # $D^{-1} K Q$ ("after") or $K Q / \mathrm{gain}$ ("none")
            out = self.scale * self.filter_fn(q)
        if self.exclude_self:
            # remove $\tilde k_{ii} Q_i$, with $k(f_i, f_i) = 1$
            out = out - self.self_weight * q
        return out

    def total(self) -> torch.Tensor:
        """$\\sum_{ij} \\tilde K_{ij}$, the energy of the all-different labelling (a constant)."""
        return self(torch.ones_like(self.degree)).sum()


def _build_filter(features: torch.Tensor, method: str) -> tuple[Callable, float]:
    if method == "naive":
        return NaiveFilter(features), 1.0
    lattice = PermutohedralLattice(features)
    return lattice, lattice.gain()


def iterate(
    unary: torch.Tensor,
    kernels: Sequence[Callable[[torch.Tensor], torch.Tensor]],
    weights: Sequence[float],
    iterations: int,
    track: bool = False,
    constant: torch.Tensor | float = 0.0,
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """The mean-field loop on flattened tensors; no data leaves the device inside it.

    Args:
        unary: ``(N, C)`` unary potentials $\\theta_i(l) = -\\log P_i(l)$.
        kernels: normalised filters $\\tilde K_m$ (``(N, C) -> (N, C)``).
        weights: $w_m$, one per kernel.
        iterations: number of updates.
        track: keep each Q and its free energy (as 0-d tensors).
        constant: $\\frac12 \\sum_m w_m \\sum_{ij} \\tilde K^{(m)}_{ij}$, added to the energy.

    Returns:
        ``(Q, history, energies)`` with ``Q`` of shape ``(N, C)``.
    """
    # initialisation: $Q_i(l) \propto \exp(-\theta_i(l))$
    q = torch.softmax(-unary, dim=1)  # (N, C)
    history, energies = ([q], []) if track else ([], [])
    for step in range(iterations + (1 if track else 0)):
        # message passing, weighting: $m_i(l) = \sum_m w_m \sum_j \tilde k^{(m)}_{ij} Q_j(l)$
        message = weights[0] * kernels[0](q)
        for w, kernel in zip(weights[1:], kernels[1:], strict=True):
            message = message + w * kernel(q)
        if track:
            # $F(Q) = \sum_i \langle Q_i, \theta_i + \log Q_i\rangle
            #   + \frac12 \sum_{ij} \sum_m w_m \tilde k^{(m)}_{ij} (1 - \langle Q_i, Q_j\rangle)$
            entropy_term = (q * torch.log(q.clamp_min(1e-30))).sum()
            energies.append((q * unary).sum() + entropy_term + constant - 0.5 * (q * message).sum())
        if step == iterations:
            break
        # compatibility (Potts), unaries, normalisation:
        # $Q_i(l) \propto \exp(-\theta_i(l) + m_i(l))$
        q = torch.softmax(message - unary, dim=1)
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
        raise TypeError(f"probs must be a float tensor (C, H, W), got {type(probs).__name__} "
                        f"{getattr(probs, 'dtype', '')}")  # fmt: skip
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
    sums = probs.sum(0)
    if not torch.allclose(sums, torch.ones_like(sums), atol=1e-3):
        worst = (sums - 1).abs().max().item()
        raise ValueError(
            f"probs must sum to 1 over labels (dim 0) at every pixel; off by up to {worst:.3g}. "
            "Pass softmax probabilities, not scores or -log probabilities"
        )


def mean_field(
    image: np.ndarray | torch.Tensor,
    probs: torch.Tensor,
    *,
    w1: float = _DEFAULT.w1,
    theta_alpha: float = _DEFAULT.theta_alpha,
    theta_beta: float = _DEFAULT.theta_beta,
    w2: float = _DEFAULT.w2,
    theta_gamma: float = _DEFAULT.theta_gamma,
    iterations: int = 10,
    method: str = "permutohedral",
    normalization: str = "symmetric",
    exclude_self: bool = False,
    track: bool = False,
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
    params = CRFParams(w1, theta_alpha, theta_beta, w2, theta_gamma)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    if not isinstance(iterations, int) or iterations < 0:
        raise ValueError(f"iterations must be a non-negative int, got {iterations!r}")
    image_t = _as_image_tensor(image, probs.device if isinstance(probs, torch.Tensor) else "cpu")
    check_inputs(image_t, probs)
    c, h, w = probs.shape
    if method == "pydensecrf":
        from deeplab_edu.crf.reference import reference_dense_crf

        if track or exclude_self:
            raise ValueError("method='pydensecrf' supports neither track nor exclude_self")
        q = reference_dense_crf(image_t.cpu().numpy(), probs.detach().cpu().numpy(), params,
                                iterations=iterations, normalization=normalization)  # fmt: skip
        return MeanFieldResult(torch.from_numpy(q).to(probs.device, probs.dtype))

    device = probs.device
    features = (
        appearance_features(image_t, params.theta_alpha, params.theta_beta),  # (N, 5)
        smoothness_features(h, w, params.theta_gamma, device),  # (N, 2)
    )
    kernels = []
    for f in features:
        filter_fn, gain = _build_filter(f, method)
        kernels.append(
            NormalizedKernel(filter_fn, normalization, exclude_self, h * w, device, gain)
        )
    weights = (params.w1, params.w2)
    # unary: $\theta_i(l) = -\log P_i(l)$, probabilities clipped to [1e-5, 1]
    unary = -torch.log(probs.detach().to(torch.float32).clamp(PROB_CLIP, 1.0))  # (C, H, W)
    unary = unary.reshape(c, h * w).T.contiguous()  # (N, C)
    constant = 0.0
    if track:
        constant = 0.5 * sum(
            wm * kernel.total() for wm, kernel in zip(weights, kernels, strict=True)
        )
    q, history, energies = iterate(unary, kernels, weights, iterations, track, constant)

    def to_chw(x: torch.Tensor) -> torch.Tensor:
        return x.T.reshape(c, h, w).to(probs.dtype)

    return MeanFieldResult(
        to_chw(q), [to_chw(x) for x in history], torch.stack(energies).tolist() if track else []
    )


def dense_crf(
    image: np.ndarray | torch.Tensor,
    probs: torch.Tensor,
    *,
    w1: float = _DEFAULT.w1,
    theta_alpha: float = _DEFAULT.theta_alpha,
    theta_beta: float = _DEFAULT.theta_beta,
    w2: float = _DEFAULT.w2,
    theta_gamma: float = _DEFAULT.theta_gamma,
    iterations: int = 10,
    method: str = "permutohedral",
    normalization: str = "symmetric",
    exclude_self: bool = False,
) -> torch.Tensor:
    """Refine class probabilities with DeepLab's fully connected CRF (paper section 5).

    Args:
        image: ``(H, W, 3)`` uint8 RGB image (numpy array or tensor), or ``(B, H, W, 3)``.
        probs: ``(C, H, W)`` float probabilities (summing to 1 over C), or ``(B, C, H, W)``;
            on any device.
        w1, theta_alpha, theta_beta: appearance kernel weight and bandwidths (pixels, RGB).
        w2, theta_gamma: smoothness kernel weight and bandwidth (pixels).
        iterations: mean-field iterations (10 in all of the paper's experiments).
        method: ``"permutohedral"`` (ours, fast), ``"naive"`` (exact, small images only) or
            ``"pydensecrf"`` (the C++ reference, if installed).
        normalization: ``"symmetric"``, ``"after"`` or ``"none"`` (see the module docstring).
        exclude_self: leave out each pixel's own term $j = i$ (off, like the reference code).

    Returns:
        Q with the shape of ``probs``, on ``probs``' device.

    Raises:
        ValueError: bad shapes, labels, probabilities, method or normalisation (the message says
            what was expected and what was given); the naive method above its size limit.
        TypeError: an image that is not uint8, probabilities that are not a float tensor.
        ImportError: ``method="pydensecrf"`` without pydensecrf installed.
    """
    kwargs = dict(w1=w1, theta_alpha=theta_alpha, theta_beta=theta_beta, w2=w2,
                  theta_gamma=theta_gamma, iterations=iterations, method=method,
                  normalization=normalization, exclude_self=exclude_self)  # fmt: skip
    if isinstance(probs, torch.Tensor) and probs.ndim == 4:
        if len(image) != len(probs):
            raise ValueError(
                f"batch sizes differ: {len(image)} images, {len(probs)} probability maps"
            )
        return torch.stack(
            [mean_field(im, p, **kwargs).q for im, p in zip(image, probs, strict=True)]
        )
    return mean_field(image, probs, **kwargs).q
