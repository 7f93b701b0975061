"""Evaluation: full-image inference, the CRF on every image, VOC scores and the trimap curves.

For each image (paper sections 3-5): normalise, pad to 513 x 513 (or keep the native size),
run the network, upsample its stride-8 scores bilinearly to the input size (cell ``i`` on pixel
``8 i``: :func:`~deeplab_edu.models.upsample_scores`), crop the padding away, take the softmax,
and score the argmax ("DCNN"). The same probabilities are then the unaries of the fully
connected CRF (10 mean-field iterations), whose argmax is scored too ("DCNN + CRF"). Both go
into confusion matrices (mean IoU, per-class IoU, pixel accuracy) and into the boundary-band
("trimap") curves of the paper's Fig. 5.

The CRF runs on the device of the probabilities: on a GPU with our permutohedral lattice, on
the CPU otherwise (PyTorch already spreads each filtering step over the CPU's cores).
"""

from __future__ import annotations

import dataclasses
import os
import platform
import sys
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from tqdm import tqdm

from deeplab_edu import __version__, runtime
from deeplab_edu.crf import CRFParams, MeanFieldCRF, dense_crf
from deeplab_edu.data.sampling import Dataset
from deeplab_edu.data.transforms import to_hwc
from deeplab_edu.data.voc import dataset_classes
from deeplab_edu.inference import predict_probs
from deeplab_edu.metrics import ConfusionMatrix, TrimapCounts
from deeplab_edu.models.deeplab import DeepLab


@dataclass
class EvalConfig(runtime.ModeConfig):
    """How to evaluate; defaults are the paper's (LargeFOV test net, Fig. 5 band widths).

    ``crf=None`` skips the CRF; its :class:`~deeplab_edu.crf.CRFParams` carry the iterations
    and the normalisation too. Fast mode keeps the native image size and uses narrower bands
    (the generated images are about a quarter of a VOC image's side).
    """

    pad_to: int | None = 513
    crf: CRFParams | None = field(default_factory=CRFParams)
    trimap_widths: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 35, 40)
    max_images: int | None = None

    # fast mode: native size, bands up to 20 px
    FAST: ClassVar[dict] = dict(pad_to=None, trimap_widths=(1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20))


@dataclass
class Evaluation:
    """What :func:`evaluate` returns: the JSON-ready ``summary`` and the per-image labels.

    With ``held_out`` given to :func:`evaluate`, ``summary["held_out"]`` holds the mean IoU
    and pixel accuracy of those images alone (the images the CRF was not tuned on).

    ``targets``, ``dcnn`` and ``crf`` map the index of each image :func:`evaluate` was asked to
    ``keep`` to its ``(H, W)`` uint8 label map (``crf`` empty when the CRF was skipped), for
    figures of examples. Everything else is counted on the fly, so memory does not grow with
    the number of images.
    """

    summary: dict
    targets: dict[int, torch.Tensor]
    dcnn: dict[int, torch.Tensor]
    crf: dict[int, torch.Tensor]


def evaluate(
    model: DeepLab,
    dataset: Dataset,
    config: EvalConfig | None = None,
    *,
    held_out: Sequence[int] | None = None,
    keep: Collection[int] = (),
    crf_layer: MeanFieldCRF | None = None,
    progress: bool = True,
) -> Evaluation:
    """Score ``model`` on ``dataset`` without and (unless ``config.crf`` is None) with the CRF.

    Args:
        model: a trained DeepLab network (put in eval mode here).
        dataset: yields ``(uint8 image (3, H, W), int64 target (H, W))`` (no transform).
        config: see :class:`EvalConfig`; default :meth:`EvalConfig.for_mode`.
        held_out: indices of the images not used to tune the CRF, scored a second time on
            their own (``summary["held_out"]``); the paper reports on all of val.
        keep: indices of the images whose label maps to return (for figures).
        crf_layer: a trained :class:`~deeplab_edu.crf.MeanFieldCRF` to apply instead of
            ``dense_crf`` with ``config.crf`` (it has its own weights, compatibilities and
            bandwidths; ``summary["config"]["crf"]`` then records its bandwidths and current
            weights, not its compatibilities).
        progress: show a progress bar.

    Returns:
        An :class:`Evaluation`; its ``summary`` holds mean IoU, pixel accuracy and per-class
        IoU for "dcnn" and "crf", the trimap curves, timings per image, the evaluation config
        and the environment.

    Raises:
        ValueError: for an empty data set.
    """
    config = config or EvalConfig.for_mode()
    if crf_layer is not None:  # the summary records its bandwidths and current weights
        w1, w2 = crf_layer.weights.tolist()
        config = dataclasses.replace(
            config, crf=dataclasses.replace(crf_layer.params, w1=w1, w2=w2)
        )
    if config.max_images is not None and (
        not isinstance(config.max_images, int) or config.max_images < 1
    ):
        raise ValueError(f"max_images must be None or an int >= 1, got {config.max_images!r}")
    count = len(dataset) if config.max_images is None else min(config.max_images, len(dataset))
    if count == 0:
        raise ValueError("the evaluation data set is empty")
    device = next(model.parameters()).device
    model.eval()
    classes = dataset_classes(dataset)  # a folder of your own names its own
    matrices = {m: ConfusionMatrix(len(classes)) for m in ("dcnn", "crf")}
    held = {m: ConfusionMatrix(len(classes)) for m in matrices}
    held_set = set(held_out) if held_out is not None else set()
    trimaps = {m: TrimapCounts(config.trimap_widths, len(classes)) for m in matrices}
    kept: dict[str, dict[int, torch.Tensor]] = {"target": {}, "dcnn": {}, "crf": {}}
    keep = set(keep)
    seconds = {"network": 0.0, "crf": 0.0}
    for index in tqdm(range(count), desc="evaluate", disable=not progress, dynamic_ncols=True):
        image, target = dataset[index]  # (3, H, W) uint8, (H, W) int64
        began = runtime.now(device)
        probs = predict_probs(model, image, pad_to=config.pad_to, device=device)  # (C, H, W)
        seconds["network"] += runtime.now(device) - began
        if probs.shape[0] != len(classes):  # a label map of another class count means nothing
            raise ValueError(
                f"the network predicts {probs.shape[0]} classes but the data set has "
                f"{len(classes)} ({', '.join(classes[:4])}, ...): evaluate a network trained "
                "for them"
            )
        labels = {"dcnn": probs.argmax(0).to(torch.uint8).cpu()}  # (H, W)
        if config.crf is not None:
            began = runtime.now(device)
            rgb = to_hwc(image)  # (H, W, 3) uint8
            if crf_layer is None:
                q = dense_crf(rgb, probs, config.crf)  # (C, H, W)
            else:
                with torch.no_grad():  # log(probs) as the scores: its softmax is probs
                    q = crf_layer(rgb[None].to(device), probs.log()[None])[0]  # (C, H, W)
            seconds["crf"] += runtime.now(device) - began
            labels["crf"] = q.argmax(0).to(torch.uint8).cpu()
        for method, predicted in labels.items():
            matrices[method].update(predicted, target)
            trimaps[method].update(predicted, target)
            if index in held_set:
                held[method].update(predicted, target)
            if index in keep:
                kept[method][index] = predicted
        if index in keep:
            kept["target"][index] = target.to(torch.uint8)
    methods = ["dcnn", "crf"] if config.crf is not None else ["dcnn"]
    summary = {
        "images": count,
        "config": config.to_dict(),
        "miou": {m: matrices[m].miou() for m in methods},
        "pixel_accuracy": {m: matrices[m].pixel_accuracy() for m in methods},
        "iou_per_class": {m: _per_class(matrices[m], classes) for m in methods},
        "trimap": {m: _curves(trimaps[m]) for m in methods},
        "seconds_per_image": {m: seconds["network" if m == "dcnn" else m] / count for m in methods},
        "environment": environment(),
    }
    if held_out is not None:
        summary["held_out"] = {
            "images": len(held_set & set(range(count))),
            "miou": {m: held[m].miou() for m in methods},
            "pixel_accuracy": {m: held[m].pixel_accuracy() for m in methods},
        }
    return Evaluation(summary, kept["target"], kept["dcnn"], kept["crf"])


def _per_class(matrix: ConfusionMatrix, classes: Sequence[str]) -> dict[str, float | None]:
    values = matrix.iou().tolist()  # NaN (absent class) becomes None in JSON
    return {name: (None if v != v else v) for name, v in zip(classes, values, strict=True)}


def _curves(counts: TrimapCounts) -> dict[str, list]:
    curves = counts.curves()
    return {
        "widths": counts.widths,
        "pixel_accuracy": [curves[w]["pixel_accuracy"] for w in counts.widths],
        "miou": [curves[w]["miou"] for w in counts.widths],
    }


def environment() -> dict:
    """Versions and hardware, stored with every result (the mode that ran is in its config)."""
    device = runtime.device()
    return {
        "deeplab_edu": __version__,
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
    }
