"""PASCAL VOC 2012 (+ SBD) and the generated teaching set in the same on-disk format."""

from __future__ import annotations

import os
from pathlib import Path

from deeplab_edu import runtime
from deeplab_edu.data.toy import ensure_toy_voc, make_toy_voc
from deeplab_edu.data.voc import (
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
TOY_NAME = "generated teaching set (toy-voc)"
VOC_NAME = "PASCAL VOC 2012"


def voc_dir() -> Path:
    """Where full mode looks for VOC 2012: ``$DEEPLAB_EDU_VOC`` if set, else
    ``runtime.data_root() / "VOCdevkit" / "VOC2012"`` (where the download code unpacks it)."""
    raw = os.environ.get(VOC_ENV)
    if raw:
        return Path(raw).expanduser().resolve()
    return runtime.data_root() / "VOCdevkit" / "VOC2012"


def active_voc_dir() -> tuple[str, Path]:
    """The data set of the current mode: the generated set in fast mode, VOC 2012 in full mode.

    Returns:
        ``(name, voc_dir)``, e.g. ``("generated teaching set (toy-voc)", .../toy-voc)``.

    Raises:
        FileNotFoundError: in full mode when VOC 2012 is not where it is expected (the message
            says how to get it or point at a local copy).
    """
    if runtime.fast_mode():
        return TOY_NAME, ensure_toy_voc()
    folder = voc_dir()
    if not (folder / "JPEGImages").is_dir():
        raise FileNotFoundError(
            f"full mode (DEEPLAB_EDU_FAST=0) needs PASCAL VOC 2012 at {folder} (a folder holding "
            "JPEGImages/, SegmentationClass/, ImageSets/). Download it (with SBD, building the "
            "train_aug list) with `deeplab_edu.data.download.prepare_voc()`, or set "
            "DEEPLAB_EDU_VOC to the VOC2012 "
            "folder of a copy you already have; or run in fast mode (DEEPLAB_EDU_FAST=1), which "
            "uses the generated teaching set."
        )
    return VOC_NAME, folder


__all__ = [
    "CLASSES",
    "IGNORE_INDEX",
    "NUM_CLASSES",
    "PALETTE",
    "TOY_NAME",
    "VOCSegmentation",
    "VOC_ENV",
    "VOC_NAME",
    "active_voc_dir",
    "ensure_toy_voc",
    "make_toy_voc",
    "read_image",
    "read_mask",
    "voc_dir",
    "write_mask",
]
