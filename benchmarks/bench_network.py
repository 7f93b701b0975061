"""Forward speed of the paper's DeepLab variants on this machine, as ratios measured in one run.

Prints, per variant and input size, images/second and the achieved GFLOP/s as a fraction of
this machine's matrix-multiply GFLOP/s; the LargeFOV vs 7x7 speed-up (the paper: 3.36x in
training on a GPU); and the time of shift-and-stitch vs the atrous network for the same
stride-8 output of VGG-16.

    .venv/bin/python benchmarks/bench_network.py [--width W] [--repeats N]

In fast mode (the default without a GPU) the networks are built at width 0.25 (every channel
count / 4, ~1/16 of the multiply-adds): the ratios, not the absolute speeds, are the point.
"""

from __future__ import annotations

import argparse

import torch

from deeplab_edu import runtime
from deeplab_edu.models import OUTPUT_STRIDE, PAPER_VARIANTS, deeplab, vgg16_fully_convolutional
from deeplab_edu.models.cost import best_time, matmul_gflops, multiply_adds
from deeplab_edu.models.stitch import make_atrous, shift_and_stitch

SIZES = {name: (306, 321) for name in PAPER_VARIANTS} | {"DeepLab-LargeFOV": (306, 321, 513)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--width", type=float, default=0.25 if runtime.fast_mode() else 1.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = runtime.device()
    runtime.seed_everything(0)
    print(runtime.describe("random inputs"))
    print(
        f"width {args.width} (1.0 = the paper's channels), batch 1, best of {args.repeats} rounds"
    )
    peak = matmul_gflops(device, args.repeats)
    print(f"matrix multiply (1024x1024, float32) before the networks: {peak:.1f} GFLOP/s")
    models = {name: deeplab(name, width=args.width).to(device).eval() for name in PAPER_VARIANTS}
    cases = [(name, size) for name in PAPER_VARIANTS for size in SIZES[name]]
    inputs = {size: torch.randn(1, 3, size, size, device=device) for _, size in cases}
    best = dict.fromkeys(cases, float("inf"))
    for _ in range(args.repeats):  # interleaved rounds: a busy moment slows one round, not one case
        for name, size in cases:
            elapsed = best_time(lambda m=models[name], x=inputs[size]: m(x), device, 1)
            best[name, size] = min(best[name, size], elapsed)
    peak = max(peak, matmul_gflops(device, args.repeats))  # the machine's best moment
    print(f"reference: best matrix multiply before/after = {peak:.1f} GFLOP/s (shared CPU)\n")
    print(f"{'variant':18s} {'size':>5s} {'GMAC':>8s} {'img/s':>8s} {'GFLOP/s':>8s} {'of mm':>6s}")
    speed = {}
    for name, size in cases:
        macs = multiply_adds(models[name], size, size)
        gflops = 2 * macs / best[name, size] / 1e9
        speed[name, size] = 1 / best[name, size]
        print(
            f"{name:18s} {size:5d} {macs / 1e9:8.2f} {speed[name, size]:8.2f} {gflops:8.1f} "
            f"{gflops / peak:6.2f}"
        )
    del models
    ratio = speed["DeepLab-LargeFOV", 321] / speed["DeepLab-7x7", 321]
    print(f"\nLargeFOV vs 7x7 forward speed-up at 321: {ratio:.2f}x (paper, training: 3.36x)")

    # the same stride-8 scores two ways from VGG-16 (stride 32): 16 shifted passes vs 1 pass
    vgg = vgg16_fully_convolutional(width=args.width).to(device).eval().as_sequential()
    atrous = make_atrous(vgg, OUTPUT_STRIDE)
    x = torch.randn(1, 3, 321, 321, device=device)
    stitch_time = best_time(lambda: shift_and_stitch(vgg, x, stride=32, factor=4), device, 1)
    atrous_time = best_time(lambda: atrous(x), device, args.repeats)
    print(
        f"stride-8 VGG-16 scores at 321: shift-and-stitch {stitch_time:.2f} s, atrous "
        f"{atrous_time:.2f} s -> atrous is {stitch_time / atrous_time:.2f}x faster"
    )


if __name__ == "__main__":
    main()
