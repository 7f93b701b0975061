"""VOC evaluation from scratch: the confusion matrix, IoU and mean IoU, and the paper's boundary
("trimap") evaluation of Fig. 5.

Conventions: rows of the confusion matrix are ground-truth classes, columns are predictions.
Pixels labelled 255 (void) in the ground truth are never scored. The matrix is accumulated over
a whole data set and the scores are computed once at the end, as the VOC devkit does (a mean of
per-image IoUs would be a different, noisier number).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F

from deeplab_edu.data.voc import IGNORE_INDEX, NUM_CLASSES


def _check_labels(pred: torch.Tensor, target: torch.Tensor) -> None:
    for name, tensor in (("pred", pred), ("target", target)):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor of class indices, got {type(tensor)}")
        if tensor.dtype.is_floating_point or tensor.dtype.is_complex or tensor.dtype == torch.bool:
            raise TypeError(
                f"{name} must hold integer class indices, got {tensor.dtype} "
                "(take scores.argmax(dim=1) of the network's scores first)"
            )
    if pred.shape != target.shape:
        raise ValueError(
            f"pred and target must have the same shape, got pred {tuple(pred.shape)} and "
            f"target {tuple(target.shape)}"
        )


class ConfusionMatrix:
    """A ``num_classes x num_classes`` pixel count, rows = ground truth, columns = prediction.

    Args:
        num_classes: number of classes (21 for VOC).
        ignore_index: ground-truth label never scored (255, void).

    Example:
        >>> cm = ConfusionMatrix(3)
        >>> cm.update(torch.tensor([[0, 1], [2, 2]]), torch.tensor([[0, 1], [1, 255]]))
        >>> cm.matrix.tolist()
        [[1, 0, 0], [0, 1, 1], [0, 0, 0]]
    """

    def __init__(self, num_classes: int = NUM_CLASSES, ignore_index: int = IGNORE_INDEX) -> None:
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
        if 0 <= ignore_index < num_classes:
            raise ValueError(
                f"ignore_index={ignore_index} is a real class (0..{num_classes - 1}); "
                "choose a value outside that range (VOC: 255)"
            )
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def reset(self) -> None:
        """Forget every pixel counted so far."""
        self.matrix = torch.zeros_like(self.matrix)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Count one batch.

        Args:
            pred: predicted class indices, any integer dtype and shape, e.g. ``(B, H, W)``.
            target: ground truth of the same shape: 0..num_classes-1 or ``ignore_index``.

        Raises:
            TypeError: if either tensor holds floating-point (or boolean) values.
            ValueError: on a shape mismatch, or a label outside 0..num_classes-1 (and, for
                ``target``, the ignore index).
        """
        _check_labels(pred, target)
        c = self.num_classes
        pred = pred.reshape(-1).long()
        target = target.reshape(-1).to(pred.device).long()
        valid = target != self.ignore_index
        if pred.numel():
            self._check_range(pred, torch.where(valid, target, 0))
        # void pixels go to an extra bin c*c that is dropped: no boolean compaction needed
        index = torch.where(valid, target * c + pred, c * c)  # (N,)
        counts = torch.bincount(index, minlength=c * c + 1)[: c * c].reshape(c, c)
        self.matrix = self.matrix.to(counts.device) + counts

    def _check_range(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        c = self.num_classes
        (p_min, p_max), (t_min, t_max) = torch.aminmax(pred), torch.aminmax(target)
        if min(int(p_min), int(t_min)) >= 0 and max(int(p_max), int(t_max)) < c:
            return
        bad_pred = torch.unique(pred[(pred < 0) | (pred >= c)])[:10].tolist()
        bad_target = torch.unique(target[(target < 0) | (target >= c)])[:10].tolist()
        raise ValueError(
            f"labels must be class indices 0..{c - 1} (target may also be the ignore index "
            f"{self.ignore_index}); found pred values {bad_pred} and target values {bad_target}"
        )

    def iou(self) -> torch.Tensor:
        r"""Per-class intersection over union, ``(num_classes,)`` float64; NaN for a class that
        is absent from both the ground truth and the predictions (its IoU is 0/0)."""
        m = self.matrix.double()
        tp = m.diagonal()
        # $\mathrm{IoU}_c = \frac{TP_c}{TP_c + FP_c + FN_c}$
        union = m.sum(0) + m.sum(1) - tp
        return torch.where(union > 0, tp / union.clamp(min=1), torch.nan)

    def miou(self) -> float:
        r"""Mean IoU over the classes whose IoU is defined (the paper's metric).

        A class with no ground-truth pixel and no predicted pixel in the whole evaluated set has
        no IoU (0/0); it is left out of the mean rather than counted as 0 or 1, so that scoring
        a subset without, say, a single cow neither punishes nor rewards the model for cows. On
        the full VOC val set every class is present, so this equals the devkit's plain mean.
        """
        values = self.iou()
        if torch.isnan(values).all():
            raise ValueError("no pixel has been counted: call update() with non-void pixels first")
        return float(values.nanmean())

    def pixel_accuracy(self) -> float:
        """Fraction of scored (non-void) pixels whose prediction is right."""
        total = self.matrix.sum()
        if total == 0:
            raise ValueError("no pixel has been counted: call update() with non-void pixels first")
        return float(self.matrix.diagonal().sum().double() / total.double())

    def class_accuracy(self) -> torch.Tensor:
        """Per-class recall ``TP / (TP + FN)``, NaN for classes absent from the ground truth."""
        m = self.matrix.double()
        support = m.sum(1)
        return torch.where(support > 0, m.diagonal() / support.clamp(min=1), torch.nan)

    def mean_class_accuracy(self) -> float:
        """Mean of :meth:`class_accuracy` over the classes present in the ground truth."""
        values = self.class_accuracy()
        if torch.isnan(values).all():
            raise ValueError("no pixel has been counted: call update() with non-void pixels first")
        return float(values.nanmean())

    def __repr__(self) -> str:
        return f"ConfusionMatrix(num_classes={self.num_classes}, pixels={int(self.matrix.sum())})"


def pixel_accuracy(
    pred: torch.Tensor,
    target: torch.Tensor,
    ignore_index: int = IGNORE_INDEX,
    num_classes: int = NUM_CLASSES,
) -> float:
    """Fraction of the non-void pixels of one labelling that are right (for a data set,
    accumulate a :class:`ConfusionMatrix` instead). It counts through a ``ConfusionMatrix``, so
    labels follow the same rule: class indices 0..num_classes-1, and ``ignore_index`` in target.

    Raises:
        ValueError: if the shapes differ, a label is out of range, or every pixel of ``target``
            is void.
    """
    _check_labels(pred, target)
    if not (target != ignore_index).any():
        raise ValueError("every pixel of target is void: there is nothing to score")
    matrix = ConfusionMatrix(num_classes, ignore_index)
    matrix.update(pred, target)
    return matrix.pixel_accuracy()


def trimap_band(target: torch.Tensor, width: int, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """The paper's boundary band (Fig. 5): pixels within ``width`` pixels of a void pixel.

    VOC draws a void band along every object outline, so "near a void pixel" means "near an
    object boundary". Distance is the chessboard distance (a ``(2w+1) x (2w+1)`` square
    dilation of the void mask). The band includes the void pixels themselves; they are still
    never scored.

    Args:
        target: ``(H, W)`` or ``(B, H, W)`` integer labels.
        width: band half-width in pixels, a non-negative int (any: from the image's side on,
            the band is every pixel of an image with a void pixel).
        ignore_index: the void label.

    Returns:
        A bool tensor of the same shape as ``target``.

    Raises:
        TypeError: for floating-point labels; ValueError: for a bad shape or width.
    """
    if not isinstance(target, torch.Tensor) or target.dtype.is_floating_point:
        got = target.dtype if isinstance(target, torch.Tensor) else type(target).__name__
        raise TypeError(f"expected an integer label tensor, got {got}")
    if target.ndim not in (2, 3):
        raise ValueError(f"expected labels (H, W) or (B, H, W), got {tuple(target.shape)}")
    if not isinstance(width, int) or isinstance(width, bool) or width < 0:
        raise ValueError(f"width must be a non-negative int, got {width!r}")
    void = (target == ignore_index).float()
    batch = void if target.ndim == 3 else void[None]  # (B, H, W)
    if width >= max(batch.shape[1:]) - 1:  # the band reaches every pixel from any void pixel
        band = batch.amax(dim=(1, 2), keepdim=True).expand_as(batch)
    else:  # (a wider pooling window would only cost time, and overflow for huge widths)
        band = F.max_pool2d(batch[:, None], 2 * width + 1, stride=1, padding=width)[:, 0]
    return (band > 0).reshape(target.shape)


class TrimapCounts:
    """Confusion counts inside the boundary band, one matrix per band width, accumulated image by
    image: the memory of the paper's Fig. 5 curves does not grow with the number of images.

    Args:
        widths: band widths in pixels, e.g. ``range(1, 41)``.
        num_classes: number of classes (21 for VOC).
        ignore_index: the void label, which defines the band and is never scored.

    Raises:
        ValueError: if ``widths`` is empty.
    """

    def __init__(
        self,
        widths: Iterable[int],
        num_classes: int = NUM_CLASSES,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        self.widths = list(widths)
        if not self.widths:
            raise ValueError("widths must name at least one band width")
        self.ignore_index = ignore_index
        self.matrices = {w: ConfusionMatrix(num_classes, ignore_index) for w in self.widths}

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Count one image's (or batch's) band pixels; void pixels are never counted."""
        _check_labels(pred, target)
        void = torch.full_like(target, self.ignore_index)
        for w, matrix in self.matrices.items():
            # the target outside the band becomes void, so only band pixels are scored
            band = trimap_band(target, w, self.ignore_index)
            matrix.update(pred, torch.where(band, target, void))

    def curves(self) -> dict[int, dict[str, float]]:
        """``{width: {"pixel_accuracy", "miou", "pixels"}}`` of everything counted so far;
        ``pixels`` is the number of scored band pixels, and an empty band gives NaN scores."""
        curves = {}
        for w, matrix in self.matrices.items():
            pixels = int(matrix.matrix.sum())
            curves[w] = {
                "pixel_accuracy": matrix.pixel_accuracy() if pixels else float("nan"),
                "miou": matrix.miou() if pixels else float("nan"),
                "pixels": pixels,
            }
        return curves


def trimap_curves(
    preds: Iterable[torch.Tensor] | torch.Tensor,
    targets: Iterable[torch.Tensor] | torch.Tensor,
    widths: Sequence[int],
    num_classes: int = NUM_CLASSES,
    ignore_index: int = IGNORE_INDEX,
) -> dict[int, dict[str, float]]:
    """Pixel accuracy and mean IoU restricted to the boundary band, per band width (Fig. 5b-c),
    of predictions held in memory (:class:`TrimapCounts` counts them one at a time).

    Args:
        preds: predicted labels, one ``(H, W)`` tensor per image (sizes may differ) or a batch.
        targets: the ground truths, matching ``preds``.
        widths: band widths in pixels, e.g. ``range(1, 41)``.

    Returns:
        ``{width: {"pixel_accuracy": float, "miou": float, "pixels": int}}``; ``pixels`` is the
        number of scored pixels in the band. A width whose band holds no scored pixel gets NaN.

    Raises:
        ValueError: if the numbers of predictions and targets differ, or widths is empty.
    """
    preds, targets = list(preds), list(targets)
    if len(preds) != len(targets):
        raise ValueError(f"got {len(preds)} predictions but {len(targets)} targets")
    counts = TrimapCounts(widths, num_classes, ignore_index)
    for pred, target in zip(preds, targets, strict=True):
        counts.update(pred, target)
    return counts.curves()
