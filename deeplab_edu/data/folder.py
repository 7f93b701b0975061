"""A data set of your own: a folder of images and masks, in the plainest layout.

    my-data/
        classes.txt       one class name per line, in index order ("background" first, say)
        images/NAME.jpg   (or .jpeg, .png) the photographs
        masks/NAME.png    one mask per image, same name and size: palette or grey-level PNGs
                          whose pixel values are class indices, 255 for void (not scored)
        train.txt         optional: the names of the training images, one per line
        val.txt           optional: the names of the validation images

Without the two lists, every :data:`VAL_EVERY`-th image in name order is validation and the
rest train (nothing is written into the folder). A folder in VOC's own layout
(``JPEGImages/``, ``SegmentationClass/``, ``ImageSets/Segmentation/``) works too, with a
``classes.txt`` when its classes are not VOC's (:class:`~deeplab_edu.data.voc.VOCSegmentation`).
Every problem is reported with the file it concerns: an image without a mask, a mask of
another size, an index beyond the class count, a list naming a missing image.
"""

from __future__ import annotations

from pathlib import Path

from deeplab_edu.data.voc import CLASS_FILE, PairedImages, Transform, read_classes, read_ids

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
VAL_EVERY = 5  # without lists, images 4, 9, 14, ... (in name order) are validation: 20%
SPLITS = ("train", "val")


def _by_name(folder: Path, suffixes: tuple[str, ...]) -> dict[str, Path]:
    """The files of ``folder`` with one of ``suffixes``, by name without the suffix.

    Raises:
        ValueError: for two files of one name (``a.jpg`` and ``a.png``).
    """
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in suffixes:
            if path.stem in found:
                raise ValueError(
                    f"{found[path.stem].name} and {path.name} in {folder} have the same name: "
                    "expected one file per image"
                )
            found[path.stem] = path
    return found


class SegmentationFolder(PairedImages):
    """The ``images/`` + ``masks/`` folder of the module docstring, one split of it.

    ``ds[i]`` returns ``(image, target)`` as :class:`~deeplab_edu.data.voc.VOCSegmentation`
    does: a ``(3, H, W)`` uint8 RGB tensor and an ``(H, W)`` int64 tensor of class indices
    (0..len(classes)-1) and 255 (void), through ``transform`` if one is given.

    Attributes:
        root: the folder.
        split: "train" or "val".
        classes: the names in ``classes.txt``.
        ids: the image names of the split.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        *,
        transform: Transform | None = None,
    ) -> None:
        """
        Raises:
            FileNotFoundError: for a missing folder, ``images/``, ``masks/`` or ``classes.txt``.
            ValueError: for an unknown split, images and masks that do not pair up, or a list
                naming an image that is not there.
        """
        self.root, self.split, self.transform = Path(root), split, transform
        for needed in (self.root / "images", self.root / "masks"):
            if not needed.is_dir():
                raise FileNotFoundError(
                    f"{needed} not found: a data set of your own holds images/, masks/ and "
                    f"{CLASS_FILE} (see deeplab_edu.data.folder)"
                )
        classes = read_classes(self.root)
        if classes is None:
            raise FileNotFoundError(
                f"{self.root / CLASS_FILE} not found: expected the class names, one per line, "
                "in the order of their indices in the masks"
            )
        self.classes: tuple[str, ...] = classes
        if split not in SPLITS:
            raise ValueError(f"a folder of your own has the splits {SPLITS}, got {split!r}")
        self.images = _by_name(self.root / "images", IMAGE_SUFFIXES)
        self.masks = _by_name(self.root / "masks", (".png",))
        unpaired = sorted(self.images.keys() ^ self.masks.keys())
        if unpaired:
            lonely = [
                f"{self.images[n].name} (no mask)" if n in self.images else f"{n}.png (no image)"
                for n in unpaired[:5]
            ]
            more = f" and {len(unpaired) - 5} more" if len(unpaired) > 5 else ""
            raise ValueError(
                f"{self.root}: every image needs a mask of the same name in masks/ and every "
                f"mask an image: {', '.join(lonely)}{more}"
            )
        if not self.images:
            raise ValueError(f"{self.root / 'images'} holds no .jpg, .jpeg or .png image")
        self.ids: list[str] = self._split_ids()
        if not self.ids:
            raise ValueError(f"the {split} split of {self.root} is empty")

    def _split_ids(self) -> list[str]:
        lists = {name: self.root / f"{name}.txt" for name in SPLITS}
        if not any(path.is_file() for path in lists.values()):
            names = sorted(self.images)
            is_val = [(i + 1) % VAL_EVERY == 0 for i in range(len(names))]
            return [n for n, val in zip(names, is_val, strict=True) if val == (self.split == "val")]
        if not lists[self.split].is_file():
            raise FileNotFoundError(f"{lists[self.split]} not found (the other split has a list)")
        ids = read_ids(lists[self.split])
        missing = [name for name in ids if name not in self.images]
        if missing:
            raise ValueError(f"{lists[self.split]} names images not in images/: {missing[:5]}")
        return ids

    def image_path(self, index: int) -> Path:
        return self.images[self.ids[index]]

    def mask_path(self, index: int) -> Path:
        return self.masks[self.ids[index]]

    def __repr__(self) -> str:
        return f"SegmentationFolder({str(self.root)!r}, {self.split!r}, {len(self)} images)"
