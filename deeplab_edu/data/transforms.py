"""The paper's preprocessing: normalisation, random 321x321 crops and flips, padding to 513,
and the ground truth subsampled by 8 to match the network's output cells.

Every transform takes and returns ``(image, target)``: a ``(3, H, W)`` uint8 RGB image and an
``(H, W)`` int64 mask in, a normalised float image and an int64 mask out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from deeplab_edu.data.voc import IGNORE_INDEX
from deeplab_edu.models.field import OUTPUT_STRIDE

# The one normalisation of the project. Our VGG-16 weights are torchvision's IMAGENET1K_V1,
# trained on RGB in [0, 1] normalised with these ImageNet statistics. (The paper's Caffe model
# instead subtracted the BGR means 104.008, 116.669, 122.675 from 0..255 pixels: a different
# set of weights, so a different normalisation.)
MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def _check_image(image: torch.Tensor) -> None:
    if not isinstance(image, torch.Tensor) or image.dtype != torch.uint8:
        got = image.dtype if isinstance(image, torch.Tensor) else type(image).__name__
        raise TypeError(f"expected a uint8 image tensor (values 0..255), got {got}")
    if image.ndim not in (3, 4) or image.shape[-3] != 3:
        raise ValueError(
            f"expected an RGB image (3, H, W) or (B, 3, H, W), got {tuple(image.shape)}"
        )


def _check_pair(image: torch.Tensor, target: torch.Tensor) -> None:
    _check_image(image)
    if image.ndim != 3:
        raise ValueError(f"expected one image (3, H, W), got {tuple(image.shape)}")
    if target.dtype.is_floating_point or target.dtype == torch.bool:
        raise TypeError(f"expected an integer mask of class indices, got {target.dtype}")
    if target.shape != image.shape[1:]:
        raise ValueError(
            f"image is {tuple(image.shape[1:])} (H, W) but mask is {tuple(target.shape)}: "
            "they must be the same size"
        )


def normalize(image: torch.Tensor) -> torch.Tensor:
    """uint8 RGB to the float input the network expects.

    Args:
        image: ``(3, H, W)`` or ``(B, 3, H, W)`` uint8 RGB.

    Returns:
        A float32 tensor of the same shape, ``(image / 255 - MEAN) / STD``.

    Raises:
        TypeError, ValueError: if the image is not uint8 with 3 channels.
    """
    _check_image(image)
    mean = torch.tensor(MEAN, device=image.device).view(3, 1, 1)
    std = torch.tensor(STD, device=image.device).view(3, 1, 1)
    return (image.float() / 255.0 - mean) / std


def denormalize(image: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`normalize`: float ``(B?, 3, H, W)`` back to uint8 RGB (rounded)."""
    if image.ndim not in (3, 4) or image.shape[-3] != 3 or not image.is_floating_point():
        raise ValueError(
            f"expected a float image (3, H, W) or (B, 3, H, W), got {tuple(image.shape)} "
            f"{image.dtype}"
        )
    mean = torch.tensor(MEAN, device=image.device).view(3, 1, 1)
    std = torch.tensor(STD, device=image.device).view(3, 1, 1)
    return ((image * std + mean) * 255.0).round().clamp(0, 255).to(torch.uint8)


def pad_to(
    image: torch.Tensor, target: torch.Tensor, height: int, width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad a normalised image with 0 (the mean colour) and its mask with 255 (void), at the
    bottom and right, up to at least ``height`` x ``width``."""
    pad_h, pad_w = max(height - image.shape[-2], 0), max(width - image.shape[-1], 0)
    if pad_h == 0 and pad_w == 0:
        return image, target
    image = F.pad(image, (0, pad_w, 0, pad_h), value=0.0)  # 0 after normalisation = the mean
    target = F.pad(target, (0, pad_w, 0, pad_h), value=IGNORE_INDEX)
    return image, target


class TrainTransform:
    """The paper's training augmentation: optional random scaling, random ``crop`` x ``crop``
    crop (padding first with the mean colour and void labels when the image is smaller), and a
    random horizontal flip. Randomness comes from ``generator`` if given, else from torch's
    global generator (seed it with :func:`deeplab_edu.runtime.seed_everything`).

    Args:
        crop: side of the square crop (paper, LargeFOV: 321).
        flip: flip left-right with probability 1/2.
        scale: ``(low, high)`` range of a random rescaling factor, or ``None`` (paper: none).
        generator: an optional ``torch.Generator``.
    """

    def __init__(
        self,
        crop: int = 321,
        flip: bool = True,
        scale: tuple[float, float] | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        if not isinstance(crop, int) or crop < 1:
            raise ValueError(f"crop must be a positive int, got {crop!r}")
        if scale is not None and not (0 < scale[0] <= scale[1]):
            raise ValueError(f"scale must be (low, high) with 0 < low <= high, got {scale!r}")
        self.crop, self.flip, self.scale, self.generator = crop, flip, scale, generator

    def _uniform(self) -> float:
        return float(torch.rand((), generator=self.generator))

    def __call__(
        self, image: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        _check_pair(image, target)
        x, y = normalize(image), target.long()  # (3, H, W) float, (H, W) int64
        if self.scale is not None:
            low, high = self.scale
            factor = low + (high - low) * self._uniform()
            size = [max(1, round(s * factor)) for s in y.shape]
            x = F.interpolate(x[None], size=size, mode="bilinear", align_corners=False)[0]
            # labels are categories: nearest neighbour, never interpolated
            y = F.interpolate(y[None, None].float(), size=size, mode="nearest")[0, 0].long()
        x, y = pad_to(x, y, self.crop, self.crop)
        top = int(torch.randint(0, y.shape[0] - self.crop + 1, (), generator=self.generator))
        left = int(torch.randint(0, y.shape[1] - self.crop + 1, (), generator=self.generator))
        x = x[:, top : top + self.crop, left : left + self.crop]  # (3, crop, crop)
        y = y[top : top + self.crop, left : left + self.crop]  # (crop, crop)
        if self.flip and self._uniform() < 0.5:
            x, y = x.flip(-1), y.flip(-1)
        return x.contiguous(), y.contiguous()

    def __repr__(self) -> str:
        return f"TrainTransform(crop={self.crop}, flip={self.flip}, scale={self.scale})"


class EvalTransform:
    """Evaluation preprocessing: normalise, then pad (bottom/right, mean colour and void) to
    ``pad_to`` x ``pad_to`` as the paper's LargeFOV test net does (513), or keep the native
    size with ``pad_to=None``. The padded pixels are void, so metrics never score them.

    Raises (when called):
        ValueError: if the image is larger than ``pad_to``.
    """

    def __init__(self, pad_to: int | None = 513) -> None:
        if pad_to is not None and (not isinstance(pad_to, int) or pad_to < 1):
            raise ValueError(f"pad_to must be a positive int or None, got {pad_to!r}")
        self.pad_to = pad_to

    def __call__(
        self, image: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        _check_pair(image, target)
        x, y = normalize(image), target.long()
        if self.pad_to is None:
            return x, y
        if max(y.shape) > self.pad_to:
            raise ValueError(
                f"image is {tuple(y.shape)} (H, W), larger than pad_to={self.pad_to}; "
                "use a larger pad_to or pad_to=None"
            )
        return pad_to(x, y, self.pad_to, self.pad_to)

    def __repr__(self) -> str:
        return f"EvalTransform(pad_to={self.pad_to})"


def to_hwc(image: torch.Tensor) -> torch.Tensor:
    """A channels-first ``(3, H, W)`` image as the ``(H, W, 3)`` layout the CRF and plots use
    (contiguous; same dtype and device)."""
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"expected a channels-first (3, H, W) image, got {tuple(image.shape)}")
    return image.permute(1, 2, 0).contiguous()  # (H, W, 3)


def subsample_labels(
    target: torch.Tensor, stride: int | None = None, offset: int = 0
) -> torch.Tensor:
    """The ground truth at the network's output resolution, for the paper's loss.

    Alignment: output cell ``i`` of a stride-8 DeepLab with 3x3 poolings (padding 1) and "same"
    convolutions is centred on input pixel ``8 i``, so its label is ``target[8 i, 8 j]``: we
    pick one pixel per cell, never average or vote, so labels stay valid class indices and a
    void pixel at a cell centre stays void. An ``H``-pixel side gives ``(H - 1) // 8 + 1`` cells
    (321 -> 41, 513 -> 65), the size the network produces; at test time
    :func:`~deeplab_edu.models.upsample_scores` maps cell ``i`` back onto pixel ``8 i``. The
    plain DeepLab's released 2x2 poolings centre cell ``i`` at ``8 i + 0.5``; its release takes
    the label of pixel ``8 i + 1`` (``offset=1``, :attr:`~deeplab_edu.models.DeepLab.label_offset`;
    306 -> 39 cells).

    Args:
        target: ``(B, H, W)`` or ``(H, W)`` integer labels.
        stride: the output stride; ``None`` means DeepLab's
            :data:`~deeplab_edu.models.OUTPUT_STRIDE` (8, the paper's).
        offset: the pixel cell 0 takes its label from (0 to ``stride - 1``).

    Returns:
        ``(B, (H - 1 - offset) // stride + 1, (W - 1 - offset) // stride + 1)`` (or without
        ``B``), same dtype.

    Raises:
        TypeError: if ``target`` is not an integer tensor.
        ValueError: if it is not 2-D or 3-D, ``stride`` is not a positive int, or ``offset`` is
            outside ``[0, stride)``.
    """
    if not isinstance(target, torch.Tensor) or target.dtype.is_floating_point:
        got = target.dtype if isinstance(target, torch.Tensor) else type(target).__name__
        raise TypeError(f"expected an integer label tensor, got {got}")
    if target.ndim not in (2, 3):
        raise ValueError(f"expected labels (B, H, W) or (H, W), got {tuple(target.shape)}")
    stride = OUTPUT_STRIDE if stride is None else stride
    if not isinstance(stride, int) or stride < 1:
        raise ValueError(f"stride must be a positive int, got {stride!r}")
    if not isinstance(offset, int) or not 0 <= offset < stride:
        raise ValueError(f"offset must be an int in [0, {stride - 1}], got {offset!r}")
    if min(target.shape[-2:]) <= offset:
        raise ValueError(f"labels of size {tuple(target.shape[-2:])} have no pixel {offset}")
    return target[..., offset::stride, offset::stride].contiguous()  # (B, h, w): the cells' pixels
