"""Confusion-matrix accumulation, ours against torchmetrics, measured in the same run.

20 label maps of 513 x 513 (the paper's padded test size) with 21 classes and a void band,
accumulated image by image as an evaluation loop does. Prints each time (best of several
repeats) and the ratio torchmetrics / ours (> 1 means ours is faster).

Run: .venv/bin/python benchmarks/bench_metrics.py
"""

from __future__ import annotations

import torch
from torchmetrics.classification import MulticlassConfusionMatrix, MulticlassJaccardIndex

from deeplab_edu import runtime
from deeplab_edu.data.voc import IGNORE_INDEX, NUM_CLASSES
from deeplab_edu.metrics import ConfusionMatrix

IMAGES, SIZE, REPEATS = 20, 513, 5


def make_data(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    target = torch.randint(0, NUM_CLASSES, (IMAGES, SIZE, SIZE), generator=generator)
    target[torch.rand(target.shape, generator=generator) < 0.05] = IGNORE_INDEX
    noise = torch.randint(0, NUM_CLASSES, target.shape, generator=generator)
    keep = torch.rand(target.shape, generator=generator) < 0.7
    pred = torch.where(keep & (target != IGNORE_INDEX), target, noise)
    return pred.to(device), target.to(device)


def best_time(run, device: torch.device) -> float:
    times = []
    for _ in range(REPEATS):
        start = runtime.now(device)
        run()
        times.append(runtime.now(device) - start)
    return min(times)


def main() -> None:
    device = runtime.device()
    pred, target = make_data(device)

    def ours() -> float:
        cm = ConfusionMatrix(NUM_CLASSES, IGNORE_INDEX)
        for p, t in zip(pred, target, strict=True):
            cm.update(p, t)
        return cm.miou()

    def reference(metric_class) -> float:
        metric = metric_class(NUM_CLASSES, ignore_index=IGNORE_INDEX).to(device)
        for p, t in zip(pred, target, strict=True):
            metric.update(p, t)
        return metric.compute()

    miou = ours()
    jaccard = float(reference(MulticlassJaccardIndex))
    assert abs(miou - jaccard) < 1e-6, (miou, jaccard)  # same numbers before comparing speed
    t_ours = best_time(ours, device)
    t_confusion = best_time(lambda: reference(MulticlassConfusionMatrix), device)
    t_jaccard = best_time(lambda: reference(MulticlassJaccardIndex), device)
    print(f"device {device}, {IMAGES} images of {SIZE}x{SIZE}, {NUM_CLASSES} classes")
    print(f"mIoU: ours {miou:.6f}, torchmetrics {jaccard:.6f}")
    print(f"ours (ConfusionMatrix.update)             {t_ours * 1e3:8.1f} ms")
    print(f"torchmetrics MulticlassConfusionMatrix    {t_confusion * 1e3:8.1f} ms")
    print(f"torchmetrics MulticlassJaccardIndex       {t_jaccard * 1e3:8.1f} ms")
    print(
        f"ratio torchmetrics / ours: confusion matrix {t_confusion / t_ours:.2f}x, "
        f"Jaccard index {t_jaccard / t_ours:.2f}x (> 1: ours is faster)"
    )


if __name__ == "__main__":
    main()
