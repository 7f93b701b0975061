"""VOC metrics: a hand-worked example, exact agreement with torchmetrics, the trimap band, and
clear errors for bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchmetrics.classification import MulticlassConfusionMatrix, MulticlassJaccardIndex

from deeplab_edu.data.voc import IGNORE_INDEX, NUM_CLASSES, read_mask
from deeplab_edu.metrics import ConfusionMatrix, pixel_accuracy, trimap_band, trimap_curves

V = IGNORE_INDEX


def test_hand_worked_example():
    # rows of the matrix: truth 0, 1, 2; columns: prediction. Worked out on paper:
    # truth 0 -> pred [2, 1, 0]; truth 1 -> [0, 4, 1]; truth 2 -> [1, 0, 2]; void is skipped
    target = torch.tensor([[0, 0, 1, 1], [0, V, 1, 1], [2, 2, 2, 1]])
    pred = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 2], [2, 2, 0, 1]])
    cm = ConfusionMatrix(num_classes=3)
    cm.update(pred, target)
    assert cm.matrix.tolist() == [[2, 1, 0], [0, 4, 1], [1, 0, 2]]
    # IoU_c = TP / (TP + FP + FN): 2/4, 4/6, 2/4
    assert cm.iou().tolist() == pytest.approx([0.5, 2 / 3, 0.5])
    assert cm.miou() == pytest.approx(5 / 9)
    assert cm.pixel_accuracy() == pytest.approx(8 / 11)
    assert cm.mean_class_accuracy() == pytest.approx((2 / 3 + 4 / 5 + 2 / 3) / 3)
    assert pixel_accuracy(pred, target) == pytest.approx(8 / 11)  # one image, same count


def test_pixel_accuracy_of_one_image_refuses_all_void_and_other_shapes():
    with pytest.raises(ValueError, match="every pixel of target is void"):
        pixel_accuracy(torch.zeros(2, 2, dtype=torch.long), torch.full((2, 2), V))
    with pytest.raises(ValueError, match="same shape"):
        pixel_accuracy(torch.zeros(2, 2, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long))


def test_absent_class_is_left_out_of_the_mean():
    cm = ConfusionMatrix(num_classes=4)
    cm.update(torch.tensor([0, 1, 1, 0]), torch.tensor([0, 1, 0, 0]))
    iou = cm.iou()
    assert iou[:2].tolist() == pytest.approx([2 / 3, 1 / 2])
    assert torch.isnan(iou[2:]).all()  # classes 2 and 3: no pixel anywhere, IoU is 0/0
    assert cm.miou() == pytest.approx((2 / 3 + 1 / 2) / 2)
    # a class that is only predicted (a false positive) has IoU 0 and does count
    cm.update(torch.tensor([3]), torch.tensor([0]))
    assert cm.iou()[3] == 0 and cm.miou() == pytest.approx((2 / 4 + 1 / 2 + 0) / 3)


def test_accumulates_over_batches_and_resets():
    g = torch.Generator().manual_seed(0)
    pred = torch.randint(0, 5, (4, 16, 16), generator=g)
    target = torch.randint(0, 5, (4, 16, 16), generator=g)
    whole, parts = ConfusionMatrix(5), ConfusionMatrix(5)
    whole.update(pred, target)
    for p, t in zip(pred, target, strict=True):
        parts.update(p, t)
    assert torch.equal(whole.matrix, parts.matrix)
    assert int(whole.matrix.sum()) == pred.numel()
    whole.reset()
    assert int(whole.matrix.sum()) == 0


def _torchmetrics_miou(pred: torch.Tensor, target: torch.Tensor) -> tuple[float, torch.Tensor]:
    jaccard = MulticlassJaccardIndex(NUM_CLASSES, ignore_index=V, average="macro")
    confusion = MulticlassConfusionMatrix(NUM_CLASSES, ignore_index=V)
    return float(jaccard(pred, target)), confusion(pred, target)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_torchmetrics_on_random_labels(seed):
    g = torch.Generator().manual_seed(seed)
    # few classes present, so that absent classes and the exclusion rule are exercised
    present = torch.randperm(NUM_CLASSES, generator=g)[:7]
    target = present[torch.randint(0, 7, (3, 40, 50), generator=g)]
    target[torch.rand(target.shape, generator=g) < 0.1] = V
    pred = torch.where(
        torch.rand(target.shape, generator=g) < 0.6,
        target.clamp(max=NUM_CLASSES - 1),
        torch.randint(0, NUM_CLASSES, target.shape, generator=g),
    )
    ours = ConfusionMatrix()
    ours.update(pred, target)
    reference_miou, reference_matrix = _torchmetrics_miou(pred, target)
    assert torch.equal(ours.matrix, reference_matrix.long())
    assert abs(ours.miou() - reference_miou) < 1e-6


def test_agrees_with_torchmetrics_on_real_voc_masks(voc_sample):
    ours = ConfusionMatrix()
    preds, targets = [], []
    g = torch.Generator().manual_seed(0)
    for path in sorted((voc_sample / "SegmentationClass").glob("*.png")):
        target = torch.from_numpy(read_mask(path).astype(np.int64))
        # a plausible prediction: the truth shifted by a few pixels, voids filled, some noise
        pred = torch.roll(target, shifts=(3, -4), dims=(0, 1))
        pred = torch.where(pred == V, torch.zeros_like(pred), pred)
        noise = torch.rand(pred.shape, generator=g) < 0.02
        pred[noise] = torch.randint(0, NUM_CLASSES, (int(noise.sum()),), generator=g)
        ours.update(pred, target)
        preds.append(pred.flatten())
        targets.append(target.flatten())
    reference_miou, reference_matrix = _torchmetrics_miou(torch.cat(preds), torch.cat(targets))
    assert torch.equal(ours.matrix, reference_matrix.long())
    assert abs(ours.miou() - reference_miou) < 1e-6
    assert 0.3 < ours.miou() < 0.99


def test_bad_inputs_raise_clear_errors():
    cm = ConfusionMatrix()
    with pytest.raises(ValueError, match=r"same shape.*\(2, 3\).*\(3, 2\)"):
        cm.update(torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(TypeError, match="integer class indices, got torch.float32"):
        cm.update(torch.zeros(2, 2), torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(TypeError, match="target must hold integer"):
        cm.update(torch.zeros(2, 2, dtype=torch.long), torch.zeros(2, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"0\.\.20.*target values \[21\]"):
        cm.update(torch.zeros(2, dtype=torch.long), torch.tensor([21, 0]))
    with pytest.raises(ValueError, match=r"pred values \[-1\]"):
        cm.update(torch.tensor([-1, 0]), torch.tensor([1, 0]))
    with pytest.raises(ValueError, match=r"pred values \[255\]"):  # void is not a prediction
        cm.update(torch.tensor([255, 0]), torch.tensor([1, 0]))
    with pytest.raises(ValueError, match="no pixel has been counted"):
        ConfusionMatrix().miou()
    with pytest.raises(ValueError, match="ignore_index=3 is a real class"):
        ConfusionMatrix(5, ignore_index=3)
    assert int(cm.matrix.sum()) == 0  # nothing was counted by the failed updates


def test_trimap_band_is_a_square_dilation_of_void():
    target = torch.zeros(9, 9, dtype=torch.long)
    target[4, 4] = V
    band = trimap_band(target, 2)
    expected = torch.zeros(9, 9, dtype=torch.bool)
    expected[2:7, 2:7] = True
    assert torch.equal(band, expected)
    assert torch.equal(trimap_band(target, 0), target == V)
    batch = torch.stack([target, torch.zeros_like(target)])
    assert torch.equal(trimap_band(batch, 2), torch.stack([expected, torch.zeros_like(expected)]))
    with pytest.raises(ValueError, match="non-negative int, got -1"):
        trimap_band(target, -1)
    with pytest.raises(TypeError, match="integer label tensor"):
        trimap_band(target.float(), 1)


def test_trimap_curves_on_a_boundary_error():
    # a square object with a VOC-style void ring on its outline, predicted one pixel too large
    target = torch.zeros(40, 40, dtype=torch.long)
    target[10:30, 10:30] = 1
    ring = torch.zeros(40, 40, dtype=torch.bool)
    ring[9:31, 9:31] = True
    ring[11:29, 11:29] = False
    target_void = target.masked_fill(ring, V)
    pred = torch.zeros_like(target)
    pred[8:32, 8:32] = 1
    curves = trimap_curves([pred], [target_void], widths=[1, 2, 20])
    assert set(curves) == {1, 2, 20}
    # the wrong pixels (ring at distance 1 outside the void ring) are in every band
    errors = int(((pred != target) & (target_void != V)).sum())
    for w in (1, 2, 20):
        scored = curves[w]["pixels"]
        assert curves[w]["pixel_accuracy"] == pytest.approx(1 - errors / scored)
    assert curves[1]["pixel_accuracy"] < curves[2]["pixel_accuracy"] < curves[20]["pixel_accuracy"]
    full = ConfusionMatrix()
    full.update(pred, target_void)
    assert curves[20]["miou"] == pytest.approx(full.miou())  # the band covers the whole image
    empty = trimap_curves([pred], [target], widths=[3])  # no void: empty band
    assert empty[3]["pixels"] == 0 and math.isnan(empty[3]["miou"])


@pytest.mark.gpu
def test_metrics_on_cuda_match_cpu(cuda_device):
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, NUM_CLASSES, (2, 64, 64), generator=g)
    target[:, ::7] = V
    pred = torch.randint(0, NUM_CLASSES, (2, 64, 64), generator=g)
    cpu, gpu = ConfusionMatrix(), ConfusionMatrix()
    cpu.update(pred, target)
    gpu.update(pred.to(cuda_device), target.to(cuda_device))
    assert gpu.matrix.device.type == "cuda" and torch.equal(gpu.matrix.cpu(), cpu.matrix)
    assert gpu.miou() == pytest.approx(cpu.miou(), abs=1e-12)
    band = trimap_band(target.to(cuda_device), 3)
    assert torch.equal(band.cpu(), trimap_band(target, 3))
    curves = trimap_curves(pred.to(cuda_device), target.to(cuda_device), [2])
    assert curves[2]["miou"] == pytest.approx(trimap_curves(pred, target, [2])[2]["miou"])


def test_pixel_accuracy_follows_the_confusion_matrix_label_rule():
    target = torch.tensor([[0, 1], [2, V]])
    with pytest.raises(ValueError, match="labels must be class indices 0..20"):
        pixel_accuracy(torch.tensor([[0, 1], [300, 0]]), target)  # was scored as a wrong pixel
    with pytest.raises(ValueError, match="labels must be class indices"):
        pixel_accuracy(torch.tensor([[0, 1], [2, 0]]), torch.tensor([[0, 1], [-1, V]]))
    assert pixel_accuracy(torch.tensor([[0, 1], [1, 7]]), target) == pytest.approx(2 / 3)
