"""Atrous convolution, "the hole algorithm" (paper section 3.1), written from scratch.

The paper's words: the filter is applied to its input sampled with an "input stride" of r
pixels. With im2col ("image to columns"), a convolution is one matrix product: every output
position gathers the k x k input pixels its filter touches into a column, and the filter bank,
a (C_out, C_in k k) matrix, multiplies all columns at once. The holes only change *which*
pixels are gathered: tap (i, j) of output (y, x) reads input (y s + i r, x s + j r).

    y[b, o, y, x] = sum_{c, i, j} w[o, c, i, j] * x_pad[b, c, y s + i r, x s + j r] + b[o]

:func:`atrous_conv2d` equals ``torch.nn.functional.conv2d(..., dilation=r)``; the tests check
it, gradients included.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _check(x: torch.Tensor, weight: torch.Tensor, dims: int, rate: int, stride: int) -> None:
    if x.ndim != dims + 2:
        raise ValueError(f"x must be (B, C_in{', H, W' if dims == 2 else ', L'}), got {x.shape}")
    if weight.ndim != dims + 2 or weight.shape[1] != x.shape[1]:
        raise ValueError(
            f"weight must be (C_out, {x.shape[1]}, k...) with {dims} kernel dims to match x's "
            f"{x.shape[1]} channels, got {tuple(weight.shape)}"
        )
    if rate < 1 or stride < 1:
        raise ValueError(f"rate and stride must be >= 1, got rate={rate}, stride={stride}")


def im2col_atrous(
    x: torch.Tensor, kernel: int, *, rate: int, padding: int, stride: int = 1
) -> torch.Tensor:
    """Gather, for every output position, the k x k input pixels a dilated filter reads.

    Args:
        x: input (B, C, H, W).
        kernel: kernel size k.
        rate: atrous rate r (distance between taps).
        padding: zero padding p on each side.
        stride: output stride s.

    Returns:
        Columns (B, C k k, H_out W_out), ordered (c, i, j) like a flattened conv weight.

    Raises:
        ValueError: if the padded input is smaller than the dilated kernel.
    """
    batch, channels = x.shape[:2]
    x = F.pad(x, (padding, padding, padding, padding))  # (B, C, H + 2p, W + 2p)
    span = rate * (kernel - 1) + 1  # the dilated kernel's extent
    height, width = x.shape[-2:]
    if height < span or width < span:
        raise ValueError(f"padded input {height}x{width} smaller than dilated kernel {span}")
    h_out, w_out = (height - span) // stride + 1, (width - span) // stride + 1
    # tap (i, j) of output (y, x) reads x_pad[y s + i r, x s + j r]
    rows = (torch.arange(h_out) * stride)[None, :] + (torch.arange(kernel) * rate)[:, None]
    cols = (torch.arange(w_out) * stride)[None, :] + (torch.arange(kernel) * rate)[:, None]
    rows, cols = rows.to(x.device), cols.to(x.device)  # (k, H_out), (k, W_out)
    patches = x[:, :, rows[:, None, :, None], cols[None, :, None, :]]  # (B, C, k, k, Ho, Wo)
    return patches.reshape(batch, channels * kernel * kernel, h_out * w_out)


def atrous_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    rate: int,
    padding: int,
    stride: int = 1,
) -> torch.Tensor:
    """2-D atrous convolution as im2col with holes and one matrix product.

    Args:
        x: input (B, C_in, H, W).
        weight: filters (C_out, C_in, k, k).
        bias: (C_out,) or None.
        rate: atrous rate r ("input stride" in the paper; 1 = ordinary convolution).
        padding: zero padding on each side.
        stride: output stride.

    Returns:
        (B, C_out, H_out, W_out), equal to ``F.conv2d(x, weight, bias, stride, padding, rate)``.

    Raises:
        ValueError: on mismatched shapes or a non-square kernel.
    """
    _check(x, weight, 2, rate, stride)
    c_out, _, k, k2 = weight.shape
    if k != k2:
        raise ValueError(f"atrous_conv2d needs a square kernel, got {k}x{k2}")
    batch, _, height, width = x.shape
    span = rate * (k - 1) + 1
    h_out = (height + 2 * padding - span) // stride + 1
    w_out = (width + 2 * padding - span) // stride + 1
    columns = im2col_atrous(x, k, rate=rate, padding=padding, stride=stride)  # (B, C k k, L)
    # $y_o[y, x] = \sum_{c,i,j} w_{o,c}[i, j]\, x_c[y s + i r, x s + j r] + b_o$ as one product:
    # (C_out, C_in k k) @ (B, C_in k k, L) -> (B, C_out, L)
    y = weight.reshape(c_out, -1) @ columns
    if bias is not None:
        y = y + bias[:, None]
    return y.reshape(batch, c_out, h_out, w_out)


def atrous_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    rate: int,
    padding: int,
    stride: int = 1,
) -> torch.Tensor:
    """1-D atrous convolution (the paper's Fig. 1 picture): ``y[i] = sum_k w[k] x[i s + k r]``.

    Args:
        x: input (B, C_in, L).
        weight: filters (C_out, C_in, k).
        bias: (C_out,) or None.
        rate: atrous rate r.
        padding: zero padding on each side.
        stride: output stride.

    Returns:
        (B, C_out, L_out), equal to ``F.conv1d(x, weight, bias, stride, padding, rate)``.
    """
    _check(x, weight, 1, rate, stride)
    c_out, _, k = weight.shape
    x = F.pad(x, (padding, padding))  # (B, C, L + 2p)
    l_out = (x.shape[-1] - rate * (k - 1) - 1) // stride + 1
    if l_out < 1:
        raise ValueError(f"padded input of length {x.shape[-1]} shorter than the dilated kernel")
    # y[i] = sum_{c, j} w[o, c, j] x[c, i s + j r]
    taps = (torch.arange(l_out) * stride)[None, :] + (torch.arange(k) * rate)[:, None]  # (k, L)
    columns = x[:, :, taps.to(x.device)].reshape(x.shape[0], -1, l_out)  # (B, C k, L_out)
    y = weight.reshape(c_out, -1) @ columns  # (B, C_out, L_out)
    return y if bias is None else y + bias[:, None]
