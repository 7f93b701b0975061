"""Data sets of your own: the images/ + masks/ folder and VOC's layout with other classes, every
bad case named by its file, and train / evaluate / crf-search on a 4-class folder."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deeplab_edu.cli import main
from deeplab_edu.data import SegmentationFolder, VOCSegmentation, open_dataset
from deeplab_edu.data.folder import VAL_EVERY
from deeplab_edu.data.voc import dataset_classes

CLASSES = ("background", "leaf", "stem", "flower")


def make_folder(
    root: Path,
    n: int = 10,
    size: int = 40,
    *,
    layout: str = "plain",
    palette: bool = True,
    seed: int = 0,
) -> Path:
    """``n`` random images with masks of 4 classes (a square of each object class on the
    background, a void border), in the plain layout or VOC's."""
    rng = np.random.default_rng(seed)
    plain = layout == "plain"
    image_dir, mask_dir = (
        (root / "images", root / "masks")
        if plain
        else (root / "JPEGImages", root / "SegmentationClass")
    )
    image_dir.mkdir(parents=True)
    mask_dir.mkdir(parents=True)
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    names = [f"img{i:03d}" for i in range(n)]
    for name in names:
        mask = np.zeros((size, size), np.uint8)
        for label in range(1, len(CLASSES)):
            top, left = rng.integers(0, size - 12, 2)
            mask[top : top + 12, left : left + 12] = label
        mask[:, 0] = 255
        image = (rng.random((size, size, 3)) * 60 + mask[..., None] % 255 * 60).astype(np.uint8)
        Image.fromarray(image).save(image_dir / f"{name}.{'png' if plain else 'jpg'}")
        out = Image.fromarray(mask, mode="L")
        if palette:
            out = out.convert("P")
        out.save(mask_dir / f"{name}.png")
    if not plain:
        lists = root / "ImageSets" / "Segmentation"
        lists.mkdir(parents=True)
        (lists / "train.txt").write_text("\n".join(names[:-2]) + "\n")
        (lists / "val.txt").write_text("\n".join(names[-2:]) + "\n")
    return root


@pytest.mark.parametrize("palette", [True, False])
def test_a_plain_folder_loads_with_its_classes_and_a_split_of_its_own(tmp_path, palette):
    root = make_folder(tmp_path / "mine", n=10, palette=palette)
    train, val = SegmentationFolder(root, "train"), SegmentationFolder(root, "val")
    assert train.classes == val.classes == CLASSES
    assert len(val) == 10 // VAL_EVERY and len(train) + len(val) == 10
    assert not set(train.ids) & set(val.ids)
    image, target = train[0]
    assert image.shape == (3, 40, 40) and target.shape == (40, 40)
    assert set(target.unique().tolist()) <= {0, 1, 2, 3, 255} and (target == 3).any()
    assert isinstance(open_dataset(str(root), "train"), SegmentationFolder)
    subset = torch.utils.data.Subset(torch.utils.data.Subset(train, [0, 1]), [1])
    assert dataset_classes(subset) == CLASSES  # evaluate and the CRF search see them
    assert sorted(p.name for p in root.iterdir()) == ["classes.txt", "images", "masks"]
    (root / "train.txt").write_text("img001\nimg002\n")
    (root / "val.txt").write_text("img003\n")
    assert SegmentationFolder(root, "train").ids == ["img001", "img002"]


def test_vocs_layout_with_other_classes(tmp_path):
    root = make_folder(tmp_path / "voc-like", n=6, layout="voc")
    data = open_dataset(str(root), "train")
    assert isinstance(data, VOCSegmentation) and data.classes == CLASSES and len(data) == 4
    assert data[0][1].max() == 255


def _expect(root: Path, message: str, split: str = "train", error: type = ValueError) -> None:
    with pytest.raises(error, match=message):
        SegmentationFolder(root, split)[0]


def test_every_bad_folder_is_named(tmp_path):
    root = make_folder(tmp_path / "bad", n=6)
    (root / "masks" / "img001.png").rename(root / "masks" / "other.png")
    _expect(root, r"img001\.png \(no mask\), other\.png \(no image\)")
    (root / "masks" / "other.png").rename(root / "masks" / "img001.png")
    Image.fromarray(np.zeros((30, 40), np.uint8)).save(root / "masks" / "img000.png")
    _expect(root, r"img000\.png is \(40, 40\) \(H, W\) but its mask .*img000\.png is \(30, 40\)")
    Image.fromarray(np.full((40, 40), 4, np.uint8)).save(root / "masks" / "img000.png")
    _expect(root, re.escape("img000.png: expected class indices 0..3 or 255, found [4]"))
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(root / "masks" / "img000.png")
    assert SegmentationFolder(root, "train")[0][1].shape == (40, 40)
    _expect(root, r"splits \('train', 'val'\), got 'train_aug'", split="train_aug")
    (root / "val.txt").write_text("img000\n")
    _expect(root, r"train\.txt not found", error=FileNotFoundError)
    (root / "train.txt").write_text("img001\nimg099\n")
    _expect(root, r"names images not in images/: \['img099'\]")
    (root / "classes.txt").write_text("background\nleaf\nleaf\n")
    _expect(root, r"repeated: \['leaf'\]")
    (root / "classes.txt").write_text("background\n")
    _expect(root, "expected 2 to 255 class names")
    (root / "classes.txt").unlink()
    _expect(root, r"classes\.txt not found", error=FileNotFoundError)
    (root / "images" / "img000.jpg").write_bytes(b"")
    (root / "classes.txt").write_text("\n".join(CLASSES))
    _expect(root, r"img000\.jpg and img000\.png .* have the same name")


def test_train_evaluate_and_search_on_a_folder_of_four_classes(tmp_path):
    root = make_folder(tmp_path / "mine", n=10, size=40)
    run, results, search = tmp_path / "run", tmp_path / "r.json", tmp_path / "s.json"
    tiny = "--fast --width 0.0625 --no-progress --crop 33 --batch-size 2 --iterations 2".split()
    assert main(["train", *tiny, "--dataset", str(root), "--out", str(run)]) == 0
    checkpoint = ["--fast", "--no-progress", "--checkpoint", str(run / "checkpoint.pt")]
    assert main(["evaluate", *checkpoint, "--out", str(results)]) == 0
    summary = json.loads(results.read_text())
    assert list(summary["iou_per_class"]["crf"]) == list(CLASSES) and summary["images"] == 2
    grid = "--num-images 2 --w1 4 --theta-alpha 30 --theta-beta 5 --max-recentres 0".split()
    assert main(["crf-search", *checkpoint, *grid, "--out", str(search)]) == 0
    assert json.loads(search.read_text())["trials"]
    # a network of VOC's 21 classes is refused on these 4, by name
    from deeplab_edu.evaluate import EvalConfig, evaluate
    from deeplab_edu.models import deeplab

    voc_network = deeplab("DeepLab-LargeFOV", width=0.0625)
    with pytest.raises(ValueError, match=r"predicts 21 classes but the data set has 4 \(back"):
        evaluate(voc_network, open_dataset(str(root), "val"), EvalConfig.fast(crf=None))


def test_a_network_for_other_classes_starts_from_its_features(tmp_path):
    from deeplab_edu.checkpoint import save_checkpoint
    from deeplab_edu.models import deeplab
    from deeplab_edu.models.pretrained import load_trained_weights
    from deeplab_edu.train import TrainConfig

    config = TrainConfig.fast(width=0.0625)
    voc_network = deeplab(config.variant, width=0.0625)  # 21 classes
    path = save_checkpoint(
        {"iteration": 1, "config": config.to_dict(), "model": voc_network.state_dict()},
        tmp_path / "voc.pt",
    )
    mine = deeplab(config.variant, width=0.0625, num_classes=4)
    fresh_fc8 = mine.head.fc8.weight.clone()
    load_trained_weights(mine, path)
    assert torch.equal(mine.features.conv1_1.weight, voc_network.features.conv1_1.weight)
    assert torch.equal(mine.head.fc7.weight, voc_network.head.fc7.weight)
    assert torch.equal(mine.head.fc8.weight, fresh_fc8)  # a classifier for 4 classes, as built
    root = make_folder(tmp_path / "mine", n=5, size=40)
    tiny = "--fast --width 0.0625 --no-progress --crop 33 --batch-size 2 --iterations 1".split()
    run = ["--dataset", str(root), "--init", str(path), "--out", str(tmp_path / "run")]
    assert main(["train", *tiny, *run]) == 0
