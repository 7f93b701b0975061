"""The fixed network's outputs: class probabilities at an image's full resolution, and for
every image of a data set once (evaluation scores them; the CRF's search and training reuse them
for every trial and step).

For each image: normalise, pad to 513 x 513 (or keep the native size), run the network, upsample
its stride-8 scores bilinearly to the input size (:func:`~deeplab_edu.models.upsample_scores`),
crop the padding away and take the softmax.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

from deeplab_edu.data.sampling import Dataset
from deeplab_edu.data.transforms import EvalTransform, to_hwc
from deeplab_edu.models.deeplab import DeepLab


def predict_probs(
    model: DeepLab, image: torch.Tensor, *, pad_to: int | None, device: torch.device
) -> torch.Tensor:
    """Class probabilities for one image at its full resolution.

    Args:
        model: a DeepLab network with ``predict`` (bilinear upsampling of stride-8 scores).
        image: ``(3, H, W)`` uint8 RGB.
        pad_to: pad to this square size before the network (paper: 513), or ``None``.
        device: where to run.

    Returns:
        ``(C, H, W)`` float probabilities (softmax over classes) on ``device``.
    """
    height, width = image.shape[-2:]
    dummy = torch.zeros(image.shape[-2:], dtype=torch.int64)
    x, _ = EvalTransform(pad_to)(image, dummy)  # (3, H', W') normalised, padded bottom/right
    with torch.no_grad():
        scores = model.predict(x[None].to(device))  # (1, C, H', W')
    return torch.softmax(scores[0, :, :height, :width], dim=0)  # (C, H, W)


def network_outputs(
    model: DeepLab,
    dataset: Dataset,
    indices: Iterable[int] | None = None,
    *,
    pad_to: int | None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Run the fixed network once on each image of ``dataset`` (or those at ``indices``), for
    the CRF's search and training, which then reuse the outputs.

    Yields:
        ``(image (H, W, 3) uint8, probs (C, H, W) on the network's device, target (H, W))``.
    """
    device = next(model.parameters()).device
    model.eval()
    for index in range(len(dataset)) if indices is None else indices:
        image, target = dataset[index]
        yield to_hwc(image), predict_probs(model, image, pad_to=pad_to, device=device), target
