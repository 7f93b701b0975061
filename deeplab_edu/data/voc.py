"""PASCAL VOC 2012: the 21 class names, the colour palette and palette-PNG masks.

This is the only place in the project where class names and colours are defined.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
NUM_CLASSES = len(CLASSES)  # 20 object classes + background
IGNORE_INDEX = 255  # "void": object outlines and ambiguous pixels, ignored by loss and metrics


def _voc_palette() -> np.ndarray:
    """The VOC devkit colour map: the bits of the class index spread over R, G and B."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    for index in range(256):
        label, r, g, b = index, 0, 0, 0
        for shift in range(7, -1, -1):  # bit k of the label goes to bit (7 - k//3) of a channel
            r |= ((label >> 0) & 1) << shift
            g |= ((label >> 1) & 1) << shift
            b |= ((label >> 2) & 1) << shift
            label >>= 3
        palette[index] = (r, g, b)
    return palette


PALETTE: np.ndarray = _voc_palette()  # (256, 3) uint8; row 255 (void) is (224, 224, 192)
PALETTE.setflags(write=False)


def read_mask(path: str | Path) -> np.ndarray:
    """Read a VOC palette PNG as class indices.

    Args:
        path: a PNG in mode ``P`` (palette) or ``L`` whose pixel values are class indices.

    Returns:
        An ``(H, W)`` uint8 array with values in 0..20 and 255 (void).

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: if the file is not a readable single-channel PNG, or holds other values.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mask file not found: {path}")
    try:
        with Image.open(path) as image:
            if image.mode not in ("P", "L"):
                raise ValueError(
                    f"{path}: expected a palette (mode 'P') or grey (mode 'L') PNG of class "
                    f"indices, got mode {image.mode!r}"
                )
            mask = np.array(image, dtype=np.uint8)
    except (OSError, SyntaxError) as error:
        raise ValueError(f"{path}: not a readable PNG mask ({error})") from error
    bad = np.setdiff1d(np.unique(mask), [*range(NUM_CLASSES), IGNORE_INDEX])
    if bad.size:
        raise ValueError(
            f"{path}: expected class indices 0..{NUM_CLASSES - 1} or {IGNORE_INDEX}, "
            f"found {bad.tolist()}"
        )
    return mask


def write_mask(path: str | Path, mask: np.ndarray) -> None:
    """Write class indices as a VOC palette PNG (mode ``P``, the VOC colour map).

    Args:
        path: where to write; parent folders are created.
        mask: ``(H, W)`` integer array with values in 0..20 or 255.

    Raises:
        ValueError: if the array is not 2-D integers in the allowed range.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2 or not np.issubdtype(mask.dtype, np.integer):
        raise ValueError(f"expected an (H, W) integer mask, got shape {mask.shape} {mask.dtype}")
    bad = np.setdiff1d(np.unique(mask), [*range(NUM_CLASSES), IGNORE_INDEX])
    if bad.size:
        raise ValueError(
            f"expected class indices 0..{NUM_CLASSES - 1} or {IGNORE_INDEX}, found {bad.tolist()}"
        )
    image = Image.fromarray(mask.astype(np.uint8), mode="P")
    image.putpalette(PALETTE.flatten().tolist())
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
