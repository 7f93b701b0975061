"""PASCAL VOC 2012: the 21 class names, the colour palette, palette-PNG masks and the data set.

This is the only place in the project where class names and colours are defined. A data set
of your own names its classes in a ``classes.txt`` beside its images (:func:`read_classes`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Subset

CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)
NUM_CLASSES = len(CLASSES)  # 20 object classes + background
IGNORE_INDEX = 255  # "void": object outlines and ambiguous pixels, ignored by loss and metrics
CLASS_FILE = "classes.txt"  # a data set's class names, one per line, in index order
# what a data set may apply to each (image, target) pair, e.g. TrainTransform
Transform = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


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


def read_classes(folder: str | Path) -> tuple[str, ...] | None:
    """The class names a data set folder lists in its ``classes.txt``, or None without one.

    One name per line, in the order of their indices in the masks (blank lines and a UTF-8 BOM
    are ignored); at least 2 and at most 255 classes, since index 255 is void.

    Raises:
        ValueError: for a repeated name, or too few or too many classes (naming the file).
    """
    path = Path(folder) / CLASS_FILE
    if not path.is_file():
        return None
    names = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines()]
    names = [name for name in names if name]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"{path}: every class needs its own name; repeated: {repeated}")
    if not 2 <= len(names) <= IGNORE_INDEX:
        raise ValueError(
            f"{path}: expected 2 to {IGNORE_INDEX} class names (one per line, index 255 is "
            f"void), got {len(names)}"
        )
    return tuple(names)


def dataset_classes(dataset: object) -> tuple[str, ...]:
    """The class names of a data set (through ``Subset``s): its ``classes``, else VOC's."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return tuple(getattr(dataset, "classes", CLASSES))


def read_mask(path: str | Path, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Read a palette (VOC) or grey-level PNG as class indices.

    Args:
        path: a PNG in mode ``P`` (palette) or ``L`` whose pixel values are class indices.
        num_classes: the data set's class count (21 for VOC).

    Returns:
        An ``(H, W)`` uint8 array with values in 0..num_classes-1 and 255 (void).

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
    except (OSError, SyntaxError, Image.DecompressionBombError) as error:
        raise ValueError(f"{path}: not a readable PNG mask ({error})") from error
    bad = np.setdiff1d(np.unique(mask), [*range(num_classes), IGNORE_INDEX])
    if bad.size:
        raise ValueError(
            f"{path}: expected class indices 0..{num_classes - 1} or {IGNORE_INDEX}, "
            f"found {bad.tolist()}"
        )
    return mask


def write_mask(path: str | Path, mask: np.ndarray, num_classes: int = NUM_CLASSES) -> None:
    """Write class indices as a VOC palette PNG (mode ``P``, the VOC colour map).

    Args:
        path: where to write; parent folders are created.
        mask: ``(H, W)`` integer array with values in 0..num_classes-1 or 255.
        num_classes: the data set's class count (21 for VOC).

    Raises:
        ValueError: if the array is not 2-D integers in the allowed range.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2 or not np.issubdtype(mask.dtype, np.integer):
        raise ValueError(f"expected an (H, W) integer mask, got shape {mask.shape} {mask.dtype}")
    bad = np.setdiff1d(np.unique(mask), [*range(num_classes), IGNORE_INDEX])
    if bad.size:
        raise ValueError(
            f"expected class indices 0..{num_classes - 1} or {IGNORE_INDEX}, found {bad.tolist()}"
        )
    image = Image.fromarray(mask.astype(np.uint8), mode="P")
    image.putpalette(PALETTE.flatten().tolist())
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def read_image(path: str | Path) -> torch.Tensor:
    """Read a photograph as an RGB uint8 tensor.

    Args:
        path: a JPEG or PNG file.

    Returns:
        A ``(3, H, W)`` uint8 tensor, channels in RGB order.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: if the file is not a readable image (the message names the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as image:
            array = _rgb8(image, path)  # (H, W, 3)
    except ImageModeError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ValueError(f"{path}: not a readable image, corrupt or truncated ({error})") from error
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()  # (3, H, W)


class ImageModeError(ValueError):
    """An image read correctly whose pixel format has no faithful 8-bit RGB form."""


_SIXTEEN_BIT = ("I", "I;16", "I;16B", "I;16L", "I;16N")  # Pillow's modes of 16-bit grey PNGs


def _rgb8(image: Image.Image, path: Path) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB of an opened image. Pillow's ``convert("RGB")`` clips a 16-bit
    grey image to 255 (all white) and a float one to its integer part (all black for values in
    0..1): 16-bit grey is scaled to 8 bits here, and a float image, which has no fixed range,
    is refused.

    Raises:
        ImageModeError: for a float image, or grey values outside 0..65535 (naming the file).
    """
    if image.mode == "F":
        raise ImageModeError(
            f"{path}: a floating-point image (mode F) has no fixed range; save it as an 8-bit "
            "(or 16-bit) image"
        )
    if image.mode in _SIXTEEN_BIT:
        values = np.asarray(image, dtype=np.int64)  # (H, W)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise ImageModeError(
                f"{path}: a {image.mode} image with values outside 0..65535; expected an 8-bit "
                "or 16-bit image"
            )
        grey = np.round(values * (255 / 65535)).astype(np.uint8)  # 65535 -> 255
        return np.repeat(grey[..., None], 3, axis=2)
    return np.array(image.convert("RGB"), dtype=np.uint8)


_HOW_TO_GET_VOC = (
    "Full mode needs PASCAL VOC 2012 (and SBD for train_aug): call "
    "`deeplab_edu.data.download.prepare_voc()` (downloads both, builds train_aug), or "
    "unpack VOCtrainval_11-May-2012.tar yourself and set DEEPLAB_EDU_VOC to its VOC2012 "
    "folder (or DEEPLAB_EDU_DATA to a folder holding VOCdevkit/VOC2012). Fast mode uses the "
    "generated teaching set instead (`deeplab_edu.data.toy.ensure_toy_voc()`)."
)


_ID = re.compile(r"^[A-Za-z0-9_.-]+$")  # VOC ids: 2007_000032, toy_train_00001, ...


def read_ids(list_file: Path) -> list[str]:
    """The image ids of a split list: one per line (a UTF-8 BOM and blank lines are ignored).

    Raises:
        ValueError: for a line that is not one plain id (a second column, a path, ``..``).
    """
    ids = []
    for number, line in enumerate(list_file.read_text(encoding="utf-8-sig").splitlines(), 1):
        image_id = line.strip()
        if not image_id:
            continue
        if not _ID.match(image_id) or image_id in (".", ".."):
            raise ValueError(
                f"{list_file}, line {number}: expected one image id (letters, digits, '_', '-', "
                f"'.'), got {line!r}"
            )
        ids.append(image_id)
    return ids


def read_pair(
    image_path: Path, mask_path: Path, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """An image ``(3, H, W)`` uint8 and its mask ``(H, W)`` int64, checked to be the same size.

    Raises:
        ValueError: for sizes that differ (naming both files), or a mask index beyond the class
            count (:func:`read_mask`).
    """
    image = read_image(image_path)  # (3, H, W) uint8
    target = torch.from_numpy(read_mask(mask_path, num_classes).astype(np.int64))  # (H, W)
    if image.shape[1:] != target.shape:
        raise ValueError(
            f"image {image_path} is {tuple(image.shape[1:])} (H, W) but its mask "
            f"{mask_path} is {tuple(target.shape)}: they must be the same size"
        )
    return image, target


class PairedImages(Dataset):
    """A segmentation data set on disk: ``ids``, ``classes``, the files of each id
    (``image_path`` / ``mask_path``), and an optional ``transform``. ``ds[i]`` returns
    ``(image, target)``: without a transform, a ``(3, H, W)`` uint8 RGB tensor and an
    ``(H, W)`` int64 tensor of class indices and 255 (void), read by :func:`read_pair`."""

    ids: list[str]
    classes: tuple[str, ...]
    transform: Transform | None
    image_path: Callable[[int], Path]  # defined by each layout (a method)
    mask_path: Callable[[int], Path]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, target = read_pair(self.image_path(index), self.mask_path(index), len(self.classes))
        if self.transform is not None:
            image, target = self.transform(image, target)
        return image, target


class VOCSegmentation(PairedImages):
    """A VOC-format segmentation set: PASCAL VOC 2012, the augmented ``train_aug`` list, the
    generated teaching set, or ``../shared/voc-sample``; all share one on-disk layout.

    ``voc_dir`` directly holds ``JPEGImages/<id>.jpg``, ``SegmentationClass/<id>.png`` and
    ``ImageSets/Segmentation/<split>.txt``. The split ``train_aug`` reads its masks from
    ``SegmentationClassAug/`` (written by :func:`deeplab_edu.data.sbd.build_train_aug`), whose
    SBD masks have no void band. (torchvision's own ``VOCSegmentation`` insists on a
    ``VOCdevkit/VOC2012`` parent and returns PIL images, so we read the folders directly.)

    ``ds[i]`` returns ``(image, target)``: without a transform, a ``(3, H, W)`` uint8 RGB tensor
    and an ``(H, W)`` int64 tensor of class indices 0..20 and 255 (void). A folder of your own
    in this layout may name other classes in a ``classes.txt`` (:func:`read_classes`):
    :attr:`classes` holds them (VOC's 21 without the file).
    """

    def __init__(
        self,
        voc_dir: str | Path,
        split: str,
        *,
        transform: Transform | None = None,
    ) -> None:
        """
        Args:
            voc_dir: the folder holding ``JPEGImages``, ``SegmentationClass``, ``ImageSets``.
            split: the name of a list in ``ImageSets/Segmentation`` (``train``, ``val``,
                ``train_aug``, ...).
            transform: optional ``(image, target) -> (image, target)`` callable, e.g.
                :class:`~deeplab_edu.data.transforms.TrainTransform`.

        Raises:
            FileNotFoundError: if the folder or the split list is missing (says how to get it).
            ValueError: if the split list is empty.
        """
        self.voc_dir = Path(voc_dir)
        self.split = split
        self.transform = transform
        if not self.voc_dir.is_dir():
            raise FileNotFoundError(
                f"VOC folder not found: {self.voc_dir} (expected a folder holding JPEGImages/, "
                f"SegmentationClass/ and ImageSets/Segmentation/). {_HOW_TO_GET_VOC}"
            )
        list_file = self.voc_dir / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not list_file.is_file():
            found = sorted(p.stem for p in list_file.parent.glob("*.txt"))
            hint = (
                " The train_aug list is built from SBD by "
                "`deeplab_edu.data.sbd.build_train_aug(voc_dir, sbd_dir)`."
                if split == "train_aug"
                else ""
            )
            raise FileNotFoundError(
                f"split list not found: {list_file} (splits present: {found or 'none'}).{hint} "
                f"{_HOW_TO_GET_VOC}"
            )
        self.ids: list[str] = read_ids(list_file)
        if not self.ids:
            raise ValueError(f"split list {list_file} is empty: expected one image id per line")
        self.mask_dir = self.voc_dir / (
            "SegmentationClassAug" if split == "train_aug" else "SegmentationClass"
        )
        self.classes: tuple[str, ...] = read_classes(self.voc_dir) or CLASSES

    def image_path(self, index: int) -> Path:
        """The JPEG of item ``index``."""
        return self.voc_dir / "JPEGImages" / f"{self.ids[index]}.jpg"

    def mask_path(self, index: int) -> Path:
        """The palette PNG of item ``index``."""
        return self.mask_dir / f"{self.ids[index]}.png"

    def __repr__(self) -> str:
        return f"VOCSegmentation({str(self.voc_dir)!r}, {self.split!r}, {len(self)} images)"
