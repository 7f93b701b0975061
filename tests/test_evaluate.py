"""Evaluation on known predictions gives known numbers; padding is cropped away; the CRF runs."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from deeplab_edu.checkpoint import write_results
from deeplab_edu.crf.kernels import CRFParams
from deeplab_edu.evaluate import EvalConfig, evaluate
from deeplab_edu.inference import predict_probs

TARGET = torch.tensor([[0, 0, 0, 0], [0, 255, 255, 0], [1, 1, 1, 1], [1, 1, 2, 2]])
PRED = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 0], [1, 1, 1, 1], [0, 1, 2, 2]])


class Oracle(nn.Module):
    """A stand-in network whose ``predict`` returns confident scores for fixed label maps,
    looked up by the image's top-left pixel value (the image index)."""

    def __init__(self, labels: list[torch.Tensor]):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))  # gives the model a device
        self.labels = labels
        self.seen_sizes: list[tuple[int, int]] = []

    def predict(self, x: torch.Tensor) -> torch.Tensor:  # (1, 3, H', W') -> (1, C, H', W')
        self.seen_sizes.append(tuple(x.shape[-2:]))
        from deeplab_edu.data.transforms import denormalize

        index = int(denormalize(x[0])[0, 0, 0])
        labels = self.labels[index]
        scores = torch.zeros(1, 21, *x.shape[-2:])
        h, w = labels.shape
        scores[0, :, :h, :w] = 12.0 * nn.functional.one_hot(labels, 21).permute(2, 0, 1)
        return scores


def dataset(labels_and_targets):
    items = []
    for index, (_, target) in enumerate(labels_and_targets):
        image = torch.full((3, *target.shape), 40, dtype=torch.uint8)
        image[:, 0, 0] = index
        items.append((image, target))
    return items


def test_known_predictions_give_known_scores():
    model = Oracle([PRED])
    result = evaluate(
        model,
        dataset([(PRED, TARGET)]),
        EvalConfig(crf=None, pad_to=None, trimap_widths=(0, 1)),
        keep=[0],
        progress=False,
    )
    summary = result.summary
    # scored pixels: 14 (two are void). class 0: TP 4, FN 2, FP 1 -> 4/7;
    # class 1: TP 5, FN 1, FP 2 -> 5/8; class 2: TP 2 -> 1; the void pixel predicted 0 is free
    assert summary["miou"] == {"dcnn": pytest.approx((4 / 7 + 5 / 8 + 1) / 3)}
    assert summary["pixel_accuracy"]["dcnn"] == pytest.approx(11 / 14)
    per_class = summary["iou_per_class"]["dcnn"]
    assert per_class["background"] == pytest.approx(4 / 7) and per_class["cat"] is None
    # band of width 0 = the void pixels only: nothing scored; width 1: the 3x4 block around them
    trimap = summary["trimap"]["dcnn"]
    assert trimap["widths"] == [0, 1]
    assert trimap["pixel_accuracy"][1] == pytest.approx(8 / 10)
    assert torch.equal(result.dcnn[0], PRED.to(torch.uint8)) and result.crf == {}
    assert set(summary) >= {
        "config",
        "miou",
        "iou_per_class",
        "trimap",
        "seconds_per_image",
        "environment",
        "images",
    }


def test_padding_to_a_fixed_size_gives_the_same_scores():
    model = Oracle([PRED])
    native = evaluate(
        model, dataset([(PRED, TARGET)]), EvalConfig(crf=None, pad_to=None), progress=False
    )
    padded = evaluate(
        model, dataset([(PRED, TARGET)]), EvalConfig(crf=None, pad_to=9), progress=False
    )
    assert model.seen_sizes == [(4, 4), (9, 9)]
    assert padded.summary["miou"] == native.summary["miou"]
    probs = predict_probs(model, dataset([(PRED, TARGET)])[0][0], pad_to=9, device="cpu")
    assert probs.shape == (21, 4, 4)
    assert torch.allclose(probs.sum(0), torch.ones(4, 4))


def test_the_crf_keeps_confident_correct_labels_and_results_are_json(tmp_path):
    target = torch.zeros(24, 24, dtype=torch.int64)
    target[6:18, 6:18] = 8
    target[5, 5:19] = 255
    model = Oracle([target.clamp(max=20), target.clamp(max=20)])
    items = dataset([(None, target), (None, target)])
    result = evaluate(
        model,
        items,
        EvalConfig(crf=CRFParams(theta_alpha=10), pad_to=None, max_images=1, trimap_widths=(1, 3)),
        keep=[0, 1],
        progress=False,
    )
    assert result.summary["images"] == 1 and list(result.crf) == [0]
    assert result.summary["miou"] == {"dcnn": 1.0, "crf": 1.0}
    path = write_results(result.summary, tmp_path / "results.json")
    loaded = json.loads(path.read_text())
    assert loaded["config"]["crf"]["theta_alpha"] == 10
    assert loaded["trimap"]["crf"]["widths"] == [1, 3]
    with pytest.raises(ValueError, match="empty"):
        evaluate(model, [], EvalConfig(crf=None), progress=False)


def _band_scores_by_hand(preds, targets, width):
    """Pixel accuracy and mIoU in the band, from pixel-by-pixel windows (no pooling)."""
    matrix = torch.zeros(21, 21, dtype=torch.int64)
    for pred, target in zip(preds, targets, strict=True):
        height, width_px = target.shape
        for y in range(height):
            for x in range(width_px):
                rows = slice(max(0, y - width), y + width + 1)
                window = target[rows, max(0, x - width) : x + width + 1]
                if target[y, x] != 255 and (window == 255).any():
                    matrix[target[y, x], pred[y, x]] += 1
    iou = matrix.diagonal() / (matrix.sum(0) + matrix.sum(1) - matrix.diagonal())
    return float(matrix.diagonal().sum() / matrix.sum()), float(iou.nanmean())


def test_trimap_curves_are_counted_image_by_image_and_no_label_map_is_kept():
    generator = torch.Generator().manual_seed(0)
    preds, targets = [], []
    for height, width in ((9, 11), (12, 7), (10, 10), (6, 13)):  # sizes differ, as in VOC
        target = torch.randint(0, 4, (height, width), generator=generator)
        target[torch.rand(height, width, generator=generator) < 0.1] = 255
        pred = torch.where(
            torch.rand(height, width, generator=generator) < 0.7,
            target.clamp(max=3),
            torch.randint(0, 4, (height, width), generator=generator),
        )
        preds.append(pred)
        targets.append(target)
    widths = (0, 1, 2, 5)
    result = evaluate(
        Oracle(preds),
        dataset(list(zip(preds, targets, strict=True))),
        EvalConfig(crf=None, pad_to=None, trimap_widths=widths),
        progress=False,
    )
    assert result.targets == {} and result.dcnn == {}  # nothing per image is held
    trimap = result.summary["trimap"]["dcnn"]
    for position, width in enumerate(widths):
        accuracy, miou = _band_scores_by_hand(preds, targets, width)
        if width == 0:  # the band is the void pixels themselves: nothing is scored
            assert trimap["miou"][position] != trimap["miou"][position]  # NaN
            continue
        assert trimap["pixel_accuracy"][position] == pytest.approx(accuracy)
        assert trimap["miou"][position] == pytest.approx(miou)


def test_a_network_of_another_class_count_is_refused():
    class Wide(Oracle):
        def predict(self, x):
            scores = torch.zeros(1, 258, *x.shape[-2:])
            scores[0, 257] = 1.0  # class 257 would wrap to 1 (aeroplane) in a uint8 label map
            return scores

    data = dataset([(None, torch.zeros(8, 8, dtype=torch.int64))])
    with pytest.raises(ValueError, match="predicts 258 classes but the data set has 21"):
        evaluate(Wide([]), data, EvalConfig(crf=None, pad_to=None), progress=False)
