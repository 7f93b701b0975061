"""A generated teaching set in the PASCAL VOC on-disk format (fast mode's data set).

It is *not* VOC and no number measured on it is comparable with the paper. It exists so that
every chapter can train, apply the CRF and evaluate on a laptop CPU in minutes, with the same
code that reads VOC in full mode. The scenes are built to keep the task honest:

- a few overlapping objects of four VOC classes (aeroplane, bus, cat, person) on a textured
  background, drawn in random order so that they occlude each other;
- colour does not tell the classes apart: each class draws its hue from a wide distribution
  that overlaps its neighbours', and the background may take any hue; what separates them is
  shape and texture (stripes, bands, spots, speckle), whose periods and strengths vary too, and
  the background sometimes carries stripes of its own;
- an illumination gradient across the image, Gaussian noise and JPEG compression;
- soft (blurred) object edges, and a VOC-style 5-pixel void (255) band along every outline.

A stride-8 network sees the objects but blurs their outlines; the outlines are still visible as
colour edges in the image, which is exactly what the fully connected CRF exploits.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from deeplab_edu import runtime
from deeplab_edu.data.voc import CLASSES, IGNORE_INDEX, write_mask
from deeplab_edu.outputs import sweep_temporaries, temporary_path

VOID_BAND = 5  # pixels; VOC's annotators drew a band about 5 pixels wide along outlines
FORMAT_VERSION = 2  # bump when the generator changes, so that cached sets are regenerated
MAX_IMAGES, MAX_SIZE = 100_000, 4096  # per split; pixels (a VOC photo is at most 500)


@dataclass(frozen=True)
class ToyClass:
    """One object class of the teaching set.

    Attributes:
        name: a VOC class name (its index is the VOC index).
        parts: the shape, a union of superellipses ``(cu, cv, a, b, p)`` in object units:
            ``|(u - cu) / a|^p + |(v - cv) / b|^p <= 1``.
        texture: ``"stripes"``, ``"bands"``, ``"spots"`` or ``"speckle"``.
        period: texture period in pixels (jittered per object).
        hue: mean hue in [0, 1); each object draws its hue from N(hue, 0.12) (wide on purpose).
        max_turn: largest rotation in degrees.
    """

    name: str
    parts: tuple[tuple[float, float, float, float, float], ...]
    texture: str
    period: float
    hue: float
    max_turn: float

    @property
    def index(self) -> int:
        return CLASSES.index(self.name)


TOY_CLASSES: tuple[ToyClass, ...] = (
    # a cross: fuselage and wings
    ToyClass("aeroplane", ((0, 0, 1, 0.3, 2), (0.15, 0, 0.3, 0.95, 2)), "stripes", 5, 0.58, 180),
    # a rounded box
    ToyClass("bus", ((0, 0, 1, 0.55, 6),), "bands", 9, 0.12, 15),
    # a body and a head
    ToyClass("cat", ((0.1, 0.15, 0.8, 0.5, 2), (-0.75, -0.35, 0.36, 0.36, 2)),
             "spots", 7, 0.05, 25),
    # an upright body and a head
    ToyClass("person", ((0, 0.3, 0.42, 0.8, 3), (0, -0.75, 0.3, 0.3, 2)),
             "speckle", 3, 0.95, 10),
)


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    """One HSV colour (each in [0, 1]) to RGB floats in [0, 1]."""
    k = (np.array([5.0, 3.0, 1.0]) + h * 6.0) % 6.0
    return v - v * s * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Random values on a ``cells x cells`` grid, bilinearly upsampled: (size, size) in [-1, 1]."""
    grid = torch.from_numpy(rng.uniform(-1, 1, (1, 1, cells, cells)))
    return F.interpolate(grid, size=(size, size), mode="bilinear", align_corners=False)[
        0, 0
    ].numpy()


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of an (H, W) array (edges replicated)."""
    radius = max(1, int(3 * sigma))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    padded = np.pad(image, radius, mode="edge")
    rows = sum(w * padded[:, k : k + image.shape[1]] for k, w in enumerate(taps))
    return sum(w * rows[k : k + image.shape[0], :] for k, w in enumerate(taps))


def _texture(kind: str, u: np.ndarray, v: np.ndarray, period: float, rng: np.random.Generator):
    """A zero-mean texture in [-1, 1] over object coordinates ``u, v`` (in pixels)."""
    phase = rng.uniform(0, 2 * np.pi)
    if kind == "stripes":  # thin lines along the object's long axis
        return np.sin(2 * np.pi * v / period + phase)
    if kind == "bands":  # broad square-wave bands across it
        return np.sign(np.sin(2 * np.pi * u / period + phase)) * 0.8
    if kind == "spots":
        return np.sin(2 * np.pi * u / period + phase) * np.sin(2 * np.pi * v / period)
    if kind == "speckle":  # fine random grain
        return np.clip(_blur(rng.normal(0, 1.0, u.shape), period / 3) * 2.0, -1, 1)
    raise ValueError(f"unknown texture {kind!r}")


def _void_band(label: np.ndarray, width: int = VOID_BAND) -> np.ndarray:
    """Pixels within a ``width``-wide band centred on the outlines between different labels:
    the pixels next to a label change, dilated by a disk of radius ``width // 2``."""
    edge: np.ndarray = np.zeros(label.shape, dtype=bool)
    edge[:, :-1] |= label[:, :-1] != label[:, 1:]
    edge[:-1, :] |= label[:-1, :] != label[1:, :]
    radius = width // 2
    padded = np.pad(edge, radius)
    band = np.zeros_like(edge)
    h, w = edge.shape
    for dy in range(-radius, radius + 1):  # OR of the shifted edge maps = dilation by a disk
        for dx in range(-radius, radius + 1):
            if dy * dy + dx * dx <= radius * radius + 1:
                band |= padded[radius + dy : radius + dy + h, radius + dx : radius + dx + w]
    return band


def render_scene(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One generated scene.

    Args:
        rng: the random stream (the scene is a pure function of it).
        size: image side in pixels.

    Returns:
        ``(image, mask)``: ``(size, size, 3)`` uint8 RGB and ``(size, size)`` uint8 labels with
        VOC indices and 255 on the void band.
    """
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5  # pixel centres
    # background: any hue, cloudy shading, sometimes faint stripes (as confusing as real clutter)
    colour = _hsv_to_rgb(rng.uniform(), rng.uniform(0.15, 0.7), rng.uniform(0.35, 0.9))
    shade = 0.25 * _smooth_noise(rng, size, int(rng.integers(3, 7)))
    if rng.uniform() < 0.4:
        angle = rng.uniform(0, np.pi)
        along = xs * np.cos(angle) + ys * np.sin(angle)
        shade += rng.uniform(0.05, 0.25) * np.sin(2 * np.pi * along / rng.uniform(4.5, 10))
    image = colour[None, None, :] * (1.0 + shade[..., None])  # (H, W, 3)
    label = np.zeros((size, size), dtype=np.uint8)
    for _ in range(int(rng.integers(1, 4)) + int(rng.uniform() < 0.5)):  # 1 to 4 objects
        cls = TOY_CLASSES[int(rng.integers(len(TOY_CLASSES)))]
        scale = rng.uniform(0.2, 0.34) * size  # pixels per object unit
        cx, cy = rng.uniform(0.15, 0.85, 2) * size
        turn = np.deg2rad(rng.uniform(-cls.max_turn, cls.max_turn))
        mirror = -1.0 if rng.uniform() < 0.5 else 1.0
        u = ((xs - cx) * np.cos(turn) + (ys - cy) * np.sin(turn)) * mirror  # object frame, px
        v = -(xs - cx) * np.sin(turn) + (ys - cy) * np.cos(turn)
        inside = np.zeros((size, size), dtype=bool)
        for cu, cv, a, b, p in cls.parts:
            f = np.abs(u / scale - cu) / a
            inside |= f**p + (np.abs(v / scale - cv) / b) ** p <= 1.0
        if inside.sum() < 30:  # (almost) entirely outside the image: skip
            continue
        alpha = _blur(inside.astype(np.float64), rng.uniform(0.7, 1.5))  # soft edge
        hue = (cls.hue + rng.normal(0, 0.12)) % 1.0
        colour = _hsv_to_rgb(hue, rng.uniform(0.25, 0.85), rng.uniform(0.35, 0.95))
        period = cls.period * rng.uniform(0.8, 1.25)
        strength = rng.uniform(0.18, 0.4)
        texture = _texture(cls.texture, u, v, period, rng)
        painted = colour[None, None, :] * (1.0 + strength * texture[..., None])
        image = alpha[..., None] * painted + (1.0 - alpha[..., None]) * image
        label[inside] = cls.index
    # illumination gradient across the whole scene, then sensor noise
    gx, gy = rng.uniform(-0.45, 0.45, 2)
    image = image * (1.0 + gx * (xs / size - 0.5) + gy * (ys / size - 0.5))[..., None]
    image = image + rng.normal(0.0, 0.035, image.shape)
    label[_void_band(label)] = IGNORE_INDEX
    return (np.clip(image, 0.0, 1.0) * 255.0).round().astype(np.uint8), label


def make_toy_voc(root: str | Path, n_train: int, n_val: int, size: int, seed: int) -> Path:
    """Write a generated teaching set as a VOC 2012-style tree that ``VOCSegmentation`` reads.

    Args:
        root: the folder to fill (it becomes the ``voc_dir``: ``JPEGImages/``,
            ``SegmentationClass/``, ``ImageSets/Segmentation/{train,val}.txt``).
        n_train: number of training images; n_val: number of validation images.
        size: image side in pixels.
        seed: every image is a pure function of ``(seed, split, index)``.

    The set is written into a temporary folder beside ``root`` and renamed into place when
    complete (an interrupted run, Ctrl-C included, leaves nothing behind and never a set that
    looks complete); an existing generated set at ``root`` is replaced.

    Returns:
        ``root`` as a ``Path``.

    Raises:
        ValueError: for counts, a size or a seed out of their ranges (a size of 32 to
            ``MAX_SIZE`` pixels).
        FileExistsError: if ``root`` exists and is neither empty nor a generated set.
    """
    for name, value, low, high in (("n_train", n_train, 1, MAX_IMAGES),
                                   ("n_val", n_val, 1, MAX_IMAGES), ("size", size, 32, MAX_SIZE),
                                   ("seed", seed, 0, runtime.MAX_SEED)):
        runtime.checked_int(name, value, low, high)
    final = Path(root)
    if final.exists():
        foreign = _foreign_entries(final)
        if foreign:
            raise FileExistsError(
                f"{final} exists and is not only a generated teaching set (it holds "
                f"{', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}): choose "
                "another folder (or move those files)"
            )
    final.parent.mkdir(parents=True, exist_ok=True)
    sweep_temporaries(final)  # the half-written sets of killed generations
    root = temporary_path(final)
    try:
        _write_toy_voc(root, n_train, n_val, size, seed)
        if final.exists():
            shutil.rmtree(final)
        root.rename(final)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return final


# the files a generated set holds: its images and masks named by its ids, its lists, manifest, README
_OWN_FILES = re.compile(
    r"JPEGImages/toy_(train|val)_\d{5}\.jpg|SegmentationClass/toy_(train|val)_\d{5}\.png"
    r"|ImageSets/Segmentation/(train|val)\.txt|toy\.json|README\.txt"
)


def _foreign_entries(folder: Path) -> list[str]:
    """Entries of ``folder`` that a generated set does not hold (all of them if its manifest
    ``toy.json`` is missing or unreadable): replacing the folder would delete them."""
    if not folder.is_dir():
        return [folder.name]
    entries = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    try:
        manifest = json.loads((folder / "toy.json").read_text())
        valid = isinstance(manifest, dict) and {"n_train", "n_val", "size", "seed"} <= manifest.keys()
    except (OSError, UnicodeDecodeError, ValueError):
        valid = False
    if not valid:
        return entries
    return [e for e in entries if not _OWN_FILES.fullmatch(e)]


def _write_toy_voc(root: Path, n_train: int, n_val: int, size: int, seed: int) -> None:
    lists = root / "ImageSets" / "Segmentation"
    for folder in (root / "JPEGImages", root / "SegmentationClass", lists):
        folder.mkdir(parents=True, exist_ok=True)
    for split_code, (split, count) in enumerate((("train", n_train), ("val", n_val))):
        ids = [f"toy_{split}_{k:05d}" for k in range(count)]
        for k, image_id in enumerate(ids):
            image, mask = render_scene(np.random.default_rng([seed, split_code, k]), size)
            Image.fromarray(image).save(root / "JPEGImages" / f"{image_id}.jpg", quality=90)
            write_mask(root / "SegmentationClass" / f"{image_id}.png", mask)
        (lists / f"{split}.txt").write_text("\n".join(ids) + "\n")
    info: dict[str, object] = {"n_train": n_train, "n_val": n_val, "size": size, "seed": seed}
    info |= {"format": FORMAT_VERSION, "classes": [c.name for c in TOY_CLASSES]}
    (root / "toy.json").write_text(json.dumps(info, indent=1) + "\n")
    (root / "README.txt").write_text(
        "Generated by deeplab_edu.data.toy.make_toy_voc: a synthetic teaching set in the PASCAL "
        "VOC format, not VOC. Delete this folder to regenerate it.\n"
    )


@dataclass(frozen=True)
class ToyConfig:
    """The teaching set's size. There is one set for every mode: it is fast mode's data."""

    n_train: int = 400
    n_val: int = 100
    size: int = 128
    seed: int = 0


def ensure_toy_voc(config: ToyConfig | None = None) -> Path:
    """The generated teaching set under ``runtime.data_root() / "toy-voc"``, made on first use.

    Generation goes to a temporary folder that is renamed into place when complete, so an
    interrupted run never leaves a half-written set behind, and chapters running at the same
    time do not trip over each other.

    Args:
        config: sizes and seed (default :class:`ToyConfig`).

    Returns:
        The ``voc_dir`` of the set.
    """
    config = config or ToyConfig()
    target = runtime.data_root() / "toy-voc"
    wanted = {**config.__dict__, "format": FORMAT_VERSION}

    def matches() -> bool:
        try:
            info = json.loads((target / "toy.json").read_text())
        except (OSError, ValueError):
            return False
        return all(info.get(key) == value for key, value in wanted.items())

    if matches():
        return target
    try:  # an older or differently sized set is replaced
        make_toy_voc(target, config.n_train, config.n_val, config.size, config.seed)
    except OSError:  # another process finished first (the rename found a folder)
        pass
    if not matches():
        raise RuntimeError(f"could not create the generated teaching set at {target}")
    return target
