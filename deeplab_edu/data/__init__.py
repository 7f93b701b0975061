"""PASCAL VOC 2012 (+ SBD) and the generated teaching set in the same on-disk format."""

from deeplab_edu.data.voc import CLASSES, IGNORE_INDEX, NUM_CLASSES, PALETTE, read_mask, write_mask

__all__ = ["CLASSES", "IGNORE_INDEX", "NUM_CLASSES", "PALETTE", "read_mask", "write_mask"]
