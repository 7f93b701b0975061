"""Two ways to a denser output from a strided network (paper section 3.1).

A network with output stride S gives one score every S pixels. To get one every S / f:

- **shift and stitch** (OverFeat, FCN): run the network f x f times, on copies of the input
  shifted by multiples of S / f pixels, and interleave the f x f coarse outputs;
- **the hole algorithm** (DeepLab): once the stride reaches S / f, stop subsampling (stride 1)
  and give every later layer holes: its dilation (and padding) multiplied by the subsampling
  removed so far. One pass, the same weights.

On a network without padding the two are exactly equal (tested); with zero padding they differ
only near the image border, where the shifted copies meet the padding at different places.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from deeplab_edu.models.field import side


def make_atrous(net: nn.Sequential, output_stride: int) -> nn.Sequential:
    """The hole algorithm applied to a network: a copy with output stride ``output_stride``.

    Walking the layers, once the accumulated stride reaches ``output_stride`` every later
    stride s is set to 1 and the rate r multiplied by s; every later layer gets dilation x r
    and padding x r. The weights are copied unchanged.

    Args:
        net: convolutions, max-poolings and element-wise layers (ReLU, dropout).
        output_stride: the wanted output stride; it must be a product of the first strides.

    Returns:
        The atrous copy.

    Raises:
        ValueError: for an average pooling that would need holes (PyTorch has none), or an
            ``output_stride`` the network's strides do not reach exactly.
    """
    dense, stride, rate = copy.deepcopy(net), 1, 1
    for layer in dense:
        if isinstance(layer, nn.Conv2d):
            s = layer.stride[0]
            layer.dilation = tuple(d * rate for d in layer.dilation)
            layer.padding = tuple(side(p) * rate for p in layer.padding)
        elif isinstance(layer, nn.MaxPool2d):
            s = side(layer.stride)
            layer.dilation = side(layer.dilation) * rate
            layer.padding = side(layer.padding) * rate
        elif isinstance(layer, nn.AvgPool2d) and rate > 1:
            raise ValueError("make_atrous: average pooling cannot take holes in PyTorch")
        else:
            continue
        if stride >= output_stride and s > 1:  # the hole algorithm: no subsampling, holes later
            if isinstance(layer, nn.Conv2d):
                layer.stride = (1, 1)
            else:
                layer.stride = 1
            rate *= s
        else:
            stride *= s
    if stride != output_stride:
        raise ValueError(f"the network's strides never multiply to {output_stride} (got {stride})")
    return dense


def shift_and_stitch(
    net: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, *, stride: int, factor: int
) -> torch.Tensor:
    """Scores ``factor`` times denser from a network of output stride ``stride``.

    Runs ``net`` on ``factor ** 2`` copies of ``x`` shifted by (a, b) * stride / factor pixels
    and interleaves them: output (a + factor i, b + factor j) = net(x shifted by (a, b))[i, j].

    Args:
        net: the strided network, (B, C, H, W) -> (B, K, h, w).
        x: the input (B, C, H, W).
        stride: the network's output stride S.
        factor: the densification f (S must be divisible by f).

    Returns:
        (B, K, h', w') scores at stride S / f.

    Raises:
        ValueError: if ``stride`` is not a multiple of ``factor``.
    """
    if factor < 1 or stride % factor:
        raise ValueError(f"stride {stride} must be a positive multiple of factor {factor}")
    step = stride // factor  # pixels between neighbouring dense outputs
    coarse = {
        (a, b): net(x[:, :, a * step :, b * step :])  # (B, K, h_a, w_b)
        for a in range(factor)
        for b in range(factor)
    }
    height = max(a + factor * (out.shape[-2] - 1) + 1 for (a, _), out in coarse.items())
    width = max(b + factor * (out.shape[-1] - 1) + 1 for (_, b), out in coarse.items())
    first = coarse[0, 0]
    dense = first.new_zeros(*first.shape[:2], height, width)  # (B, K, h', w')
    for (a, b), out in coarse.items():
        dense[:, :, a::factor, b::factor][:, :, : out.shape[-2], : out.shape[-1]] = out
    return dense
