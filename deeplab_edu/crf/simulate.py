"""Coarse, network-like class probabilities simulated from a ground-truth mask.

DeepLab's CRF refines the bilinearly upsampled stride-8 scores of the network. To study the CRF
without training a network (tests, the CRF chapters), :func:`simulate_unaries` imitates such
scores from a ground truth: it keeps only what a stride-8 network could see (one prediction per
8x8 cell), smooths it, corrupts some cells, and upsamples bilinearly, so that object outlines are
blurry and a few regions are wrong, as in the paper's Fig. 1.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from deeplab_edu.data.voc import IGNORE_INDEX, NUM_CLASSES
from deeplab_edu.models.field import OUTPUT_STRIDE


def simulate_unaries(
    mask: np.ndarray | torch.Tensor,
    num_classes: int = NUM_CLASSES,
    *,
    stride: int = OUTPUT_STRIDE,
    blur_sigma: float = 1.0,
    noise: float = 0.1,
    confidence: float = 0.6,
    seed: int = 0,
) -> torch.Tensor:
    """Simulate a stride-``stride`` network's probabilities from a label mask.

    Steps: one-hot labels (void pixels count as uniform); average over ``stride x stride``
    cells; Gaussian blur of ``blur_sigma`` cells; in a random fraction ``noise`` of the cells,
    replace the distribution by a one-hot of a random label among ``num_classes``; mix with the
    uniform distribution so the largest probability is at most about ``confidence``... scaled
    as $p \\leftarrow \\text{confidence}\\cdot p + (1-\\text{confidence})/C$; upsample bilinearly
    to the mask's size (``align_corners=False``).

    Args:
        mask: ``(H, W)`` integer labels in ``0..num_classes-1`` or 255 (void).
        num_classes: C.
        stride: cell size (DeepLab's ``OUTPUT_STRIDE``, 8).
        blur_sigma: standard deviation of the blur, in cells (0 for none).
        noise: fraction of cells given a random label, in [0, 1].
        confidence: weight of the simulated prediction against the uniform distribution, (0, 1].
        seed: seed of the noise (the result is deterministic).

    Returns:
        ``(C, H, W)`` float32 probabilities summing to 1 at every pixel (CPU).

    Raises:
        ValueError: for a mask that is not 2-D, labels out of range, or parameters out of range.
    """
    labels = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask)
    if labels.ndim != 2 or labels.numel() == 0:
        raise ValueError(
            f"mask must be a non-empty (H, W) label map, got shape {tuple(labels.shape)}"
        )
    labels = labels.to(torch.int64).cpu()
    valid = labels != IGNORE_INDEX
    if ((labels[valid] < 0) | (labels[valid] >= num_classes)).any():
        raise ValueError(f"mask labels must be in 0..{num_classes - 1} or {IGNORE_INDEX}")
    if not 0.0 <= noise <= 1.0 or not 0.0 < confidence <= 1.0 or stride < 1 or blur_sigma < 0:
        raise ValueError(
            f"need 0 <= noise <= 1, 0 < confidence <= 1, stride >= 1, blur_sigma >= 0; got "
            f"noise={noise}, confidence={confidence}, stride={stride}, blur_sigma={blur_sigma}"
        )
    h, w = labels.shape
    generator = torch.Generator().manual_seed(seed)
    one_hot = torch.full((num_classes, h, w), 1.0 / num_classes)  # void: uniform
    one_hot[:, valid] = F.one_hot(labels[valid], num_classes).T.float()
    # one prediction per stride x stride cell (partial cells at the border are averaged too)
    coarse = F.avg_pool2d(one_hot[None], stride, stride, ceil_mode=True)  # (1, C, h, w)
    if blur_sigma > 0:
        coarse = _gaussian_blur(coarse, blur_sigma)
    _, _, ch, cw = coarse.shape
    flipped = torch.rand(ch, cw, generator=generator) < noise  # (h, w) corrupted cells
    random_labels = torch.randint(num_classes, (ch, cw), generator=generator)
    wrong = F.one_hot(random_labels, num_classes).permute(2, 0, 1).float()  # (C, h, w)
    coarse = torch.where(flipped, wrong, coarse[0])  # (C, h, w)
    coarse = confidence * coarse + (1.0 - confidence) / num_classes
    # cell i averaged pixels stride * i .. stride * (i + 1) - 1: scaling by exactly ``stride``
    # puts its value back on their centre (a partial last cell is cropped, not stretched)
    probs = F.interpolate(coarse[None], scale_factor=stride, mode="bilinear", align_corners=False)
    probs = probs[0, :, :h, :w]
    return probs / probs.sum(0, keepdim=True)  # (C, H, W)


def _gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """``(1, C, h, w)`` maps blurred by a Gaussian of ``sigma`` cells (edges replicated)."""
    channels = maps.shape[1]
    radius = max(1, int(3 * sigma + 0.5))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    g = torch.exp(-0.5 * (x / sigma) ** 2)
    g = g / g.sum()
    padded = F.pad(maps, (radius, radius, radius, radius), mode="replicate")
    rows = F.conv2d(padded, g.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    return F.conv2d(rows, g.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)


def resized_scene(
    image: np.ndarray | torch.Tensor, mask: np.ndarray | torch.Tensor, size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """A photo at another size with its simulated probabilities: the CRF's inputs at that size
    (the benchmarks and the GPU check time the CRF on photos of several sizes).

    Args:
        image: ``(H, W, 3)`` uint8 RGB photo.
        mask: ``(H, W)`` labels (255 = void).
        size: ``(height, width)`` wanted.

    Returns:
        The photo resized bilinearly, ``(height, width, 3)`` uint8 (contiguous), and
        :func:`simulate_unaries` of the mask resized to nearest, ``(21, height, width)``.
    """
    picture = torch.as_tensor(np.asarray(image)).permute(2, 0, 1)[None].float()
    picture = F.interpolate(picture, size=size, mode="bilinear", align_corners=False)
    picture = picture[0].round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).contiguous()
    labels = torch.as_tensor(np.asarray(mask))[None, None].float()
    labels = F.interpolate(labels, size=size, mode="nearest")[0, 0].long()
    return picture, simulate_unaries(labels, NUM_CLASSES, seed=0)
