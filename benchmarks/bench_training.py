"""Training throughput of DeepLab-LargeFOV against two references, as ratios measured in one run.

One training step (forward, loss, backward, SGD step with momentum) on random 321x321 crops,
batch 2, for:

- **DeepLab-LargeFOV** as this package trains it (``deeplab_edu.train``'s loss and optimiser);
- **VGG-16 features + a 1x1 classifier** (torchvision's ``vgg16().features`` and one 1x1
  convolution to 21 classes, stride 32): the same convolutions without DeepLab's changes, the
  floor a VGG-based segmenter can reach;
- **torchvision's DeepLabV3-ResNet50** (``deeplabv3_resnet50``, output stride 8, no auxiliary
  head), what a reader would otherwise pick.

For each it prints the forward multiply-adds per image, the step time, the achieved GFLOP/s
(a training step is counted as 3x the forward's FLOPs) and their fraction of this machine's
matrix-multiply speed, measured before and after in the same run. The ratio that matters is
LargeFOV's GFLOP/s against the references': a ratio near 1 means DeepLab's atrous layers run as
efficiently as plain convolutions. It also measures LargeFOV in channels-last memory format and
with oneDNN (``torch.backends.mkldnn``) switched off, to decide those settings by measurement.

    .venv/bin/python benchmarks/bench_training.py [--width W] [--repeats N] [--crop S] [--batch B]

Goals (read from the output): LargeFOV's GFLOP/s at least 0.8x VGG-16 features + 1x1; a setting
is worth adopting only when it is faster by more than the noise between rounds (about 5%).

What was measured with it, and why channels-last was not adopted: the engineering appendix,
"Making the lattice fast: a profiling diary" (book/engineering.ipynb).
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Callable, Iterator

import torch
from torch import nn
from torchvision.models import vgg16
from torchvision.models.segmentation import deeplabv3_resnet50

from deeplab_edu import runtime
from deeplab_edu.data.voc import IGNORE_INDEX, NUM_CLASSES
from deeplab_edu.models import deeplab
from deeplab_edu.models.cost import best_time, matmul_gflops, multiply_adds
from deeplab_edu.train import TrainConfig, make_optimizer, segmentation_loss


class VGGFeaturesClassifier(nn.Module):
    """torchvision's VGG-16 convolutions and a 1x1 classifier: scores at stride 32."""

    def __init__(self) -> None:
        super().__init__()
        self.features = vgg16(weights=None).features
        self.classifier = nn.Conv2d(512, NUM_CLASSES, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class TorchvisionDeepLabV3(nn.Module):
    """torchvision's DeepLabV3-ResNet50 returning its scores as a tensor (full resolution)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = deeplabv3_resnet50(
            weights=None, weights_backbone=None, aux_loss=False, num_classes=NUM_CLASSES
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)["out"]


def training_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, target: torch.Tensor
) -> Callable[[], None]:
    """One step of training with the loss each network trains with: the package's (labels
    subsampled by 8) for DeepLab, cross-entropy at full resolution for DeepLabV3, and against
    labels picked on its grid for the stride-32 reference."""

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        scores = model(x)
        if hasattr(model, "config"):  # a DeepLab of this package
            loss = segmentation_loss(scores, target)
        else:
            labels = target if scores.shape[-2:] == target.shape[-2:] else grid(target, scores)
            loss = nn.functional.cross_entropy(scores, labels, ignore_index=IGNORE_INDEX)
        loss.backward()
        optimizer.step()

    return step


def grid(target: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """The labels nearest to each cell of a coarser score grid."""
    (height, width), (h, w) = target.shape[-2:], scores.shape[-2:]
    rows = torch.linspace(0, height - 1, h, device=target.device).round().long()
    cols = torch.linspace(0, width - 1, w, device=target.device).round().long()
    return target[:, rows][:, :, cols]


@contextlib.contextmanager
def mkldnn(enabled: bool) -> Iterator[None]:
    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = enabled
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--width", type=float, default=1.0, help="DeepLab width (1.0: paper)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--crop", type=int, default=321)
    parser.add_argument("--batch", type=int, default=2)
    args = parser.parse_args()
    device = runtime.device()
    runtime.seed_everything(0)
    print(runtime.describe("random 321x321 crops"))
    print(
        f"crop {args.crop}, batch {args.batch}, best of {args.repeats} steps after a warm-up; "
        f"{torch.get_num_threads()} threads"
    )
    peak = matmul_gflops(device)
    print(f"matrix multiply (1024x1024, float32) before: {peak:.1f} GFLOP/s")

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, args.crop, args.crop, generator=generator).to(device)
    target = torch.randint(
        0, NUM_CLASSES, (args.batch, args.crop, args.crop), generator=generator
    ).to(device)
    config = TrainConfig()

    def largefov() -> nn.Module:
        torch.manual_seed(0)
        return deeplab("DeepLab-LargeFOV", width=args.width).to(device).train()

    def sgd(model: nn.Module) -> torch.optim.Optimizer:
        if hasattr(model, "config"):  # a DeepLab: the package's learning-rate groups
            return make_optimizer(model, config)
        return torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    cases: dict[str, tuple[Callable[[], nn.Module], contextlib.AbstractContextManager, bool]] = {
        "DeepLab-LargeFOV": (largefov, contextlib.nullcontext(), False),
        "VGG-16 features + 1x1": (
            lambda: VGGFeaturesClassifier().to(device).train(),
            contextlib.nullcontext(),
            False,
        ),
        "DeepLabV3-ResNet50 (tv)": (
            lambda: TorchvisionDeepLabV3().to(device).train(),
            contextlib.nullcontext(),
            False,
        ),
        "LargeFOV, channels-last": (largefov, contextlib.nullcontext(), True),
        "LargeFOV, oneDNN off": (largefov, mkldnn(False), False),
    }
    rows = {}
    for name, (build, setting, channels_last) in cases.items():
        began = time.perf_counter()
        model = build()
        macs = multiply_adds(model, args.crop, args.crop)
        inputs = x
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
            inputs = x.contiguous(memory_format=torch.channels_last)
        with setting:
            step = training_step(model, sgd(model), inputs, target)
            seconds = best_time(step, device, args.repeats, grad=True)
        rows[name] = (macs, seconds)
        del model
        print(f"  measured {name} ({time.perf_counter() - began:.0f} s)", flush=True)
    peak = max(peak, matmul_gflops(device))
    print(f"matrix multiply, best of before/after: {peak:.1f} GFLOP/s\n")

    print(
        f"{'network':26s} {'GMAC/img':>9s} {'step s':>7s} {'img/s':>6s} {'GFLOP/s':>8s} "
        f"{'of mm':>6s}"
    )
    gflops = {}
    for name, (macs, seconds) in rows.items():
        gflops[name] = 3 * 2 * macs * args.batch / seconds / 1e9  # forward + backward = 3x
        print(
            f"{name:26s} {macs / 1e9:9.2f} {seconds:7.2f} {args.batch / seconds:6.2f} "
            f"{gflops[name]:8.1f} {gflops[name] / peak:6.2f}"
        )
    ours, vgg = gflops["DeepLab-LargeFOV"], gflops["VGG-16 features + 1x1"]
    print(f"\nLargeFOV GFLOP/s vs VGG-16 features + 1x1: {ours / vgg:.2f}x (goal: >= 0.8x)")
    print(
        f"LargeFOV GFLOP/s vs DeepLabV3-ResNet50:    "
        f"{ours / gflops['DeepLabV3-ResNet50 (tv)']:.2f}x (information)"
    )
    time_ratio = rows["DeepLab-LargeFOV"][1] / rows["DeepLabV3-ResNet50 (tv)"][1]
    print(f"LargeFOV step time vs DeepLabV3-ResNet50:  {time_ratio:.2f}x (below 1: faster)")
    for name in ("LargeFOV, channels-last", "LargeFOV, oneDNN off"):
        speedup = rows["DeepLab-LargeFOV"][1] / rows[name][1]
        verdict = "faster by more than the noise" if speedup > 1.05 else "no gain"
        print(f"{name:26s} speed-up {speedup:.2f}x over the default -> {verdict}")


if __name__ == "__main__":
    main()
