"""Graded exercises: checkers that hold a student's function to the package's own.

Each core chapter asks the reader to write one of the package's central functions. The checker
runs the student's version and the package's on random and edge-case inputs and reports the
first case where they differ: the shape, the values (where and by how much), the gradient, or
an exception, with the inputs that produced it. It never prints the package's code.

In a notebook::

    from deeplab_edu.exercises import check
    check("atrous.conv2d", my_atrous_conv2d)   # prints and returns a Report

To grade a submission (a Python file defining some of the functions named in
:data:`EXERCISES`): ``python -m deeplab_edu grade submission.py``.
"""

from __future__ import annotations

import math
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from deeplab_edu.crf.lattice_build import elevate
from deeplab_edu.crf.meanfield import PairwiseMessage, iterate
from deeplab_edu.crf.naive import NaiveFilter
from deeplab_edu.data.transforms import subsample_labels
from deeplab_edu.data.voc import IGNORE_INDEX
from deeplab_edu.metrics import ConfusionMatrix
from deeplab_edu.models.atrous import atrous_conv2d
from deeplab_edu.models.deeplab import upsample_scores
from deeplab_edu.models.field import OUTPUT_STRIDE, score_cells
from deeplab_edu.train import segmentation_loss


class Mismatch(Exception):
    """The student's function disagrees with the package's on one case (the message says how)."""


@dataclass(frozen=True)
class Report:
    """The outcome of one check.

    Attributes:
        exercise: the exercise's name (a key of :data:`EXERCISES`).
        passed: every case agreed.
        cases: the number of cases that agreed (all of them if ``passed``).
        total: the number of cases the checker has.
        message: what was checked, or the first difference and the case that showed it.
    """

    exercise: str
    passed: bool
    cases: int
    total: int
    message: str

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        verdict = "passed" if self.passed else "not yet"
        return f"{self.exercise}: {verdict} ({self.cases}/{self.total} cases). {self.message}"


@dataclass(frozen=True)
class Exercise:
    """One graded exercise.

    Attributes:
        name: ``"<chapter>.<task>"``.
        function: the name the student's function has in a graded submission.
        signature: how the checker calls it, and what it must return.
        cases: yields ``(description, run)``; ``run(fn)`` raises :class:`Mismatch` on a
            difference.
    """

    name: str
    function: str
    signature: str
    cases: Callable[[], Iterator[tuple[str, Callable[[Callable], None]]]]


# ---------------------------------------------------------------------------------------------
# comparisons that explain themselves


def _same(got: object, expected: torch.Tensor, what: str, atol: float = 1e-5) -> None:
    """Raise :class:`Mismatch` naming the first way ``got`` differs from ``expected``."""
    if not isinstance(got, torch.Tensor):
        raise Mismatch(f"{what}: expected a torch.Tensor, got {type(got).__name__}")
    if got.shape != expected.shape:
        raise Mismatch(f"{what}: expected shape {tuple(expected.shape)}, got {tuple(got.shape)}")
    if expected.dtype.is_floating_point != got.dtype.is_floating_point:
        raise Mismatch(f"{what}: expected a tensor of dtype {expected.dtype}, got {got.dtype}")
    got, expected = got.detach().cpu(), expected.detach().cpu()
    if expected.dtype.is_floating_point:
        if not torch.isfinite(got).all():
            index = tuple(torch.nonzero(~torch.isfinite(got))[0].tolist())
            raise Mismatch(f"{what}: not finite at index {index} ({got[index].item()})")
        error = (got.double() - expected.double()).abs()
        bad = error > atol + 1e-4 * expected.double().abs()
    else:
        bad = got != expected
    if bad.any():
        index = tuple(torch.nonzero(bad)[0].tolist())
        count, total = int(bad.sum()), bad.numel()
        raise Mismatch(
            f"{what}: {count} of {total} values differ; the first at index {index}: expected "
            f"{expected[index].item():.6g}, got {got[index].item():.6g}"
        )


def _gradients(fn: Callable, reference: Callable, inputs: list[torch.Tensor], what: str) -> None:
    """Compare the gradients of a random projection of both outputs w.r.t. ``inputs`` (float)."""

    def leaves() -> list[torch.Tensor]:
        return [x.detach().clone().requires_grad_(x.dtype.is_floating_point) for x in inputs]

    mine = leaves()
    expected_out = reference(*mine)
    # a fixed random projection, from a generator of its own (the reader's RNG is left alone)
    weights = torch.randn(expected_out.shape, generator=_generator(7), dtype=expected_out.dtype)
    expected = torch.autograd.grad((expected_out * weights).sum(), mine)
    theirs = leaves()
    out = fn(*theirs)
    if not isinstance(out, torch.Tensor) or not out.requires_grad:
        raise Mismatch(
            f"{what}: the result carries no gradient. Use differentiable tensor operations "
            "(no .detach(), .numpy(), .item() or in-place writes into a new tensor without grad)"
        )
    got = torch.autograd.grad((out * weights).sum(), theirs, allow_unused=True)
    for i, (g, e) in enumerate(zip(got, expected, strict=True)):
        name = f"argument {i + 1}"
        if g is None:
            raise Mismatch(f"{what}: the result does not depend on {name}")
        _same(g, e, f"{what}, gradient w.r.t. {name}", atol=1e-4)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------
# the exercises, one per core chapter


def _subsample_cases() -> Iterator[tuple[str, Callable[[Callable], None]]]:
    g = _generator(0)
    for batch, height, width in ((1, 17, 17), (2, 33, 41), (1, 20, 30), (3, 8, 9), (1, 1, 1)):
        target = torch.randint(0, 21, (batch, height, width), generator=g)
        target[:, ::3, ::2] = IGNORE_INDEX  # void pixels, some at cell centres

        def run(fn: Callable, target: torch.Tensor = target) -> None:
            got = fn(target.clone())
            expected = subsample_labels(target)
            if isinstance(got, torch.Tensor) and got.shape != expected.shape:
                raise Mismatch(
                    f"labels of shape {tuple(target.shape)}: expected {tuple(expected.shape)} "
                    f"(one label per stride-{OUTPUT_STRIDE} output cell), got {tuple(got.shape)}"
                )
            if isinstance(got, torch.Tensor) and got.dtype != target.dtype:
                raise Mismatch(f"labels must keep their dtype {target.dtype}, got {got.dtype}")
            _same(got, expected, f"labels of shape {tuple(target.shape)}")

        yield f"a {batch}x{height}x{width} label map", run


def _conv_cases() -> Iterator[tuple[str, Callable[[Callable], None]]]:
    g = _generator(1)
    for c_in, c_out, size, kernel, rate in (
        (1, 1, 9, 3, 1),
        (2, 3, 12, 3, 2),
        (3, 2, 17, 3, 4),
        (2, 2, 10, 1, 3),
        (1, 2, 11, 2, 3),
        (2, 1, (9, 14), 3, 2),
    ):
        h, w = size if isinstance(size, tuple) else (size, size)
        x = torch.randn(2, c_in, h, w, generator=g)
        weight = torch.randn(c_out, c_in, kernel, kernel, generator=g)

        def run(
            fn: Callable, x: torch.Tensor = x, weight: torch.Tensor = weight, rate: int = rate
        ) -> None:
            def reference(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
                return atrous_conv2d(x, weight, rate=rate, padding=0)

            what = f"input {tuple(x.shape)}, kernel {tuple(weight.shape)}, rate {rate}"
            _same(fn(x.clone(), weight.clone(), rate), reference(x, weight), what, atol=1e-4)
            _gradients(lambda a, b: fn(a, b, rate), reference, [x, weight], what)

        yield f"{kernel}x{kernel} kernel at rate {rate}", run


def _upsample_cases() -> Iterator[tuple[str, Callable[[Callable], None]]]:
    g = _generator(2)
    for height, width in ((17, 17), (9, 16), (128, 128), (41, 57), (1, 1), (24, 33)):
        cells = (score_cells(height), score_cells(width))
        scores = torch.randn(2, 3, *cells, generator=g)

        def run(
            fn: Callable, scores: torch.Tensor = scores, size: tuple[int, int] = (height, width)
        ) -> None:
            expected = upsample_scores(scores, size)
            got = fn(scores.clone(), size)
            what = f"scores {tuple(scores.shape)} to {size[0]}x{size[1]} pixels"
            if isinstance(got, torch.Tensor) and got.shape == expected.shape:
                centres = got[..., ::OUTPUT_STRIDE, ::OUTPUT_STRIDE]
                _same(centres, scores, f"{what}: pixel (8i, 8j) should carry cell (i, j)")
            _same(got, expected, what)
            _gradients(lambda s: fn(s, size), lambda s: upsample_scores(s, size), [scores], what)

        yield f"{height}x{width} pixels", run


def _loss_cases() -> Iterator[tuple[str, Callable[[Callable], None]]]:
    g = _generator(3)
    for batch, classes, side, void in ((2, 5, 17, 0.0), (1, 21, 33, 0.3), (2, 3, 9, 1.0)):
        cells = score_cells(side)
        scores = torch.randn(batch, classes, cells, cells, generator=g)
        target = torch.randint(0, classes, (batch, side, side), generator=g)
        target[torch.rand(target.shape, generator=g) < void] = IGNORE_INDEX

        def run(
            fn: Callable,
            scores: torch.Tensor = scores,
            target: torch.Tensor = target,
            void: float = void,
        ) -> None:
            what = f"scores {tuple(scores.shape)}, labels {tuple(target.shape)}"
            if void == 1.0:
                what += " (every label void)"
            got = fn(scores.clone(), target.clone())
            expected = segmentation_loss(scores, target)
            if isinstance(got, torch.Tensor) and got.ndim != 0:
                raise Mismatch(
                    f"{what}: the loss must be one number (0-d), got shape {tuple(got.shape)}"
                )
            _same(got, expected, what)
            _gradients(
                lambda s: fn(s, target), lambda s: segmentation_loss(s, target), [scores], what
            )

        yield f"batch {batch} of {side}x{side} crops, {classes} classes, {void:.0%} void", run


def _miou_cases() -> Iterator[tuple[str, Callable[[Callable], None]]]:
    g = _generator(4)
    small = [
        ([0, 0, 1, 1], [0, 1, 1, 2], 3),  # a class predicted but never true
        ([0, 0, 2, 2], [0, 0, 2, 0], 3),  # a class absent from both: left out of the mean
        ([1, IGNORE_INDEX, 0, 1], [1, 0, 0, 0], 2),  # a void pixel is not scored
    ]
    for truth, pred, classes in small:
        yield (
            f"truth {truth}, prediction {pred}",
            _miou_run(torch.tensor(truth), torch.tensor(pred), classes),
        )
    for classes in (2, 21):
        labels = torch.randint(0, classes, (500,), generator=g)
        labels[torch.rand(500, generator=g) < 0.1] = IGNORE_INDEX
        guess = torch.randint(0, classes, (500,), generator=g)
        yield f"500 random pixels, {classes} classes", _miou_run(labels, guess, classes)


def _miou_run(truth: torch.Tensor, pred: torch.Tensor, classes: int) -> Callable[[Callable], None]:
    def run(fn: Callable) -> None:
        matrix = ConfusionMatrix(classes)
        matrix.update(pred, truth)
        expected = matrix.miou()
        got = fn(pred.clone(), truth.clone(), classes)
        shown = (
            f"truth {truth.tolist()}, prediction {pred.tolist()}"
            if truth.numel() < 10
            else f"{truth.numel()} random pixels"
        )
        what = f"{shown}, {classes} classes"
        if isinstance(got, torch.Tensor) and got.numel() == 1:
            got = got.item()
        if not isinstance(got, int | float):
            raise Mismatch(f"{what}: expected a number (float), got {type(got).__name__}")
        if not math.isclose(got, expected, abs_tol=1e-6):
            raise Mismatch(f"{what}: expected mean IoU {expected:.6f}, got {got:.6f}")

    return run


def _mean_field_cases() -> Iterator[tuple[str, Callable[[Callable], None]]]:
    g = _generator(5)
    for points, classes, iterations in ((30, 2, 0), (30, 3, 1), (60, 5, 5), (60, 21, 10)):
        positions = torch.rand(points, 2, generator=g) * 4
        colours = torch.rand(points, 3, generator=g) * 3
        filters = [NaiveFilter(torch.cat([positions, colours], 1)), NaiveFilter(positions)]
        message = PairwiseMessage(filters, [4.0, 3.0], "after", exclude_self=True)
        unary = -torch.log_softmax(torch.randn(points, classes, generator=g) * 2, dim=1)

        def run(
            fn: Callable,
            unary: torch.Tensor = unary,
            message: PairwiseMessage = message,
            iterations: int = iterations,
        ) -> None:
            what = f"{unary.shape[0]} points, {unary.shape[1]} labels, {iterations} updates"
            got = fn(unary.clone(), message, iterations)
            if isinstance(got, torch.Tensor) and got.shape == unary.shape:
                sums = got.sum(1)
                if not torch.allclose(sums, torch.ones_like(sums), atol=1e-4):
                    raise Mismatch(
                        f"{what}: each row of Q is a distribution and must sum to 1, "
                        f"row 0 sums to {sums[0].item():.4f}"
                    )
            if iterations == 0:
                what = f"{what} (no update: Q is the initialisation)"
            _same(got, iterate(unary, message, iterations)[0], what)

        yield f"{points} points, {classes} labels, {iterations} updates", run


def _elevate_cases() -> Iterator[tuple[str, Callable[[Callable], None]]]:
    g = _generator(6)
    for points, dim in ((10, 1), (40, 2), (40, 3), (25, 5)):
        features = torch.randn(points, dim, generator=g) * 3

        def run(fn: Callable, features: torch.Tensor = features) -> None:
            d = features.shape[1]
            what = f"{features.shape[0]} points in d = {d}"
            got = fn(features.clone())
            expected = elevate(features)
            if isinstance(got, torch.Tensor) and got.shape == expected.shape:
                sums = got.sum(1).abs()
                if sums.max() > 1e-3 * (1 + got.abs().max()):
                    raise Mismatch(
                        f"{what}: the points must lie on the plane sum(y) = 0; point "
                        f"{int(sums.argmax())} sums to {got.sum(1)[sums.argmax()]:.4g}"
                    )
                ratio = torch.cdist(got.double(), got.double())[0, 1:] / torch.cdist(
                    features.double(), features.double()
                )[0, 1:].clamp_min(1e-12)
                scale = math.sqrt(2 / 3) * (d + 1)
                if not torch.allclose(ratio, torch.full_like(ratio, scale), rtol=1e-3):
                    raise Mismatch(
                        f"{what}: distances must all grow by the same factor sqrt(2/3)(d+1) = "
                        f"{scale:.4f}; between points 0 and 1 they grew by {ratio[0]:.4f}"
                    )
            _same(
                got, expected, f"{what} (the lattice's own basis E and coordinate order)", atol=1e-4
            )

        yield f"{points} points in d = {dim}", run


EXERCISES: dict[str, Exercise] = {
    e.name: e
    for e in (
        Exercise(
            "data.subsample_labels",
            "subsample_labels",
            "subsample_labels(target (B, H, W) int64) -> (B, h, w) labels at stride 8",
            _subsample_cases,
        ),
        Exercise(
            "atrous.conv2d",
            "atrous_conv2d",
            "atrous_conv2d(x (B, C_in, H, W), weight (C_out, C_in, k, k), rate) -> "
            "(B, C_out, H - r(k-1), W - r(k-1)), no padding, without conv's dilation=",
            _conv_cases,
        ),
        Exercise(
            "network.upsample_scores",
            "upsample_scores",
            "upsample_scores(scores (B, C, h, w), size (H, W)) -> (B, C, H, W)",
            _upsample_cases,
        ),
        Exercise(
            "training.segmentation_loss",
            "segmentation_loss",
            "segmentation_loss(scores (B, C, h, w), target (B, H, W)) -> 0-d loss",
            _loss_cases,
        ),
        Exercise(
            "metrics.mean_iou",
            "mean_iou",
            "mean_iou(pred (N,), target (N,), num_classes) -> float, void (255) ignored",
            _miou_cases,
        ),
        Exercise(
            "crf.mean_field",
            "mean_field",
            "mean_field(unary (N, C), message, iterations) -> Q (N, C), message(Q) -> (N, C)",
            _mean_field_cases,
        ),
        Exercise(
            "permutohedral.elevate",
            "elevate",
            "elevate(features (N, d)) -> (N, d + 1) points on the plane sum(y) = 0",
            _elevate_cases,
        ),
    )
}


def check(exercise: str, fn: Callable, *, verbose: bool = True) -> Report:
    """Run the checker of ``exercise`` on the student's ``fn``.

    Args:
        exercise: a key of :data:`EXERCISES` (e.g. ``"atrous.conv2d"``).
        fn: the student's function, with the exercise's signature.
        verbose: print the report.

    Returns:
        A :class:`Report` (true when every case passed).

    Raises:
        KeyError: if there is no such exercise.
        TypeError: if ``fn`` is not callable.
    """
    if exercise not in EXERCISES:
        raise KeyError(f"no exercise {exercise!r}; the exercises are {sorted(EXERCISES)}")
    if not callable(fn):
        raise TypeError(f"expected the function to check, got {type(fn).__name__}")
    spec = EXERCISES[exercise]
    cases = list(spec.cases())
    passed, message = 0, ""
    for description, run in cases:
        try:
            run(fn)
        except Mismatch as error:
            message = f"Case {passed + 1}: {error}"
            break
        except NotImplementedError:
            message = f"Not attempted yet: write {spec.signature}."
            break
        except Exception as error:  # noqa: BLE001 - the student's code: report, never crash
            where = _student_line(error, fn)
            message = (
                f"Case {passed + 1} ({description}): your function raised "
                f"{type(error).__name__}: {error}{where}"
            )
            break
        passed += 1
    else:
        message = "Every case agrees with the package's function."
    report = Report(exercise, passed == len(cases), passed, len(cases), message)
    if verbose:
        print(report)
    return report


def _student_line(error: Exception, fn: Callable) -> str:
    """`` (line N of your function)`` for the deepest frame in the student's function, if any."""
    code = getattr(fn, "__code__", None)
    if code is None:
        return ""
    lines = [
        frame.lineno - code.co_firstlineno + 1
        for frame in traceback.extract_tb(error.__traceback__)
        if frame.filename == code.co_filename and frame.lineno is not None
    ]
    return f" (line {lines[-1]} of your function)" if lines else ""
