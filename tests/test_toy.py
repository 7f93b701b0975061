"""The generated teaching set: VOC format, determinism, the properties that make it a real task."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from deeplab_edu import data
from deeplab_edu.data.toy import TOY_CLASSES, ToyConfig, ensure_toy_voc, make_toy_voc, render_scene
from deeplab_edu.data.voc import IGNORE_INDEX, VOCSegmentation


def _digest(root):
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode() + path.read_bytes())
    return h.hexdigest()


def test_round_trips_through_the_voc_loader_and_is_deterministic(tmp_path):
    first = make_toy_voc(tmp_path / "a", n_train=6, n_val=3, size=64, seed=7)
    second = make_toy_voc(tmp_path / "b", n_train=6, n_val=3, size=64, seed=7)
    other = make_toy_voc(tmp_path / "c", n_train=6, n_val=3, size=64, seed=8)
    assert _digest(first) == _digest(second) != _digest(other)
    train, val = VOCSegmentation(first, "train"), VOCSegmentation(first, "val")
    assert len(train) == 6 and len(val) == 3
    allowed = {0, IGNORE_INDEX, *(c.index for c in TOY_CLASSES)}
    for image, target in [*train, *val]:
        assert image.shape == (3, 64, 64) and target.shape == (64, 64)
        assert set(target.unique().tolist()) <= allowed
    # the mask read back is the mask generated (PNG is lossless)
    _, mask = render_scene(np.random.default_rng([7, 0, 2]), 64)
    assert torch.equal(train[2][1], torch.from_numpy(mask.astype(np.int64)))


def test_scenes_have_the_promised_properties():
    rng = np.random.default_rng(0)
    scenes = [render_scene(rng, 96) for _ in range(40)]
    masks = np.stack([m for _, m in scenes])
    present = set(np.unique(masks).tolist())
    assert present == {0, IGNORE_INDEX, *(c.index for c in TOY_CLASSES)}
    # several objects per image, some images with two or more classes
    classes_per_image = [len(set(np.unique(m).tolist()) - {0, IGNORE_INDEX}) for m in masks]
    assert np.mean(classes_per_image) > 1.3 and max(classes_per_image) >= 3
    # a void band roughly 5 pixels wide: every boundary between labels lies inside void
    for mask in masks:
        keep = mask != IGNORE_INDEX
        for a, b in ((mask[:, :-1], mask[:, 1:]), (mask[:-1], mask[1:])):
            valid = (a != IGNORE_INDEX) & (b != IGNORE_INDEX)
            assert not (valid & (a != b)).any()
        assert keep.mean() > 0.5
    # colour alone does not separate the classes: the per-object mean colours of two
    # different classes overlap (some pair of objects of different classes is closer in mean
    # colour than two objects of the same class are on average)
    means = {c.index: [] for c in TOY_CLASSES}
    for image, mask in scenes:
        for index in means:
            region = mask == index
            if region.sum() > 50:
                means[index].append(image[region].mean(0))
    within = np.mean([np.linalg.norm(a - b) for m in means.values() for a in m[:5] for b in m[:5]])
    between = min(
        np.linalg.norm(a - b)
        for i in means
        for j in means
        if i < j
        for a in means[i]
        for b in means[j]
    )
    assert between < within / 4


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"size must be an int in \[32, 4096\], got 8"):
        make_toy_voc("/nonexistent", 1, 1, 8, 0)
    with pytest.raises(ValueError, match=r"n_train must be an int in \[1, 100000\], got 0"):
        make_toy_voc("/nonexistent", 0, 1, 64, 0)


def test_ensure_generates_once_and_active_voc_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPLAB_EDU_DATA", str(tmp_path))
    config = ToyConfig(n_train=3, n_val=2, size=48, seed=0)
    voc_dir = ensure_toy_voc(config)
    assert voc_dir == tmp_path / "toy-voc" and len(VOCSegmentation(voc_dir, "val")) == 2
    stamp = (voc_dir / "toy.json").stat().st_mtime_ns
    assert ensure_toy_voc(config) == voc_dir and (voc_dir / "toy.json").stat().st_mtime_ns == stamp
    assert not list(tmp_path.glob(".toy-voc.tmp-*"))
    # a different configuration replaces the cached set
    assert len(VOCSegmentation(ensure_toy_voc(ToyConfig(3, 4, 48, 0)), "val")) == 4
    # full mode without VOC: a clear error that says how to get it
    monkeypatch.setenv("DEEPLAB_EDU_FAST", "0")
    monkeypatch.delenv("DEEPLAB_EDU_VOC", raising=False)
    with pytest.raises(FileNotFoundError, match=r"PASCAL VOC 2012 not found.*prepare_voc"):
        data.active_voc_dir()
    monkeypatch.setenv("DEEPLAB_EDU_VOC", str(voc_dir))  # a local copy: any VOC-format folder
    assert data.active_voc_dir() == (data.VOC_NAME, voc_dir)
    # one resolver for every data set name: "toy", "voc" or a VOC-format folder
    assert data.voc_dir("voc") == voc_dir and data.voc_dir(str(voc_dir)) == voc_dir
    with pytest.raises(FileNotFoundError, match="neither 'toy', 'voc' nor an existing"):
        data.voc_dir(str(tmp_path / "missing"))


def test_a_folder_with_foreign_files_or_a_look_alike_marker_is_never_emptied(tmp_path):
    root = make_toy_voc(tmp_path / "set", n_train=2, n_val=1, size=48, seed=0)
    (root / "my_thesis.tex").write_text("years of work")
    with pytest.raises(FileExistsError, match="my_thesis.tex"):
        make_toy_voc(root, n_train=2, n_val=1, size=48, seed=1)
    assert (root / "my_thesis.tex").read_text() == "years of work"
    (root / "my_thesis.tex").unlink()
    make_toy_voc(root, n_train=2, n_val=1, size=48, seed=1)  # its own files only: replaced
    look_alike = tmp_path / "photos"
    (look_alike / "JPEGImages").mkdir(parents=True)
    (look_alike / "JPEGImages" / "holiday.jpg").write_bytes(b"\xff\xd8")
    (look_alike / "toy.json").write_text("not a manifest")
    with pytest.raises(FileExistsError, match="holiday.jpg"):
        make_toy_voc(look_alike, n_train=2, n_val=1, size=48, seed=0)
    assert (look_alike / "JPEGImages" / "holiday.jpg").exists()
