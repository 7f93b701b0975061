"""PASCAL VOC 2012 (+ SBD) and the generated teaching set in the same on-disk format, and
folders of your own (:mod:`deeplab_edu.data.folder`); :func:`open_dataset` opens any of them."""

from __future__ import annotations

import os
from pathlib import Path

from deeplab_edu import runtime
from deeplab_edu.data.folder import SegmentationFolder
from deeplab_edu.data.toy import ensure_toy_voc, make_toy_voc
from deeplab_edu.data.voc import (
    PairedImages,
    CLASSES,
    IGNORE_INDEX,
    NUM_CLASSES,
    PALETTE,
    VOCSegmentation,
    read_image,
    read_mask,
    write_mask,
)

VOC_ENV = "DEEPLAB_EDU_VOC"  # points at an existing VOC2012 folder (a local copy)
PHOTOS_DIR = Path(__file__).parent / "photos"  # eight real VOC photos, shipped with the package
PHOTOS_SPLIT = "photos"
TOY_NAME = "generated teaching set (toy-voc)"
VOC_NAME = "PASCAL VOC 2012"


def _voc_location() -> Path:
    """Where full mode looks for VOC 2012: ``$DEEPLAB_EDU_VOC`` if set, else
    ``runtime.data_root() / "VOCdevkit" / "VOC2012"`` (where the download code unpacks it)."""
    raw = os.environ.get(VOC_ENV)
    if raw:
        return Path(raw).expanduser().resolve()
    return runtime.data_root() / "VOCdevkit" / "VOC2012"


def voc_dir(name: str = "voc") -> Path:
    """The folder of data set ``name``, in the VOC on-disk format.

    Args:
        name: ``"toy"`` (the generated teaching set, made on first use), ``"photos"`` (the
            eight real VOC photos shipped with the package, split ``"photos"``), ``"voc"`` (VOC 2012 at
            ``$DEEPLAB_EDU_VOC`` if set, else ``runtime.data_root() / "VOCdevkit" / "VOC2012"``,
            where the download code unpacks it), or the path of any VOC-format folder.

    Returns:
        The folder holding ``JPEGImages/``, ``SegmentationClass/`` and ``ImageSets/``.

    Raises:
        FileNotFoundError: for ``"voc"`` when VOC 2012 is absent (the message says how to get it
            or point at a local copy), or for a path that is not a folder.
    """
    if name == "toy":
        return ensure_toy_voc()
    if name == "photos":
        return PHOTOS_DIR
    if name == "voc":
        folder = _voc_location()
        if not (folder / "JPEGImages").is_dir():
            raise FileNotFoundError(
                f"PASCAL VOC 2012 not found at {folder} (a folder holding JPEGImages/, "
                "SegmentationClass/, ImageSets/). Get it with `python -m deeplab_edu download voc` "
                "(VOC 2012 + SBD, about 3.4 GB, building the train_aug list; in Python: "
                f"`deeplab_edu.data.download.prepare_voc()`), or set {VOC_ENV} to the VOC2012 "
                "folder of a copy you already have; or use fast mode (--fast, or "
                "DEEPLAB_EDU_FAST=1), which uses the generated teaching set."
            )
        return folder
    if not Path(name).is_dir():
        raise FileNotFoundError(
            f"data set {name!r} is neither 'toy', 'voc' nor an existing folder (VOC's layout, "
            "or images/ + masks/ + classes.txt: see deeplab_edu.data.folder)"
        )
    return Path(name)


def open_dataset(name: str, split: str) -> PairedImages:
    """Split ``split`` of data set ``name`` (as :func:`voc_dir` takes it): a
    :class:`SegmentationFolder` for a folder holding ``images/``, else a
    :class:`VOCSegmentation`. Either has ``classes``, the class names."""
    folder = voc_dir(name)
    if (folder / "images").is_dir() and not (folder / "JPEGImages").is_dir():
        return SegmentationFolder(folder, split)
    return VOCSegmentation(folder, split)


def active_voc_dir() -> tuple[str, Path]:
    """The data set of the current mode: the generated set in fast mode, VOC 2012 in full mode.

    Returns:
        ``(name, voc_dir)``, e.g. ``("generated teaching set (toy-voc)", .../toy-voc)``.

    Raises:
        FileNotFoundError: in full mode when VOC 2012 is not where it is expected (from
            :func:`voc_dir`, with how to get it or point at a local copy).
    """
    if runtime.fast_mode():
        return TOY_NAME, voc_dir("toy")
    return VOC_NAME, voc_dir("voc")


__all__ = [
    "CLASSES",
    "IGNORE_INDEX",
    "NUM_CLASSES",
    "PALETTE",
    "PHOTOS_DIR",
    "PHOTOS_SPLIT",
    "SegmentationFolder",
    "TOY_NAME",
    "VOCSegmentation",
    "VOC_ENV",
    "VOC_NAME",
    "active_voc_dir",
    "ensure_toy_voc",
    "make_toy_voc",
    "open_dataset",
    "read_image",
    "read_mask",
    "voc_dir",
    "write_mask",
]
