"""The graded exercises: the package's own functions pass, typical mistakes fail with a message
that names the difference and never shows the package's code, and ``grade`` grades a file."""

from __future__ import annotations

import inspect
import re
import textwrap

import pytest
import torch
import torch.nn.functional as F

from deeplab_edu.cli import main
from deeplab_edu.crf.lattice_build import elevate
from deeplab_edu.crf.meanfield import iterate
from deeplab_edu.data.transforms import subsample_labels
from deeplab_edu.exercises import EXERCISES, check
from deeplab_edu.metrics import ConfusionMatrix
from deeplab_edu.models.atrous import atrous_conv2d
from deeplab_edu.models.deeplab import upsample_scores
from deeplab_edu.train import segmentation_loss


def package_miou(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> float:
    matrix = ConfusionMatrix(num_classes)
    matrix.update(pred, target)
    return matrix.miou()


CORRECT = {
    "data.subsample_labels": subsample_labels,
    "atrous.conv2d": lambda x, w, rate: atrous_conv2d(x, w, rate=rate, padding=0),
    "network.upsample_scores": upsample_scores,
    "training.segmentation_loss": segmentation_loss,
    "metrics.mean_iou": package_miou,
    "crf.mean_field": lambda unary, message, n: iterate(unary, message, n)[0],
    "permutohedral.elevate": elevate,
}


def test_every_exercise_has_a_correct_answer_here():
    assert set(CORRECT) == set(EXERCISES)
    assert {name.split(".")[0] for name in EXERCISES} == {
        "data",
        "atrous",
        "network",
        "training",
        "metrics",
        "crf",
        "permutohedral",
    }


@pytest.mark.parametrize("name", sorted(CORRECT))
def test_the_packages_own_function_passes(name, capsys):
    report = check(name, CORRECT[name])
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
    matrix = ConfusionMatrix(num_classes)
    matrix.update(pred, target)
    return float(matrix.iou().nan_to_num(0).mean())


def out_of_place(unary, message, iterations):
    return iterate(unary, message, iterations)[0].detach().numpy()


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
        lambda x, w, rate: F.conv2d(x.detach(), w, dilation=rate),
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
    ("permutohedral.elevate", lambda f: 2 * elevate(f), "grow by the same factor"),
]


@pytest.mark.parametrize(("name", "wrong", "says"), MISTAKES)
def test_mistakes_fail_with_an_explanation(name, wrong, says):
    report = check(name, wrong, verbose=False)
    assert not report and report.cases < report.total
    assert re.search(says, report.message), report.message
    # the message explains the difference without showing the package's code
    source = inspect.getsource(CORRECT[name])
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


SUBMISSION = """
import torch
import torch.nn.functional as F


def atrous_conv2d(x, weight, rate):
    k = weight.shape[-1]
    holes = torch.zeros(*weight.shape[:2], rate * (k - 1) + 1, rate * (k - 1) + 1)
    holes[..., ::rate, ::rate] = weight
    return F.conv2d(x, holes)


def mean_iou(pred, target, num_classes):
    return 0.5
"""


def test_grade_a_submission_file(tmp_path, capsys):
    good = tmp_path / "good.py"
    good.write_text(textwrap.dedent(SUBMISSION).split("def mean_iou")[0])
    assert main(["grade", str(good)]) == 0
    assert "atrous.conv2d: passed" in capsys.readouterr().out
    mixed = tmp_path / "mixed.py"
    mixed.write_text(SUBMISSION)
    assert main(["grade", str(mixed)]) == 1
    out = capsys.readouterr().out
    assert "metrics.mean_iou: not yet" in out and "1 of 2 exercises passed" in out
    for content, says in (
        ("x = 1\n", "defines none of the graded functions"),
        ("1 / 0\n", "does not run: ZeroDivisionError"),
    ):
        (tmp_path / "bad.py").write_text(content)
        assert main(["grade", str(tmp_path / "bad.py")]) == 2
        assert says in capsys.readouterr().err
    assert main(["grade", str(tmp_path / "missing.py")]) == 2
    assert "expected a Python file (.py)" in capsys.readouterr().err


def test_checking_leaves_the_readers_random_state_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    check("atrous.conv2d", CORRECT["atrous.conv2d"], verbose=False)
    assert torch.equal(torch.rand(3), expected)
