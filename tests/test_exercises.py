"""The graded exercises: the chapters' worked solutions pass, typical mistakes fail with a message
that names the difference and never shows the package's code, the package's own answer is
refused however a submission reaches it, and each exercise's stated rule is enforced."""

from __future__ import annotations

import functools
import inspect
import re
import sys

import nbformat
import pytest
import torch
import torch.nn.functional as F

from deeplab_edu import train
from deeplab_edu.crf import meanfield
from deeplab_edu.crf.lattice_build import elevate
from deeplab_edu.crf.permutohedral import PermutohedralLattice
from deeplab_edu.data.transforms import subsample_labels
from deeplab_edu.exercises import EXERCISES, check
from deeplab_edu.grading import graded_source
from deeplab_edu.metrics import ConfusionMatrix
from deeplab_edu.models.atrous import atrous_conv2d
from deeplab_edu.models.deeplab import upsample_scores
from tools.student_edition import chapters


def worked_solutions() -> dict[str, object]:
    """The chapters' worked solutions of the graded exercises, read as the class grader reads a
    notebook (the solution cell defines the function after the exercise's stub)."""
    found = {}
    for chapter in chapters():
        namespace: dict[str, object] = {}
        exec(compile(graded_source(chapter), str(chapter), "exec"), namespace)
        for name, exercise in EXERCISES.items():
            if f'check("{name}"' in chapter.read_text().replace('\\"', '"'):
                found[name] = namespace[exercise.function]
    return found


SOLUTIONS = worked_solutions()


def test_every_exercise_has_a_worked_solution():
    assert set(SOLUTIONS) == set(EXERCISES)
    assert {name.split(".")[0] for name in EXERCISES} == {
        "data",
        "atrous",
        "network",
        "training",
        "metrics",
        "crf",
        "permutohedral",
    }


@pytest.mark.parametrize("name", sorted(SOLUTIONS))
def test_the_worked_solution_passes(name, capsys):
    report = check(name, SOLUTIONS[name])
    assert report and report.cases == report.total >= 3, report
    assert f"{name}: passed" in capsys.readouterr().out


def naive_mean_field(sign: float, normalise: bool):
    def fn(unary, message, iterations):
        q = torch.softmax(-unary, 1)
        for _ in range(iterations):
            q = torch.exp(-unary + sign * message(q))
            q = q / q.sum(1, keepdim=True) if normalise else q
        return q

    return fn


def iou_absent_as_zero(pred, target, num_classes):
    scored = target != 255
    pred, target = pred[scored], target[scored]
    ious = []
    for c in range(num_classes):
        union = ((pred == c) | (target == c)).sum()
        ious.append(float(((pred == c) & (target == c)).sum() / union) if union else 0.0)
    return sum(ious) / num_classes


def out_of_place(unary, message, iterations):
    return SOLUTIONS["crf.mean_field"](unary, message, iterations).detach().numpy()


MISTAKES = [  # (exercise, a plausible wrong answer, what the message must say)
    ("data.subsample_labels", lambda t: t[:, ::8, ::8][:, :-1, :-1], r"expected \(1, 3, 3\)"),
    ("data.subsample_labels", lambda t: t[:, 4::8, 4::8], r"got \(1, 2, 2\)"),
    (
        "data.subsample_labels",
        lambda t: F.interpolate(
            t[:, None].float(), size=((t.shape[1] + 7) // 8,) * 2, mode="nearest"
        )[:, 0].long(),
        "values differ",
    ),
    ("atrous.conv2d", lambda x, w, rate: F.conv2d(x, w), r"rate 2: expected shape"),
    (
        "atrous.conv2d",
        lambda x, w, rate: SOLUTIONS["atrous.conv2d"](x.detach(), w, rate),
        "does not depend on argument 1",
    ),
    (
        "network.upsample_scores",
        lambda s, size: F.interpolate(s, size=size, mode="bilinear", align_corners=True),
        r"pixel \(8i, 8j\) should carry",
    ),
    (
        "network.upsample_scores",
        lambda s, size: F.interpolate(s, size=size, mode="bilinear"),
        "values differ",
    ),
    (
        "training.segmentation_loss",
        lambda s, t: F.cross_entropy(s, t[:, ::8, ::8], ignore_index=255),
        "every label void.*not finite",
    ),
    (
        "training.segmentation_loss",
        lambda s, t: F.cross_entropy(s, t[:, ::8, ::8]),
        "raised IndexError",
    ),
    ("metrics.mean_iou", iou_absent_as_zero, r"prediction \[0, 0, 2, 0\].*expected mean IoU"),
    ("crf.mean_field", naive_mean_field(-1.0, True), "1 updates: 90 of 90 values differ"),
    ("crf.mean_field", naive_mean_field(1.0, False), "must sum to 1"),
    ("crf.mean_field", out_of_place, "expected a torch.Tensor, got ndarray"),
    (
        "permutohedral.elevate",
        lambda f: torch.cat([f, torch.zeros(len(f), 1)], 1),
        "must lie on the plane",
    ),
    (
        "permutohedral.elevate",
        lambda f: 2 * SOLUTIONS["permutohedral.elevate"](f),
        "grow by the same factor",
    ),
]


@pytest.mark.parametrize(("name", "wrong", "says"), MISTAKES)
def test_mistakes_fail_with_an_explanation(name, wrong, says):
    report = check(name, wrong, verbose=False)
    assert not report and report.cases < report.total
    assert re.search(says, report.message), report.message
    # the message explains the difference without showing the package's code
    for answer in EXERCISES[name].answers:
        source = inspect.getsource(answer)
        code_lines = [line.strip() for line in source.splitlines() if len(line.strip()) > 25]
        assert not any(line in report.message for line in code_lines)


def test_unattempted_and_crashing_functions_are_reported_not_raised():
    def stub(features):
        raise NotImplementedError

    report = check("permutohedral.elevate", stub, verbose=False)
    assert not report and report.message.startswith("Not attempted yet: write elevate(")

    def crashes(features):
        doubled = features * 2
        return doubled[:, 7]

    report = check("permutohedral.elevate", crashes, verbose=False)
    assert "raised IndexError" in report.message and "(line 3 of your function)" in report.message
    with pytest.raises(KeyError, match="no exercise 'atrous'; the exercises are"):
        check("atrous", stub)
    with pytest.raises(TypeError, match="expected the function to check, got int"):
        check("atrous.conv2d", 3)


def test_checking_leaves_the_readers_random_state_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    check("atrous.conv2d", SOLUTIONS["atrous.conv2d"], verbose=False)
    assert torch.equal(torch.rand(3), expected)


def _through_the_lattice(features):
    PermutohedralLattice(features)  # elevates the features with the package's elevate
    return SOLUTIONS["permutohedral.elevate"](features)


DELEGATIONS = [  # (exercise, a submission reaching the package's answer, the function refused)
    ("data.subsample_labels", lambda t: subsample_labels(t), "transforms.subsample_labels"),
    ("atrous.conv2d", functools.partial(atrous_conv2d, padding=0), "atrous.atrous_conv2d"),
    ("network.upsample_scores", upsample_scores, "deeplab.upsample_scores"),
    (
        "training.segmentation_loss",
        lambda s, t: train.segmentation_loss(s, t),
        "train.segmentation_loss",
    ),
    (
        "metrics.mean_iou",
        lambda p, t, n: ConfusionMatrix.miou(None),
        "metrics.ConfusionMatrix.miou",
    ),
    ("crf.mean_field", lambda u, m, n: meanfield.iterate(u, m, n)[0], "meanfield.iterate"),
    (
        "permutohedral.elevate",
        _through_the_lattice,
        "lattice_build.elevate: this exercise is to write it yourself (reached through "
        "deeplab_edu.crf.fast_build.simplices)",
    ),
]


def test_every_exercise_refuses_the_packages_answer():
    assert {name for name, _, _ in DELEGATIONS} == set(EXERCISES)


@pytest.mark.parametrize(("name", "delegate", "refused"), DELEGATIONS)
def test_calling_the_packages_answer_fails_the_exercise(name, delegate, refused):
    """However the call reaches it (the function itself, a partial, another package function),
    the package's answer is switched off while the student's function runs, and back after."""
    report = check(name, delegate, verbose=False)
    assert not report and report.cases == 0
    assert "your function calls the package's own" in report.message, report.message
    assert refused in report.message, report.message
    assert check(name, SOLUTIONS[name], verbose=False)  # the reference works again
    features = torch.randn(5, 2)
    assert elevate(features).shape == (5, 3) and PermutohedralLattice(features).num_points == 5


def _positional_dilation(x, w, rate):
    return torch.conv2d(x, w, None, 1, 0, rate)  # the rule's argument passed positionally


def _unfold_dilation(x, w, rate):
    k = w.shape[-1]
    cols = F.unfold(x, k, dilation=rate)
    size = (x.shape[2] - rate * (k - 1), x.shape[3] - rate * (k - 1))
    return (w.reshape(w.shape[0], -1) @ cols).reshape(x.shape[0], w.shape[0], *size)


def _confusion_counts(pred, target, num_classes):
    matrix = ConfusionMatrix(num_classes)  # the rule forbids the class, not only its answers
    return SOLUTIONS["metrics.mean_iou"](pred, target, num_classes) + 0 * matrix.num_classes


RULES = [  # (exercise, a submission breaking the exercise's stated rule, the message)
    (
        "atrous.conv2d",
        lambda x, w, rate: F.conv2d(x, w, dilation=rate),
        "your code passes dilation=",
    ),
    ("atrous.conv2d", _unfold_dilation, "your code passes dilation="),
    ("atrous.conv2d", _positional_dilation, "runs convolution with dilation=[2, 2]"),
    ("metrics.mean_iou", _confusion_counts, "calls ConfusionMatrix.__init__"),
]


def test_every_stated_rule_has_a_test():
    stated = {(name, rule.text) for name, e in EXERCISES.items() for rule in e.rules}
    assert stated == {
        ("atrous.conv2d", "no dilation= argument anywhere"),
        ("metrics.mean_iou", "do not use ConfusionMatrix"),
    }
    assert {name for name, _, _ in RULES} == {name for name, _ in stated}


@pytest.mark.parametrize(("name", "breaks", "says"), RULES)
def test_breaking_an_exercises_rule_fails_it(name, breaks, says):
    report = check(name, breaks, verbose=False)
    assert not report
    rule = EXERCISES[name].rules[0].text
    assert f'the exercise says "{rule}"' in report.message and says in report.message, report


def test_a_function_that_means_its_not_implemented_error_is_not_unattempted():
    def on_purpose(features):
        raise NotImplementedError("only d = 2 so far")

    report = check("permutohedral.elevate", on_purpose, verbose=False)
    assert "raised NotImplementedError: only d = 2 so far (line 2" in report.message

    def deeper(features):
        return helper(features)

    def helper(features):
        raise NotImplementedError

    report = check("permutohedral.elevate", deeper, verbose=False)
    assert "raised NotImplementedError" in report.message


def test_a_function_that_exits_is_reported_and_the_process_goes_on():
    report = check("permutohedral.elevate", lambda f: sys.exit(0), verbose=False)
    assert "your function ended the process (sys.exit(0))" in report.message


def test_each_question_is_the_chapters_own():
    """The conceptual question of an exercise is asked, word for word, in its chapter."""
    text = " ".join(
        " ".join(cell.source.split())
        for chapter in chapters()
        for cell in nbformat.read(chapter, as_version=4).cells
        if cell.cell_type == "markdown"
    )
    for exercise in EXERCISES.values():
        if exercise.question is not None:
            assert exercise.question in text, exercise.name
