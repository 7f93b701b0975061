"""Graded exercises: checkers that hold a student's function to the package's own.

Each core chapter asks the reader to write one of the package's central functions. The checker
calls the student's version on random and edge-case inputs (:class:`Case`), compares what it
returned (and, where it matters, its gradients) with the package's function on the same inputs,
and reports the first case where they differ: the shape, the values (where and by how much), the
gradient, or an exception, with the inputs that produced it. It never prints the package's code.

While the student's function runs, the package's own answer to the exercise is switched off:
calling it, however the call reaches it (an import under another name, another package
function that uses it), fails the exercise with a message saying so. An exercise's stated rule
(e.g. no ``dilation=`` anywhere) is enforced the same way (:class:`Rule`).

Calling the student's function (:func:`attempt`) and judging what it returned (:func:`judge`)
are apart, so that the class grader (:mod:`deeplab_edu.grading`) can run the first in the
submission's own process and the second in its own.

In a notebook::

    from deeplab_edu.exercises import check
    check("atrous.conv2d", my_atrous_conv2d)   # prints and returns a Report

To grade submissions (Python files or the students' notebooks):
``python -m deeplab_edu grade PATH...``.
"""

from __future__ import annotations

import ast
import contextlib
import inspect
import math
import sys
import textwrap
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from types import CodeType, FrameType

import torch
from torch._ops import OpOverload
from torch.utils._python_dispatch import TorchDispatchMode

from deeplab_edu.crf import meanfield
from deeplab_edu.crf.lattice_build import elevate
from deeplab_edu.crf.meanfield import PairwiseMessage, iterate
from deeplab_edu.crf.naive import NaiveFilter
from deeplab_edu.data.transforms import subsample_labels
from deeplab_edu.data.voc import IGNORE_INDEX
from deeplab_edu.metrics import ConfusionMatrix
from deeplab_edu.models import atrous
from deeplab_edu.models.deeplab import upsample_scores
from deeplab_edu.models.field import OUTPUT_STRIDE, score_cells
from deeplab_edu.train import segmentation_loss


class Mismatch(Exception):
    """The student's function disagrees with the package's on one case (the message says how)."""


class Refused(BaseException):
    """Raised inside the student's function when it calls what the exercise forbids.

    A ``BaseException``, so that an ``except Exception`` in the student's code does not hide it.
    """


@dataclass(frozen=True)
class Report:
    """The outcome of one check.

    Attributes:
        exercise: the exercise's name (a key of :data:`EXERCISES`).
        passed: every case agreed.
        cases: the number of cases that agreed (all of them if ``passed``).
        total: the number of cases the checker has.
        message: what was checked, or the first difference and the case that showed it.
        failed_case: the description of the first case that did not agree ("" if none).
    """

    exercise: str
    passed: bool
    cases: int
    total: int
    message: str
    failed_case: str = ""

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        verdict = "passed" if self.passed else "not yet"
        return f"{self.exercise}: {verdict} ({self.cases}/{self.total} cases). {self.message}"


@dataclass(frozen=True)
class Case:
    """One input on which the student's function is compared with the package's.

    Attributes:
        description: what the case is, for the report.
        args: the student's function is called as ``fn(*args)`` (tensors are cloned first).
        reference: the package's function, called the same way.
        judge: ``judge(got, expected)`` raises :class:`Mismatch` if ``got`` is wrong.
        grad: the positions of the arguments whose gradients are compared (none: values only).
    """

    description: str
    args: tuple
    reference: Callable
    judge: Callable[..., None]
    grad: tuple[int, ...] = ()


@dataclass(frozen=True)
class Attempt:
    """What the student's function did on one case.

    Attributes:
        value: what it returned, if a tensor (detached, on the CPU) or a number, else None.
        kind: the type name of what it returned.
        gradients: for each argument in ``Case.grad``, the gradient of a fixed random projection
            of the result (None where the result does not depend on it); None if the result
            carries no gradient or none was asked for.
        problem: why there is no value: an exception, a refused call, a broken rule; else None.
    """

    value: object
    kind: str
    gradients: list[torch.Tensor | None] | None = None
    problem: str | None = None


@dataclass(frozen=True)
class Rule:
    """A rule an exercise states, enforced while the student's function runs.

    Attributes:
        text: the rule as the exercise states it.
        functions: the package's functions that the rule forbids calling.
        argument: an argument that no PyTorch operation may receive with a value other than 1,
            nor any call in the function's source (e.g. ``"dilation"``).
    """

    text: str
    functions: tuple[Callable, ...] = ()
    argument: str | None = None


@dataclass(frozen=True)
class Exercise:
    """One graded exercise.

    Attributes:
        name: ``"<chapter>.<task>"``.
        function: the name the student's function has in a graded submission.
        signature: how the checker calls it, and what it must return.
        cases: yields the :class:`Case` s, the same ones on every call.
        points: what passing it is worth in the class grader's gradebook.
        answers: the package's code that answers it: switched off while the student's function
            runs, and left out of the student edition.
        rules: the rules the exercise states.
        question: the conceptual question the exercise asks, answered in writing (collected by
            the class grader for marking by hand), or None.
    """

    name: str
    function: str
    signature: str
    cases: Callable[[], Iterator[Case]]
    points: int
    answers: tuple[Callable, ...]
    rules: tuple[Rule, ...] = ()
    question: str | None = None


# ---------------------------------------------------------------------------------------------
# comparisons that explain themselves


def _same(got: object, expected: torch.Tensor, what: str, atol: float = 1e-5) -> None:
    """Raise :class:`Mismatch` naming the first way ``got`` differs from ``expected``."""
    if not isinstance(got, torch.Tensor):
        raise Mismatch(f"{what}: expected a torch.Tensor, got {_kind(got)}")
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


class _Returned:
    """Stands for a returned object that is neither a tensor nor a number (its type name)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind


def _kind(value: object) -> str:
    return value.kind if isinstance(value, _Returned) else type(value).__name__


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _projection(shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
    """The fixed random weights whose product with a result is differentiated: from a generator
    of their own (the reader's RNG is left alone)."""
    return torch.randn(shape, generator=_generator(7), dtype=dtype)


def _inputs(case: Case) -> list:
    """Fresh copies of the case's arguments, those in ``case.grad`` requiring gradients."""
    return [
        arg.detach().clone().requires_grad_(i in case.grad)
        if isinstance(arg, torch.Tensor)
        else arg
        for i, arg in enumerate(case.args)
    ]


def _judge_gradients(case: Case, gradients: list[torch.Tensor | None] | None) -> None:
    """Compare the student's gradients with the package's (see :class:`Attempt`)."""
    what = case.description
    if gradients is None:
        raise Mismatch(
            f"{what}: the result carries no gradient. Use differentiable tensor operations "
            "(no .detach(), .numpy(), .item() or in-place writes into a new tensor without grad)"
        )
    inputs = _inputs(case)
    out = case.reference(*inputs)
    leaves = [inputs[i] for i in case.grad]
    expected = torch.autograd.grad((out * _projection(out.shape, out.dtype)).sum(), leaves)
    for i, g, e in zip(case.grad, gradients, expected, strict=True):
        if g is None:
            raise Mismatch(f"{what}: the result does not depend on argument {i + 1}")
        _same(g, e, f"{what}, gradient w.r.t. argument {i + 1}", atol=1e-4)


# ---------------------------------------------------------------------------------------------
# the exercises, one per core chapter


def _subsample_cases() -> Iterator[Case]:
    g = _generator(0)
    for batch, height, width in ((1, 17, 17), (2, 33, 41), (1, 20, 30), (3, 8, 9), (1, 1, 1)):
        target = torch.randint(0, 21, (batch, height, width), generator=g)
        target[:, ::3, ::2] = IGNORE_INDEX  # void pixels, some at cell centres
        what = f"labels of shape {tuple(target.shape)}"

        def judge(got: object, expected: torch.Tensor, what: str = what) -> None:
            if isinstance(got, torch.Tensor) and got.shape != expected.shape:
                raise Mismatch(
                    f"{what}: expected {tuple(expected.shape)} (one label per "
                    f"stride-{OUTPUT_STRIDE} output cell), got {tuple(got.shape)}"
                )
            if isinstance(got, torch.Tensor) and got.dtype != expected.dtype:
                raise Mismatch(f"labels must keep their dtype {expected.dtype}, got {got.dtype}")
            _same(got, expected, what)

        yield Case(f"a {batch}x{height}x{width} label map", (target,), subsample_labels, judge)


def _reference_conv(x: torch.Tensor, weight: torch.Tensor, rate: int) -> torch.Tensor:
    return atrous.atrous_conv2d(x, weight, rate=rate, padding=0)


def _conv_cases() -> Iterator[Case]:
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
        what = f"input {tuple(x.shape)}, kernel {tuple(weight.shape)}, rate {rate}"

        def judge(got: object, expected: torch.Tensor, what: str = what) -> None:
            _same(got, expected, what, atol=1e-4)

        yield Case(what, (x, weight, rate), _reference_conv, judge, grad=(0, 1))


def _upsample_cases() -> Iterator[Case]:
    g = _generator(2)
    for height, width in ((17, 17), (9, 16), (128, 128), (41, 57), (1, 1), (24, 33)):
        cells = (score_cells(height), score_cells(width))
        scores = torch.randn(2, 3, *cells, generator=g)
        what = f"scores {tuple(scores.shape)} to {height}x{width} pixels"

        def judge(
            got: object, expected: torch.Tensor, scores: torch.Tensor = scores, what: str = what
        ) -> None:
            if isinstance(got, torch.Tensor) and got.shape == expected.shape:
                centres = got[..., ::OUTPUT_STRIDE, ::OUTPUT_STRIDE]
                _same(centres, scores, f"{what}: pixel (8i, 8j) should carry cell (i, j)")
            _same(got, expected, what)

        yield Case(what, (scores, (height, width)), upsample_scores, judge, grad=(0,))


def _loss_cases() -> Iterator[Case]:
    g = _generator(3)
    for batch, classes, side, void in ((2, 5, 17, 0.0), (1, 21, 33, 0.3), (2, 3, 9, 1.0)):
        cells = score_cells(side)
        scores = torch.randn(batch, classes, cells, cells, generator=g)
        target = torch.randint(0, classes, (batch, side, side), generator=g)
        target[torch.rand(target.shape, generator=g) < void] = IGNORE_INDEX
        what = f"scores {tuple(scores.shape)}, labels {tuple(target.shape)}"
        what += " (every label void)" if void == 1.0 else ""

        def judge(got: object, expected: torch.Tensor, what: str = what) -> None:
            if isinstance(got, torch.Tensor) and got.ndim != 0:
                raise Mismatch(
                    f"{what}: the loss must be one number (0-d), got shape {tuple(got.shape)}"
                )
            _same(got, expected, what)

        yield Case(what, (scores, target), segmentation_loss, judge, grad=(0,))


def _package_miou(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> float:
    matrix = ConfusionMatrix(num_classes)
    matrix.update(pred, target)
    return matrix.miou()


def _miou_cases() -> Iterator[Case]:
    g = _generator(4)
    small = [
        ([0, 0, 1, 1], [0, 1, 1, 2], 3),  # a class predicted but never true
        ([0, 0, 2, 2], [0, 0, 2, 0], 3),  # a class absent from both: left out of the mean
        ([1, IGNORE_INDEX, 0, 1], [1, 0, 0, 0], 2),  # a void pixel is not scored
    ]
    sets = [
        (f"truth {truth}, prediction {pred}", torch.tensor(truth), torch.tensor(pred), classes)
        for truth, pred, classes in small
    ]
    for classes in (2, 21):
        labels = torch.randint(0, classes, (500,), generator=g)
        labels[torch.rand(500, generator=g) < 0.1] = IGNORE_INDEX
        guess = torch.randint(0, classes, (500,), generator=g)
        sets.append(("500 random pixels", labels, guess, classes))
    for shown, truth, pred, classes in sets:
        what = f"{shown}, {classes} classes"

        def judge(got: object, expected: float, what: str = what) -> None:
            if isinstance(got, torch.Tensor) and got.numel() == 1:
                got = got.item()
            if not isinstance(got, int | float):
                raise Mismatch(f"{what}: expected a number (float), got {_kind(got)}")
            if not math.isclose(got, expected, abs_tol=1e-6):
                raise Mismatch(f"{what}: expected mean IoU {expected:.6f}, got {got:.6f}")

        yield Case(what, (pred, truth, classes), _package_miou, judge)


def _package_mean_field(
    unary: torch.Tensor, message: PairwiseMessage, iterations: int
) -> torch.Tensor:
    return iterate(unary, message, iterations)[0]


def _mean_field_cases() -> Iterator[Case]:
    g = _generator(5)
    for points, classes, iterations in ((30, 2, 0), (30, 3, 1), (60, 5, 5), (60, 21, 10)):
        positions = torch.rand(points, 2, generator=g) * 4
        colours = torch.rand(points, 3, generator=g) * 3
        filters = [NaiveFilter(torch.cat([positions, colours], 1)), NaiveFilter(positions)]
        message = PairwiseMessage(filters, [4.0, 3.0], "after", exclude_self=True)
        unary = -torch.log_softmax(torch.randn(points, classes, generator=g) * 2, dim=1)
        what = f"{points} points, {classes} labels, {iterations} updates"

        def judge(got: object, expected: torch.Tensor, what: str = what) -> None:
            if isinstance(got, torch.Tensor) and got.shape == expected.shape:
                sums = got.sum(1)
                if not torch.allclose(sums, torch.ones_like(sums), atol=1e-4):
                    raise Mismatch(
                        f"{what}: each row of Q is a distribution and must sum to 1, "
                        f"row 0 sums to {sums[0].item():.4f}"
                    )
            if what.endswith(" 0 updates"):
                what = f"{what} (no update: Q is the initialisation)"
            _same(got, expected, what)

        yield Case(what, (unary, message, iterations), _package_mean_field, judge)


def _elevate_cases() -> Iterator[Case]:
    g = _generator(6)
    for points, dim in ((10, 1), (40, 2), (40, 3), (25, 5)):
        features = torch.randn(points, dim, generator=g) * 3
        what = f"{points} points in d = {dim}"

        def judge(
            got: object, expected: torch.Tensor, features: torch.Tensor = features, what: str = what
        ) -> None:
            if isinstance(got, torch.Tensor) and got.shape == expected.shape:
                _plane_and_scale(got, features, what)
            _same(
                got, expected, f"{what} (the lattice's own basis B and coordinate order)", atol=1e-4
            )

        yield Case(what, (features,), elevate, judge)


def _plane_and_scale(got: torch.Tensor, features: torch.Tensor, what: str) -> None:
    """The two properties of an elevation that matter: the points lie on the plane sum(y) = 0,
    and every distance grows by the same factor."""
    sums = got.sum(1).abs()
    if sums.max() > 1e-3 * (1 + got.abs().max()):
        raise Mismatch(
            f"{what}: the points must lie on the plane sum(y) = 0; point "
            f"{int(sums.argmax())} sums to {got.sum(1)[sums.argmax()]:.4g}"
        )
    d = features.shape[1]
    ratio = torch.cdist(got.double(), got.double())[0, 1:] / torch.cdist(
        features.double(), features.double()
    )[0, 1:].clamp_min(1e-12)
    scale = math.sqrt(2 / 3) * (d + 1)
    if not torch.allclose(ratio, torch.full_like(ratio, scale), rtol=1e-3):
        raise Mismatch(
            f"{what}: distances must all grow by the same factor sqrt(2/3)(d+1) = "
            f"{scale:.4f}; between points 0 and 1 they grew by {ratio[0]:.4f}"
        )


EXERCISES: dict[str, Exercise] = {
    e.name: e
    for e in (
        Exercise(
            "data.subsample_labels",
            "subsample_labels",
            "subsample_labels(target (B, H, W) int64) -> (B, h, w) labels at stride 8",
            _subsample_cases,
            points=5,
            answers=(subsample_labels,),
        ),
        Exercise(
            "metrics.mean_iou",
            "mean_iou",
            "mean_iou(pred (N,), target (N,), num_classes) -> float, void (255) ignored",
            _miou_cases,
            points=10,
            answers=(ConfusionMatrix.update, ConfusionMatrix.iou, ConfusionMatrix.miou),
            rules=(
                Rule(
                    "do not use ConfusionMatrix",
                    functions=tuple(
                        f for f in vars(ConfusionMatrix).values() if inspect.isfunction(f)
                    ),
                ),
            ),
        ),
        Exercise(
            "atrous.conv2d",
            "atrous_conv2d",
            "atrous_conv2d(x (B, C_in, H, W), weight (C_out, C_in, k, k), rate) -> "
            "(B, C_out, H - r(k-1), W - r(k-1)), no padding, without conv's dilation=",
            _conv_cases,
            points=15,
            answers=(atrous.atrous_conv2d, atrous.im2col_atrous),
            rules=(Rule("no dilation= argument anywhere", argument="dilation"),),
        ),
        Exercise(
            "network.upsample_scores",
            "upsample_scores",
            "upsample_scores(scores (B, C, h, w), size (H, W)) -> (B, C, H, W)",
            _upsample_cases,
            points=10,
            answers=(upsample_scores,),
            question='Why is `F.interpolate(scores, size, mode="bilinear")` wrong, with or '
            "without `align_corners`?",
        ),
        Exercise(
            "training.segmentation_loss",
            "segmentation_loss",
            "segmentation_loss(scores (B, C, h, w), target (B, H, W)) -> 0-d loss",
            _loss_cases,
            points=10,
            answers=(segmentation_loss,),
            question="What should it return, and with which gradient, when every label in the "
            "batch is void (a crop that lands entirely in a void region)?",
        ),
        Exercise(
            "crf.mean_field",
            "mean_field",
            "mean_field(unary (N, C), message, iterations) -> Q (N, C), message(Q) -> (N, C)",
            _mean_field_cases,
            points=15,
            answers=(meanfield.iterate, meanfield.update),
        ),
        Exercise(
            "permutohedral.elevate",
            "elevate",
            "elevate(features (N, d)) -> (N, d + 1) points on the plane sum(y) = 0",
            _elevate_cases,
            points=10,
            answers=(elevate,),
            question="Why must every distance grow by the *same* factor?",
        ),
    )
}


# ---------------------------------------------------------------------------------------------
# running the student's function with the answers switched off


# (file, qualified name) of each switched-off function -> why calling it is refused
_REFUSALS: dict[tuple[str, str], str] = {}
NOT_ATTEMPTED = "not attempted"  # the problem of an attempt at the exercise's unchanged stub


def _refuse(*args: object, **kwargs: object) -> None:
    """The body every switched-off function runs: raise :class:`Refused` with its reason."""
    from deeplab_edu.exercises import _refused  # the stand-in runs in the refused module

    _refused()


def _refused() -> None:
    stand_in = sys._getframe(1).f_code  # _refused <- the stand-in <- its caller
    caller: FrameType = sys._getframe(2)
    reason = _REFUSALS[stand_in.co_filename, stand_in.co_qualname]
    route = ""
    module = caller.f_globals.get("__name__", "")
    if module.startswith("deeplab_edu.") and module != __name__:
        route = f" (reached through {caller.f_globals['__name__']}.{caller.f_code.co_qualname})"
    raise Refused(reason + route)


def _stand_in(fn: Callable, reason: str) -> CodeType:
    """A code object for ``fn`` that raises :class:`Refused` with ``reason`` when called."""
    own = fn.__code__
    _REFUSALS[own.co_filename, own.co_qualname] = reason
    return _refuse.__code__.replace(
        co_name=own.co_name,
        co_qualname=own.co_qualname,
        co_filename=own.co_filename,
        co_firstlineno=own.co_firstlineno,
    )


def _forbidden(exercise: Exercise) -> dict[Callable, str]:
    """Each function the student's function may not call, and why (an answer's own reason
    before a rule's)."""
    forbidden = {
        fn: f'the exercise says "{rule.text}": your function calls {fn.__qualname__}'
        for rule in exercise.rules
        for fn in rule.functions
    }
    for fn in exercise.answers:
        forbidden[fn] = (
            f"your function calls the package's own {fn.__module__}.{fn.__qualname__}: "
            "this exercise is to write it yourself"
        )
    return forbidden


class _ArgumentRule(TorchDispatchMode):
    """Refuse every PyTorch operation given ``rule.argument`` with a value other than 1."""

    def __init__(self, rule: Rule) -> None:
        super().__init__()
        self.rule = rule

    def __torch_dispatch__(
        self, func: OpOverload, types: tuple, args: tuple = (), kwargs: dict | None = None
    ) -> object:
        kwargs = kwargs or {}
        names = [a.name for a in func._schema.arguments]
        if self.rule.argument in names:
            i = names.index(self.rule.argument)
            value = kwargs.get(self.rule.argument, args[i] if i < len(args) else 1)
            if any(v != 1 for v in (value if isinstance(value, list | tuple) else [value])):
                raise Refused(
                    f'the exercise says "{self.rule.text}": your function runs '
                    f"{func.overloadpacket.__name__} with {self.rule.argument}={value}"
                )
        return func(*args, **kwargs)


@contextlib.contextmanager
def _watching(exercise: Exercise) -> Iterator[None]:
    """Switch off the exercise's answers and enforce its rules for the ``with`` block."""
    saved = {fn: fn.__code__ for fn in _forbidden(exercise)}
    with contextlib.ExitStack() as stack:
        try:
            for fn, reason in _forbidden(exercise).items():
                fn.__code__ = _stand_in(fn, reason)
            for rule in exercise.rules:
                if rule.argument is not None:
                    stack.enter_context(_ArgumentRule(rule))
            yield
        finally:
            for fn, code in saved.items():
                fn.__code__ = code


def source_problem(exercise: Exercise, fn: Callable) -> str | None:
    """A stated rule that ``fn``'s source breaks (e.g. a ``dilation=`` keyword), or None; None
    also when the source cannot be read (the rule is still enforced while it runs)."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    except (OSError, TypeError, SyntaxError):
        return None
    for rule in (r for r in exercise.rules if r.argument is not None):
        for node in ast.walk(tree):
            if isinstance(node, ast.keyword) and node.arg == rule.argument:
                if not (isinstance(node.value, ast.Constant) and node.value.value == 1):
                    return f'the exercise says "{rule.text}": your code passes {rule.argument}='
    return None


def attempt(exercise: Exercise, fn: Callable, case: Case) -> Attempt:
    """Call the student's ``fn`` on ``case`` (with the exercise's answers switched off and its
    rules enforced) and keep what it returned and its gradients (see :class:`Attempt`)."""
    inputs = _inputs(case)
    try:
        with _watching(exercise):
            out = fn(*inputs)
            gradients: list[torch.Tensor | None] | None = None
            if case.grad and isinstance(out, torch.Tensor) and out.requires_grad:
                projected = (out * _projection(out.shape, out.dtype)).sum()
                leaves = [inputs[i] for i in case.grad]
                found = torch.autograd.grad(projected, leaves, allow_unused=True)
                gradients = list(found)
    except Refused as error:
        return Attempt(None, "", problem=str(error))
    except SystemExit as error:
        return Attempt(None, "", problem=f"your function ended the process (sys.exit({error}))")
    except Exception as error:  # noqa: BLE001 - the student's code: report, never crash
        if isinstance(error, NotImplementedError) and _is_stub(error, fn):
            return Attempt(None, "", problem=NOT_ATTEMPTED)
        where = _student_line(error, fn)
        return Attempt(
            None, "", problem=f"your function raised {type(error).__name__}: {error}{where}"
        )
    if isinstance(out, torch.Tensor):
        return Attempt(out.detach().cpu(), "Tensor", gradients)
    if isinstance(out, int | float):  # numbers (bool and NumPy's float64 included) as floats
        return Attempt(float(out), type(out).__name__)
    return Attempt(None, type(out).__name__)


def judge(exercise: Exercise, results: Iterable[tuple[Case, Attempt]]) -> Report:
    """The report on the student's attempts, case by case up to the first that does not agree.

    Args:
        exercise: the exercise.
        results: each case with the student's attempt at it, in the order of
            ``exercise.cases()``; consumed lazily (so an attempt is made only if the previous
            ones agreed). Fewer pairs than cases: the rest count as not attempted.
    """
    total = len(list(exercise.cases()))
    passed = 0
    for case, tried in results:
        if tried.problem == NOT_ATTEMPTED:
            message = f"Not attempted yet: write {exercise.signature}."
        elif tried.problem is not None:
            message = f"Case {passed + 1} ({case.description}): {tried.problem}"
        else:
            try:
                _judge_value(case, tried)
                passed += 1
                continue
            except Mismatch as error:
                message = f"Case {passed + 1}: {error}"
        return Report(exercise.name, False, passed, total, message, case.description)
    if passed < total:
        return Report(exercise.name, False, passed, total, "The cases did not all run.")
    return Report(
        exercise.name, True, passed, total, "Every case agrees with the package's function."
    )


def _judge_value(case: Case, tried: Attempt) -> None:
    """Raise :class:`Mismatch` if the student's value or gradients differ from the package's."""
    got = tried.value if tried.value is not None else _Returned(tried.kind)
    case.judge(got, case.reference(*_inputs(case)))
    if case.grad:
        _judge_gradients(case, tried.gradients)


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
    broken = source_problem(spec, fn)
    if broken is not None:
        total = len(list(spec.cases()))
        report = Report(spec.name, False, 0, total, f"Case 1: {broken}", "the function's source")
    else:
        report = judge(spec, ((case, attempt(spec, fn, case)) for case in spec.cases()))
    if verbose:
        print(report)
    return report


def _is_stub(error: NotImplementedError, fn: Callable) -> bool:
    """Whether ``error`` is the exercise's stub: raised without a message by the student's
    function itself, not from deeper in their code or a library."""
    frames = traceback.extract_tb(error.__traceback__)
    code = getattr(fn, "__code__", None)
    return (
        not error.args
        and code is not None
        and frames[-1].filename == code.co_filename
        and frames[-1].name == code.co_name
    )


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
