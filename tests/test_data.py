"""The VOC loader, the transforms and the label subsampling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from deeplab_edu.data.transforms import (
    MEAN,
    EvalTransform,
    TrainTransform,
    denormalize,
    normalize,
    subsample_labels,
)
from deeplab_edu.data.voc import IGNORE_INDEX, VOCSegmentation, read_image, write_mask


def _write_tree(root, sizes, split="train"):
    """A tiny VOC-format tree with random images and masks of the given (H, W) sizes."""
    rng = np.random.default_rng(0)
    ids = []
    for k, (h, w) in enumerate(sizes):
        image_id = f"2000_{k:06d}"
        ids.append(image_id)
        (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "JPEGImages" / f"{image_id}.jpg")
        mask = rng.integers(0, 21, (h, w))
        mask[0] = IGNORE_INDEX
        write_mask(root / "SegmentationClass" / f"{image_id}.png", mask)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return ids


def test_loader_reads_a_local_tree(tmp_path):
    ids = _write_tree(tmp_path, [(20, 30), (17, 11)])
    ds = VOCSegmentation(tmp_path, "train")
    assert ds.ids == ids and len(ds) == 2
    image, target = ds[1]
    assert image.dtype == torch.uint8 and image.shape == (3, 17, 11)
    assert target.dtype == torch.int64 and target.shape == (17, 11)
    assert (target[0] == IGNORE_INDEX).all() and int(target[1:].max()) <= 20
    ds = VOCSegmentation(tmp_path, "train", transform=EvalTransform(pad_to=32))
    image, target = ds[0]
    assert image.dtype == torch.float32 and image.shape == (3, 32, 32) and target.shape == (32, 32)


def test_loader_reads_the_real_voc_sample(voc_sample):
    for split, count in (("train", 5), ("sbd", 7)):
        ds = VOCSegmentation(voc_sample, split)
        assert len(ds) == count
        for image, target in ds:
            assert image.shape[0] == 3 and image.shape[1:] == target.shape
            labels = set(target.unique().tolist())
            assert labels <= {*range(21), IGNORE_INDEX} and labels - {0, IGNORE_INDEX}
    # VOC masks have the void band, SBD masks have none
    assert all((t == IGNORE_INDEX).any() for _, t in VOCSegmentation(voc_sample, "train"))
    assert not any((t == IGNORE_INDEX).any() for _, t in VOCSegmentation(voc_sample, "sbd"))


def test_missing_root_and_split_say_how_to_get_the_data(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"VOC folder not found.*prepare_voc"):
        VOCSegmentation(tmp_path / "nowhere", "train")
    _write_tree(tmp_path, [(8, 8)])
    with pytest.raises(FileNotFoundError, match=r"val\.txt.*splits present: \['train'\]"):
        VOCSegmentation(tmp_path, "val")
    with pytest.raises(FileNotFoundError, match="build_train_aug"):
        VOCSegmentation(tmp_path, "train_aug")
    (tmp_path / "ImageSets" / "Segmentation" / "empty.txt").write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        VOCSegmentation(tmp_path, "empty")


def test_corrupt_image_and_size_mismatch_name_the_files(tmp_path):
    ids = _write_tree(tmp_path, [(10, 12), (10, 12)])
    jpeg = tmp_path / "JPEGImages" / f"{ids[0]}.jpg"
    jpeg.write_bytes(jpeg.read_bytes()[:40])  # truncated
    ds = VOCSegmentation(tmp_path, "train")
    with pytest.raises(ValueError, match=rf"{ids[0]}\.jpg: not a readable image"):
        ds[0]
    write_mask(tmp_path / "SegmentationClass" / f"{ids[1]}.png", np.zeros((9, 12), np.uint8))
    with pytest.raises(
        ValueError, match=rf"{ids[1]}\.jpg is \(10, 12\).*{ids[1]}\.png is \(9, 12\)"
    ):
        ds[1]
    with pytest.raises(FileNotFoundError, match="image file not found"):
        read_image(tmp_path / "missing.jpg")


def test_normalize_round_trips_and_mean_maps_to_zero():
    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (2, 3, 5, 7), dtype=torch.uint8, generator=g)
    assert torch.equal(denormalize(normalize(image)), image)
    mean_pixel = torch.tensor([round(m * 255) for m in MEAN], dtype=torch.uint8).view(3, 1, 1)
    assert normalize(mean_pixel).abs().max() < 0.01
    with pytest.raises(TypeError, match="uint8"):
        normalize(image.float())
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        normalize(image[:, :2])


def test_train_transform_crops_pads_and_flips_consistently():
    g = torch.Generator().manual_seed(0)
    # small image: padded with the mean colour (0 after normalising) and void labels
    image = torch.randint(0, 256, (3, 10, 12), dtype=torch.uint8, generator=g)
    target = torch.randint(0, 21, (10, 12), generator=g)
    x, y = TrainTransform(crop=16, flip=False, generator=g)(image, target)
    assert x.shape == (3, 16, 16) and y.shape == (16, 16) and y.dtype == torch.int64
    assert torch.equal(y[:10, :12], target) and (y[10:] == IGNORE_INDEX).all()
    assert (x[:, 10:] == 0).all() and (x[:, :, 12:] == 0).all()
    # large image: the crop is a window of the image, and image and labels move together
    h, w = 40, 50
    rows = torch.arange(h).view(h, 1).expand(h, w)
    cols = torch.arange(w).view(1, w).expand(h, w)
    target = rows * 100 + cols  # each label says where it came from
    image = torch.stack([rows, cols, rows]).to(torch.uint8)
    seen_flip = False
    for _ in range(10):
        x, y = TrainTransform(crop=21, generator=g)(image, target)
        back = denormalize(x)
        assert torch.equal(back[0].long(), y // 100) and torch.equal(back[1].long(), y % 100)
        seen_flip |= bool(y[0, 0] % 100 > y[0, -1] % 100)
    assert seen_flip
    x, y = TrainTransform(crop=8, scale=(0.5, 0.5), generator=g)(image, target)
    assert x.shape == (3, 8, 8) and set(y.flatten().tolist()) <= set(target.flatten().tolist())
    with pytest.raises(ValueError, match="same size"):
        TrainTransform(crop=8)(image, target[:-1])
    with pytest.raises(TypeError, match="integer mask"):
        TrainTransform(crop=8)(image, target.float())


def test_eval_transform_pads_to_513_or_keeps_native_size():
    image = torch.zeros(3, 375, 500, dtype=torch.uint8)
    target = torch.zeros(375, 500, dtype=torch.long)
    x, y = EvalTransform()(image, target)
    assert x.shape == (3, 513, 513) and (y[375:] == IGNORE_INDEX).all()
    assert (y[:, 500:] == IGNORE_INDEX).all() and (y[:375, :500] == 0).all()
    x, y = EvalTransform(pad_to=None)(image, target)
    assert x.shape == (3, 375, 500)
    with pytest.raises(ValueError, match="larger than pad_to=300"):
        EvalTransform(pad_to=300)(image, target)


@pytest.mark.parametrize(
    "size, offset, cells",
    [
        (321, 0, 41),
        (513, 0, 65),
        (306, 0, 39),
        (128, 0, 16),
        (306, 1, 39),
        (321, 1, 40),
        (128, 1, 16),
        (130, 1, 17),
    ],
)
def test_subsampled_labels_match_the_output_size(size, offset, cells):
    target = torch.zeros(2, size, size, dtype=torch.long)
    assert subsample_labels(target, offset=offset).shape == (2, cells, cells)


def test_subsampled_labels_start_at_the_offset():
    target = torch.arange(20 * 20).reshape(1, 20, 20)
    assert torch.equal(subsample_labels(target, offset=1)[0], target[0, 1::8, 1::8])
    for bad in (-1, 8, 1.0):
        with pytest.raises(ValueError, match=r"offset must be an int in \[0, 7\]"):
            subsample_labels(target, offset=bad)


def test_subsampled_labels_line_up_with_the_output_cell_centres():
    # a known pattern: every cell-centre pixel (8i, 8j) carries the label (i + j) % 5 + 1,
    # every other pixel is 0. Subsampling must return exactly the pattern.
    h = w = 8 * 6 + 1
    target = torch.zeros(1, h, w, dtype=torch.long)
    i, j = torch.meshgrid(torch.arange(7), torch.arange(7), indexing="ij")
    target[0, ::8, ::8] = (i + j) % 5 + 1
    assert torch.equal(subsample_labels(target)[0], (i + j) % 5 + 1)
    # and the network agrees: an impulse at pixel (8i, 8j) sent through three stride-2
    # 3x3 poolings with padding 1 (the LargeFOV poolings) peaks in output cell (i, j)
    for ci, cj in [(0, 0), (2, 5), (6, 6), (3, 1)]:
        impulse = torch.zeros(1, 1, h, w)
        impulse[0, 0, 8 * ci, 8 * cj] = 1.0
        out = impulse
        for _ in range(3):
            out = F.avg_pool2d(out, 3, stride=2, padding=1, count_include_pad=True)
        peak = divmod(int(out[0, 0].argmax()), out.shape[-1])
        assert out.shape[-2:] == (7, 7) and peak == (ci, cj)
        assert tuple(subsample_labels(impulse[0].long())[0].nonzero()[0].tolist()) == (ci, cj)
    with pytest.raises(TypeError, match="integer label tensor"):
        subsample_labels(target.float())
    with pytest.raises(ValueError, match=r"\(B, H, W\) or \(H, W\)"):
        subsample_labels(target[None])


def test_sbd_mat_reader_matches_scipys_writer():
    # tests/data/sbd_cls_*.mat were written by scipy.io.savemat (an independent writer), as an
    # SBD-like GTcls struct: Segmentation[i, j] = (7 i + 3 j) % 21 (13 x 17, uint8),
    # Boundaries a 20 x 1 cell of sparse logical matrices, CategoriesPresent a column
    from pathlib import Path

    from deeplab_edu.data.sbd import read_mat, read_sbd_mask

    i, j = np.mgrid[0:13, 0:17]
    for name in ("sbd_cls_compressed.mat", "sbd_cls_plain.mat"):
        path = Path(__file__).parent / "data" / name
        mask = read_sbd_mask(path)
        assert mask.dtype == np.uint8 and np.array_equal(mask, (7 * i + 3 * j) % 21)
        gt = read_mat(path)["GTcls"]
        assert len(gt["Boundaries"]) == 20 and gt["Boundaries"][0]["shape"] == (13, 17)
        assert gt["CategoriesPresent"].ravel().tolist() == list(range(1, 21))


def test_sbd_bad_files(tmp_path):
    from deeplab_edu.data.sbd import read_mat, read_sbd_mask

    (tmp_path / "x.mat").write_bytes(b"MATLAB 7.3 MAT-file, HDF5" + b"\0" * 200)
    with pytest.raises(ValueError, match=r"x\.mat: not a MATLAB v5"):
        read_mat(tmp_path / "x.mat")
    with pytest.raises(FileNotFoundError, match="MAT file not found"):
        read_mat(tmp_path / "missing.mat")
    good = (Path(__file__).parent / "data" / "sbd_cls_plain.mat").read_bytes()
    (tmp_path / "cut.mat").write_bytes(good[:300])
    with pytest.raises(ValueError, match=r"cut\.mat: "):
        read_sbd_mask(tmp_path / "cut.mat")


def test_train_aug_list_arithmetic_and_build(tmp_path):
    from deeplab_edu.data.sbd import build_train_aug, train_aug_ids

    # SBD train + SBD val + VOC train - VOC val
    ids = train_aug_ids(["a", "b", "c"], ["d", "v1"], ["b", "e"], ["v1", "v2"])
    assert ids == ["a", "b", "c", "d", "e"]
    voc = tmp_path / "VOC2012"
    ids_voc = _write_tree(voc, [(13, 17)] * 3)  # ids 2000_000000..2 with VOC masks
    lists = voc / "ImageSets" / "Segmentation"
    (lists / "val.txt").write_text(ids_voc[2] + "\n")
    (lists / "train.txt").write_text("\n".join(ids_voc[:2]) + "\n")
    sbd = tmp_path / "dataset"
    (sbd / "cls").mkdir(parents=True)
    extra = "2000_000009"  # only in SBD: its image exists in VOC's JPEGImages, no VOC mask
    Image.fromarray(np.zeros((13, 17, 3), np.uint8)).save(voc / "JPEGImages" / f"{extra}.jpg")
    mat = (Path(__file__).parent / "data" / "sbd_cls_compressed.mat").read_bytes()
    (sbd / "cls" / f"{extra}.mat").write_bytes(mat)
    (sbd / "train.txt").write_text(f"{extra}\n{ids_voc[2]}\n")  # the VOC val id must drop out
    (sbd / "val.txt").write_text(f"{ids_voc[0]}\n")
    build_train_aug(voc, sbd)
    ds = VOCSegmentation(voc, "train_aug")
    assert ds.ids == sorted([ids_voc[0], ids_voc[1], extra])
    i, j = np.mgrid[0:13, 0:17]
    assert np.array_equal(ds[ds.ids.index(extra)][1].numpy(), (7 * i + 3 * j) % 21)
    # VOC's own annotation (with its void row) wins over SBD's for ids that have one
    assert (ds[0][1][0] == IGNORE_INDEX).all()
    # an id that climbs out of its folder is refused before anything is written
    (sbd / "train.txt").write_text(f"{extra}\n../../../escaped\n")
    with pytest.raises(ValueError, match=r"train.txt, line 2: expected one image id"):
        build_train_aug(voc, sbd)
    assert not list(tmp_path.parent.glob("escaped*")) and not (tmp_path / "escaped.png").exists()


@pytest.mark.parametrize("name", ["DeepLab-LargeFOV", "DeepLab"])
def test_subsampled_labels_line_up_with_the_real_networks_cells(name):
    # The centre of output cell i of the network (centre of mass of its input gradient, with
    # equal positive weights and max-pooling replaced by average pooling of the same geometry so
    # that no tie picks a side) is input pixel 8 i with LargeFOV's 3x3 poolings, and 8 i + 0.5
    # with the plain DeepLab's released 2x2: subsample_labels picks pixel 8 i + label_offset,
    # the centre itself or (as the release's label_shrink with pad_beg -1) the pixel after it.
    from deeplab_edu.models import deeplab
    from deeplab_edu.models.field import first_centre

    model = deeplab(name, width=0.0625).eval()
    for parameter in model.parameters():
        parameter.data.fill_(0.01)
    for layer_name, layer in list(model.features.named_children()):
        if isinstance(layer, torch.nn.MaxPool2d):
            average = torch.nn.AvgPool2d(layer.kernel_size, layer.stride, layer.padding)
            setattr(model.features, layer_name, average)
    size = 8 * 80 + 1
    x = torch.ones(1, 3, size, size, requires_grad=True)
    scores = model(x)
    offset, centre = model.label_offset, first_centre(model.layers())
    assert (offset, centre) == ((0, 0.0) if name == "DeepLab-LargeFOV" else (1, 0.5))
    labels = subsample_labels(torch.zeros(1, size, size, dtype=torch.long), offset=offset)
    assert scores.shape[-2:] == labels.shape[-2:]
    for i in (30, 50):  # cells whose receptive field lies inside the image
        (grad,) = torch.autograd.grad(scores[0, :, i, i].sum(), x, retain_graph=True)
        weight = grad[0].sum(0)  # (H, W)
        rows = torch.arange(size, dtype=torch.float64)
        centre_y = float((weight.sum(1).double() * rows).sum() / weight.sum().double())
        centre_x = float((weight.sum(0).double() * rows).sum() / weight.sum().double())
        assert abs(centre_y - 8 * i - centre) < 1e-3 and abs(centre_x - 8 * i - centre) < 1e-3


@pytest.mark.gpu
def test_transforms_on_cuda(cuda_device):
    image = torch.randint(0, 256, (3, 20, 30), dtype=torch.uint8).to(cuda_device)
    target = torch.randint(0, 21, (20, 30)).to(cuda_device)
    x, y = TrainTransform(crop=24)(image, target)
    assert x.device.type == "cuda" and y.device.type == "cuda" and x.shape == (3, 24, 24)
    x, y = EvalTransform(pad_to=32)(image, target)
    assert torch.equal(denormalize(x)[:, :20, :30].cpu(), image.cpu())
    assert subsample_labels(y[None]).shape == (1, 4, 4)


def test_sixteen_bit_images_are_scaled_and_float_images_refused(tmp_path):
    from deeplab_edu.data.voc import read_image

    grey = np.array([[0, 32768], [65535, 257]], dtype=np.uint16)
    Image.fromarray(grey).save(tmp_path / "deep.png")  # a 16-bit grey PNG
    image = read_image(tmp_path / "deep.png")
    assert image.shape == (3, 2, 2) and image[0].tolist() == [[0, 128], [255, 1]]
    assert (image[0] == image[1]).all() and (image[1] == image[2]).all()
    Image.fromarray(np.full((2, 2), 0.5, np.float32)).save(tmp_path / "float.tiff")
    with pytest.raises(ValueError, match="floating-point image .* no fixed range"):
        read_image(tmp_path / "float.tiff")
