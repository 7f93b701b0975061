"""The Semantic Boundaries Dataset (SBD, Hariharan et al. 2011) and the paper's augmented
training set ``train_aug``: 10,582 images = SBD train + SBD val + VOC 2012 train - VOC 2012 val.

SBD stores each annotation as a MATLAB v5 ``.mat`` file (``cls/<id>.mat``, a struct ``GTcls``
whose field ``Segmentation`` holds the class indices). torchvision's ``SBDataset`` reads them
with SciPy; this module carries a small reader for the part of the MAT v5 format those files
use (numeric arrays, structs, cells, strings, sparse matrices, zlib-compressed elements). It
checks every size against the bytes present before allocating anything, which SciPy does not:
a 208-byte file declaring a 30000 x 30000 struct array makes ``scipy.io.loadmat`` allocate
gigabytes (measured), and this reader refuse it. ``tests/test_sbd_fuzz.py`` holds it to that
on thousands of damaged files.
"""

from __future__ import annotations

import math
import struct
import zlib
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from deeplab_edu.data.voc import IGNORE_INDEX, NUM_CLASSES, read_ids, write_mask

# MAT v5 data types (the element tags) and array classes
_MI_DTYPES = {
    1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 9: "f8", 12: "i8", 13: "u8",
    16: "u1", 17: "u2", 18: "u4",
}
_MI_MATRIX, _MI_COMPRESSED = 14, 15
_MX_CELL, _MX_STRUCT, _MX_OBJECT, _MX_CHAR, _MX_SPARSE = 1, 2, 3, 4, 5
_MX_NUMERIC = {
    6: "f8", 7: "f4", 8: "i1", 9: "u1", 10: "i2", 11: "u2", 12: "i4", 13: "u4", 14: "i8", 15: "u8",
}
MAX_BYTES = 64 << 20  # larger than any SBD annotation (a few hundred KiB), once inflated
MAX_DEPTH = 16  # SBD nests three levels: struct -> cell -> sparse matrix


class _Reader:
    """Walks the data elements of a MAT v5 byte string.

    Every size it reads is checked against the bytes that are actually there before anything is
    allocated, nesting is limited and decompression is capped, so a damaged or hostile file
    costs at most a few times its own size in memory and ends in a ``ValueError``.
    """

    def __init__(self, data: bytes, endian: str, source: str, depth: int = 0) -> None:
        self.data, self.endian, self.source, self.pos, self.depth = data, endian, source, 0, depth
        if depth > MAX_DEPTH:
            self.fail(f"cells or structs nested deeper than {MAX_DEPTH} levels")

    def fail(self, what: str) -> NoReturn:
        raise ValueError(f"{self.source}: not a MAT v5 file this reader understands ({what})")

    def inner(self, data: bytes) -> _Reader:
        return _Reader(data, self.endian, self.source, self.depth + 1)

    def tag(self) -> tuple[int, int, int]:
        """Returns (type, nbytes, start of the data); handles the 4-byte "small element" form."""
        if self.pos + 8 > len(self.data):
            self.fail("truncated element tag")
        first, second = struct.unpack_from(self.endian + "II", self.data, self.pos)
        if first >> 16:  # small data element: 2-byte size, 2-byte type, data in 4 bytes
            if first >> 16 > 4:
                self.fail(f"a small element of {first >> 16} bytes (at most 4)")
            start, self.pos = self.pos + 4, self.pos + 8
            return first & 0xFFFF, first >> 16, start
        start = self.pos + 8
        # elements are padded to 8 bytes, except compressed ones
        self.pos = start + second + (0 if first == _MI_COMPRESSED else -second % 8)
        if start + second > len(self.data):
            self.fail(f"an element of {second} bytes where {len(self.data) - start} remain")
        return first, second, start

    def decompress(self, raw: bytes) -> bytes:
        inflater = zlib.decompressobj()
        try:
            data = inflater.decompress(raw, MAX_BYTES)
        except zlib.error as error:
            self.fail(f"corrupt compressed element: {error}")
        if inflater.unconsumed_tail:
            self.fail(f"a compressed element larger than {MAX_BYTES >> 20} MiB once inflated")
        return data

    def element(self) -> tuple[int, Any]:
        kind, nbytes, start = self.tag()
        raw = self.data[start : start + nbytes]
        if kind == _MI_COMPRESSED:
            return self.inner(self.decompress(raw)).element()
        if kind == _MI_MATRIX:
            return kind, self.inner(raw).matrix() if nbytes else None
        if kind not in _MI_DTYPES:
            self.fail(f"unknown data type {kind}")
        dtype = np.dtype(_MI_DTYPES[kind]).newbyteorder(self.endian)  # type: ignore[arg-type]
        if nbytes % dtype.itemsize:
            self.fail(f"{nbytes} bytes of {dtype.itemsize}-byte numbers")
        return kind, np.frombuffer(raw, dtype=dtype)

    def numbers(self, what: str) -> np.ndarray:
        kind, value = self.element()
        if kind == _MI_MATRIX:
            self.fail(f"expected {what}, found a matrix")
        return value

    def integers(self, what: str, minimum: int = 0) -> list[int]:
        values = self.numbers(what)
        if values.dtype.kind not in "iu" or (values.size and values.min() < minimum):
            self.fail(
                f"expected {what} as integers >= {minimum}, found {values.dtype} {values[:4]}"
            )
        return [int(v) for v in values]

    def text(self, what: str) -> str:
        codes = self.integers(what)
        if codes and max(codes) > 0x10FFFF:
            self.fail(f"{what}: character code {max(codes)} beyond Unicode")
        return "".join(map(chr, codes))

    def matrix(self) -> Any:
        flags = self.integers("array flags")
        if len(flags) != 2:
            self.fail(f"array flags should be 2 numbers, found {len(flags)}")
        array_class, complex_ = flags[0] & 0xFF, bool(flags[0] & 0x800)
        dims = tuple(self.integers("dimensions"))
        if len(dims) < 2:
            self.fail(f"dimensions should be at least 2 numbers, found {dims}")
        count = math.prod(dims)
        self.text("array name")  # empty inside structs and cells
        if array_class in _MX_NUMERIC:
            values = self.numbers("numbers")
            if complex_:
                imaginary = self.numbers("imaginary parts")
                if imaginary.size != values.size:
                    self.fail(f"{values.size} real parts and {imaginary.size} imaginary parts")
                values = values + 1j * imaginary
            if values.size != count:
                self.fail(f"an array of shape {dims} holding {values.size} numbers")
            if not complex_:
                values = values.astype(_MX_NUMERIC[array_class])
            return values.reshape(dims, order="F")
        if array_class == _MX_CHAR:
            return self.text("characters")
        # every element of a cell or struct array is at least one 8-byte tag in the file
        remaining = len(self.data) - self.pos
        if array_class == _MX_CELL:
            if 8 * count > remaining:
                self.fail(f"a cell array of shape {dims} in {remaining} bytes")
            cells = [self.element()[1] for _ in range(count)]
            return cells[0] if count == 1 else cells
        if array_class in (_MX_STRUCT, _MX_OBJECT):
            if array_class == _MX_OBJECT:
                self.text("class name")
            lengths = self.integers("field name length")
            raw_names = self.numbers("field names").tobytes()
            length = lengths[0] if len(lengths) == 1 else 0
            if length < 1 or len(raw_names) % length:
                self.fail(f"{len(raw_names)} bytes of field names of length {length}")
            try:
                names = [
                    raw_names[k : k + length].split(b"\0")[0].decode("ascii")
                    for k in range(0, len(raw_names), length)
                ]
            except UnicodeDecodeError:
                self.fail("a field name that is not ASCII")
            if 8 * count * max(len(names), 1) > remaining:
                self.fail(
                    f"a struct array of shape {dims} with {len(names)} fields in {remaining} bytes"
                )
            items = [{name: self.element()[1] for name in names} for _ in range(count)]
            return items[0] if count == 1 else items
        if array_class == _MX_SPARSE:  # row indices, column starts, values: kept as a dict
            rows = self.numbers("row indices")
            starts = self.numbers("column starts")
            values = self.numbers("values")
            return {"shape": dims, "rows": rows, "column_starts": starts, "values": values}
        self.fail(f"unsupported array class {array_class}")


def read_mat(path: str | Path) -> dict[str, Any]:
    """Read the variables of a MATLAB v5 ``.mat`` file (the subset SBD uses).

    Args:
        path: the file.

    Returns:
        ``{variable name: value}``; numeric arrays as NumPy arrays in MATLAB's shape, structs
        as dicts (lists of dicts for struct arrays), cells as lists, strings as ``str``.

    Raises:
        FileNotFoundError: if the file is missing.
        ValueError: if it is not a MAT v5 file (v7.3 files are HDF5 and not supported).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MAT file not found: {path}")
    if path.stat().st_size > MAX_BYTES:
        raise ValueError(
            f"{path}: {path.stat().st_size >> 20} MiB, larger than any SBD annotation "
            f"(at most {MAX_BYTES >> 20} MiB expected)"
        )
    data = path.read_bytes()
    if len(data) < 128 or data[126:128] not in (b"IM", b"MI"):
        raise ValueError(f"{path}: not a MATLAB v5 .mat file (no v5 header)")
    endian = "<" if data[126:128] == b"IM" else ">"
    try:
        return _read_variables(data[128:], endian, str(path))
    except (struct.error, IndexError) as error:  # a check above has a gap: still say which file
        raise ValueError(f"{path}: unreadable MAT v5 file ({error!r})") from error


def _read_variables(data: bytes, endian: str, source: str) -> dict[str, Any]:
    variables: dict[str, Any] = {}
    reader = _Reader(data, endian, source)
    while reader.pos < len(reader.data):
        kind, nbytes, start = reader.tag()
        raw = reader.data[start : start + nbytes]
        if kind == _MI_COMPRESSED:
            inner = reader.inner(reader.decompress(raw))
            kind, nbytes, start = inner.tag()
            raw = inner.data[start : start + nbytes]
        if kind != _MI_MATRIX:
            continue
        header = reader.inner(raw)
        header.integers("array flags")
        header.integers("dimensions")
        name = header.text("variable name")
        variables[name] = reader.inner(raw).matrix()
    return variables


def read_sbd_mask(path: str | Path) -> np.ndarray:
    """An SBD class annotation ``cls/<id>.mat`` as a VOC-style mask.

    Args:
        path: the ``.mat`` file.

    Returns:
        ``(H, W)`` uint8 class indices 0..20 (SBD has no void band).

    Raises:
        ValueError: if the file has no ``GTcls.Segmentation`` or holds labels outside 0..20.
    """
    variables = read_mat(path)
    gt = variables.get("GTcls")
    if not isinstance(gt, dict) or "Segmentation" not in gt:
        raise ValueError(
            f"{path}: expected an SBD class annotation with a struct GTcls holding a field "
            f"Segmentation, found variables {sorted(variables)}"
        )
    mask = np.asarray(gt["Segmentation"])
    if mask.ndim != 2:
        raise ValueError(f"{path}: GTcls.Segmentation should be 2-D, got shape {mask.shape}")
    bad = np.setdiff1d(np.unique(mask), [*range(NUM_CLASSES), IGNORE_INDEX])
    if bad.size:
        raise ValueError(f"{path}: labels outside 0..{NUM_CLASSES - 1}: {bad.tolist()}")
    return mask.astype(np.uint8)


def train_aug_ids(
    sbd_train: list[str], sbd_val: list[str], voc_train: list[str], voc_val: list[str]
) -> list[str]:
    """The paper's augmented training list: SBD train + SBD val + VOC train, minus VOC val
    (so that nothing we evaluate on is trained on). Sorted, no duplicates."""
    return sorted((set(sbd_train) | set(sbd_val) | set(voc_train)) - set(voc_val))


TRAIN_AUG_SIZE = 10_582  # paper, section 5: the number of augmented training images


def _read_list(path: Path, what: str) -> list[str]:
    """The ids of a VOC or SBD list, each a plain name (:func:`~deeplab_edu.data.voc.read_ids`:
    an id such as ``../../x`` would write its mask outside the data root)."""
    if not path.is_file():
        raise FileNotFoundError(f"{what} list not found: {path}")
    return read_ids(path)


def build_train_aug(voc_dir: str | Path, sbd_dir: str | Path) -> Path:
    """Write the ``train_aug`` split into a VOC 2012 folder.

    For every id of :func:`train_aug_ids` the mask goes to ``SegmentationClassAug/<id>.png``:
    VOC's own annotation when the id has one (finer, with the void band), else SBD's
    (``sbd_dir/cls/<id>.mat``, no void band). The list goes to
    ``ImageSets/Segmentation/train_aug.txt``. Images are VOC's ``JPEGImages`` (SBD's images
    are VOC 2011 images, all contained in VOC 2012).

    Args:
        voc_dir: the ``VOC2012`` folder (with ``train.txt`` and ``val.txt``).
        sbd_dir: SBD's ``dataset`` folder (with ``cls/``, ``train.txt``, ``val.txt``).

    Returns:
        The path of ``train_aug.txt``.

    Raises:
        FileNotFoundError: if a list, image or annotation is missing.
    """
    voc_dir, sbd_dir = Path(voc_dir), Path(sbd_dir)
    lists = voc_dir / "ImageSets" / "Segmentation"
    voc_train = _read_list(lists / "train.txt", "VOC train")
    voc_val = _read_list(lists / "val.txt", "VOC val")
    sbd_train = _read_list(sbd_dir / "train.txt", "SBD train")
    sbd_val = _read_list(sbd_dir / "val.txt", "SBD val")
    ids = train_aug_ids(sbd_train, sbd_val, voc_train, voc_val)
    out = voc_dir / "SegmentationClassAug"
    out.mkdir(exist_ok=True)
    for image_id in ids:
        if not (voc_dir / "JPEGImages" / f"{image_id}.jpg").is_file():
            raise FileNotFoundError(f"image of {image_id} not found in {voc_dir / 'JPEGImages'}")
        voc_mask = voc_dir / "SegmentationClass" / f"{image_id}.png"
        target = out / f"{image_id}.png"
        if voc_mask.is_file():
            target.write_bytes(voc_mask.read_bytes())
        else:
            write_mask(target, read_sbd_mask(sbd_dir / "cls" / f"{image_id}.mat"))
    list_file = lists / "train_aug.txt"
    list_file.write_text("\n".join(ids) + "\n")
    return list_file
