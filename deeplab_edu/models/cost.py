"""What a network costs: multiply-adds of a forward pass, counted without computing anything.

The count runs the network on PyTorch's "meta" device (shapes only) and adds, for every
convolution, ``outputs x C_in / groups x k_h x k_w`` multiply-adds. Poolings, ReLUs and the bias
additions are ignored (they are a few per cent at most).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from deeplab_edu import runtime


def multiply_adds(model: nn.Module, height: int, width: int, *, batch: int = 1) -> int:
    """Multiply-adds of ``model``'s convolutions for a (batch, 3, height, width) input.

    Args:
        model: any network of convolutions (its parameters are not touched).
        height, width: the input size.
        batch: images per pass.

    Returns:
        The number of multiply-adds (a FLOP count is twice this).
    """
    meta = copy.deepcopy(model).to("meta")
    total = 0

    def count(module: nn.Conv2d, _inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        k_h, k_w = module.kernel_size
        total += output.numel() * (module.in_channels // module.groups) * k_h * k_w

    hooks = [m.register_forward_hook(count) for m in meta.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            meta.eval()(torch.empty(batch, 3, height, width, device="meta"))
    finally:
        for hook in hooks:
            hook.remove()
    return total


def best_time(
    fn: Callable[[], object], device: torch.device, repeats: int = 3, *, grad: bool = False
) -> float:
    """Best-of-``repeats`` wall time of ``fn()`` in seconds, after one warm-up call, without
    autograd unless ``grad`` (a training step); CUDA work is synchronised so that the time
    includes it."""

    with torch.enable_grad() if grad else torch.no_grad():
        fn()
        best = float("inf")
        for _ in range(max(1, repeats)):
            start = runtime.now(device)
            fn()
            best = min(best, runtime.now(device) - start)
    return best


def matmul_gflops(device: torch.device, repeats: int = 5, n: int = 1024) -> float:
    """This machine's float32 matrix-multiply speed in GFLOP/s (2 n^3 FLOPs per product), the
    reference the benchmarks divide a network's achieved GFLOP/s by."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    return 2 * n**3 / best_time(lambda: a @ b, device, max(repeats, 5)) / 1e9
