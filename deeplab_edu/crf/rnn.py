"""The fully connected CRF as a trainable layer: mean field unrolled into a recurrent network
(Zheng et al., "Conditional Random Fields as Recurrent Neural Networks", ICCV 2015).

DeepLab tunes its CRF after training the network, by a grid search over three numbers. Every
step of mean field is a differentiable tensor operation, though: the Gaussian filtering (exact,
or the permutohedral lattice's sparse splat, blur and slice), the weighting, the compatibility
transform and the softmax. Unrolled for T iterations, the CRF becomes a layer whose output Q
can be differentiated with respect to the network's scores and to the CRF's own parameters, and
trained with them. The layer here keeps the bandwidths fixed (they define the lattice) and
learns

- the kernel weights $w_1, w_2$, kept positive by learning their logarithms;
- a label compatibility matrix $\\mu$ (C x C), started at Potts ($\\mu(l, l') = [l \\ne l']$),
  so that it can learn that some pairs of classes may touch and others not.

One iteration: $m^{(k)} = \\tilde K_k Q$ for both kernels (normalised as in :func:`dense_crf`),
then $Q_i(l) \\propto \\exp\\big(-\\theta_i(l) - \\sum_{l'} \\mu(l, l') \\sum_k w_k\\,
m^{(k)}_i(l')\\big)$. With Potts and the same weights this is exactly :func:`dense_crf`'s update,
since $\\sum_{l'} [l \\ne l'] m_i(l') = \\sum_{l'} m_i(l') - m_i(l)$ and the softmax removes the
part that does not depend on $l$. The gradient of a Gaussian filtering is the same filtering
(the kernel matrix is symmetric up to its normalisation), and autograd finds it through the
sparse products without a hand-written backward pass.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from deeplab_edu.crf.kernels import CRFParams, appearance_features, smoothness_features
from deeplab_edu.crf.meanfield import PROB_CLIP, PairwiseMessage, iterate, update
from deeplab_edu.crf.naive import NaiveFilter
from deeplab_edu.crf.permutohedral import PermutohedralLattice

LAYER_METHODS = ("permutohedral", "naive")


class MeanFieldCRF(nn.Module):
    """DeepLab's fully connected CRF with learnable kernel weights and label compatibilities.

    Args:
        num_classes: C, the number of labels.
        params: the CRF to start from (:class:`CRFParams`; default DeepLab-LargeFOV's, e.g. a
            grid search's best): its weights $w_1, w_2$ (> 0) are the starting weights, its
            bandwidths, iterations T (unrolled) and normalisation stay fixed; the compatibility
            starts at Potts.
        method: ``"permutohedral"`` (filters in float32) or ``"naive"`` (exact; small images,
            float64 too, for gradient checks).

    Precision: Q comes back in the logits' dtype. The lattice computes in float32 (float64
    logits too), the naive filtering in float32 or float64; float16 and bfloat16 logits are
    computed in float32, since ten iterations of exp and log in half precision would lose the
    small messages. An empty batch (B = 0) gives an empty Q.

    Call ``crf(image, logits)`` with ``image`` ``(B, H, W, 3)`` uint8 and ``logits``
    ``(B, C, H, W)`` float scores; it returns Q ``(B, C, H, W)``. The unaries are
    $-\\log \\mathrm{softmax}(\\text{logits})$ clipped at ``PROB_CLIP``, as in :func:`dense_crf`.
    For training, :meth:`scores` gives the last iteration's scores before its softmax, so that
    a cross-entropy loss keeps its gradient where Q is nearly 0 (``log`` of a tiny Q would not).

    Raises:
        ValueError: for weights that are not positive, an unknown method, and (when called)
            inputs of the wrong shape, dtype or number of classes.
        TypeError: for ``params`` that are not a :class:`CRFParams`.
    """

    def __init__(
        self, num_classes: int, params: CRFParams | None = None, *, method: str = "permutohedral"
    ) -> None:
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
        params = CRFParams() if params is None else params
        if not isinstance(params, CRFParams):
            raise TypeError(f"params must be a CRFParams, got {type(params).__name__}")
        if not (params.w1 > 0 and params.w2 > 0):
            raise ValueError(
                f"learnable weights must start above 0 (their logarithms are "
                f"learned), got w1={params.w1}, w2={params.w2}"
            )
        if method not in LAYER_METHODS:
            raise ValueError(f"method must be one of {LAYER_METHODS}, got {method!r}")
        self.num_classes, self.params, self.method = num_classes, params, method
        self.log_weights = nn.Parameter(torch.tensor([math.log(params.w1), math.log(params.w2)]))
        self.compatibility = nn.Parameter(1.0 - torch.eye(num_classes))  # Potts

    @property
    def weights(self) -> torch.Tensor:
        """$(w_1, w_2)$, positive."""
        return self.log_weights.exp()

    def forward(self, image: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """``(B, H, W, 3)`` uint8 images and ``(B, C, H, W)`` scores -> Q ``(B, C, H, W)``."""
        return torch.softmax(self.scores(image, logits), dim=1)

    def scores(self, image: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """The last mean-field iteration before its softmax: ``(B, C, H, W)``, Q = their
        softmax over C (for ``F.cross_entropy``). Same arguments and errors as the call."""
        is_tensor = isinstance(logits, torch.Tensor)
        if not is_tensor or logits.ndim != 4 or not logits.is_floating_point():
            raise ValueError(
                f"logits must be a float (B, C, H, W) tensor, got "
                f"{getattr(logits, 'dtype', type(logits).__name__)} "
                f"{tuple(getattr(logits, 'shape', ()))}"
            )
        batch, classes, height, width = logits.shape
        if classes != self.num_classes:
            raise ValueError(
                f"logits have {classes} classes, the layer was built for {self.num_classes}"
            )
        if (
            not isinstance(image, torch.Tensor)
            or image.dtype != torch.uint8
            or tuple(image.shape) != (batch, height, width, 3)
        ):
            raise ValueError(
                f"image must be a uint8 (B, H, W, 3) = {(batch, height, width, 3)} "
                f"tensor, got {getattr(image, 'dtype', type(image).__name__)} "
                f"{tuple(getattr(image, 'shape', ()))}"
            )
        if batch == 0:
            return torch.empty_like(logits)
        # float64 only where the filtering is exact; float32 for the lattice and half precisions
        exact64 = logits.dtype == torch.float64 and self.method == "naive"
        work = logits.to(torch.float64 if exact64 else torch.float32)
        scores = [self._one(im, z) for im, z in zip(image, work, strict=True)]
        return torch.stack(scores).to(logits.dtype)

    def _one(self, image: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        classes, height, width = logits.shape
        p = self.params
        features = (
            appearance_features(image, p.theta_alpha, p.theta_beta),  # (N, 5)
            smoothness_features(height, width, p.theta_gamma, logits.device),  # (N, 2)
        )
        build = PermutohedralLattice if self.method == "permutohedral" else NaiveFilter
        # one normalised kernel each, weight 1: the learnable weights multiply their messages
        kernels = [PairwiseMessage([build(f)], [1.0], p.normalization) for f in features]
        # unary: $\theta_i(l) = -\log P_i(l)$, probabilities clipped as in dense_crf
        probs = torch.softmax(logits, dim=0).reshape(classes, height * width).T  # (N, C)
        unary = -torch.log(probs.clamp_min(PROB_CLIP))
        weights = self.weights.to(logits.dtype)
        compatibility = self.compatibility.to(logits.dtype)

        def message(q: torch.Tensor) -> torch.Tensor:  # $m = \sum_k w_k \tilde K_k Q$
            return weights[0] * kernels[0](q) + weights[1] * kernels[1](q)  # (N, C)

        if p.iterations == 0:  # Q is the network's softmax
            scores = -unary
        else:  # mean field's own loop and update, with the learnable compatibility $\mu$
            q = iterate(unary, message, p.iterations - 1, compatibility=compatibility)[0]
            scores = update(unary, message(q), compatibility)  # the last update, before softmax
        return scores.T.reshape(classes, height, width)
