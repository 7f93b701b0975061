"""The class grader: submissions found in files and folders, a notebook's graded cells only, each
submission in its own process (a hang, a crash, an exit or a tampered checker costs that
submission only), points per exercise, and a gradebook for the teacher."""

from __future__ import annotations

import ast
import csv
import json
import re
import textwrap
import time
from pathlib import Path

import nbformat
import pytest

from deeplab_edu.cli import main
from deeplab_edu.exercises import EXERCISES
from deeplab_edu.grading import (
    ANSWER_PLACEHOLDER,
    GRADED_TAG,
    find_submissions,
    gradebook_paths,
    graded_source,
    written_answers,
)
from tools.student_edition import chapters, is_solution, student_notebook

TIME_LIMIT = 40  # seconds per run of a submission: a loaded machine imports PyTorch slowly


def solution_source() -> str:
    """A complete, correct submission: the chapters' worked solutions (their imports and
    functions), as one Python file."""
    parts = ["import math", "import torch", "import torch.nn.functional as F"]
    for chapter in chapters():
        for cell in nbformat.read(chapter, as_version=4).cells:
            if cell.cell_type == "code" and is_solution(cell):
                lines = cell.source.splitlines()
                for node in ast.parse(cell.source).body:
                    if isinstance(node, ast.Import | ast.ImportFrom | ast.FunctionDef):
                        parts.append("\n".join(lines[node.lineno - 1 : node.end_lineno]))
    return "\n\n\n".join(parts) + "\n"


def solution(function: str) -> str:
    """The worked solution of one graded function, with the imports it needs."""
    tree = ast.parse(solution_source())
    (node,) = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == function]
    return "import math\nimport torch\nimport torch.nn.functional as F\n\n" + ast.unparse(node)


def partial_notebook() -> nbformat.NotebookNode:
    """The student edition of the network chapter with its exercise done and its question
    answered (the student's own notebook)."""
    chapter = next(c for c in chapters() if c.stem == "vgg_to_deeplab")
    notebook = student_notebook(nbformat.read(chapter, as_version=4))
    for cell in notebook.cells:
        if GRADED_TAG in cell.metadata.get("tags", []):
            cell.source = solution("upsample_scores") + '\n\nreport = check("x", upsample_scores)'
        if "written" in cell.metadata.get("tags", []):
            cell.source = cell.source.replace(
                ANSWER_PLACEHOLDER, "Its grid puts cell i at 8i + 3.5."
            )
    return notebook


TAMPERING = """
import torch
import deeplab_edu.exercises as checker

checker._same = lambda *args, **kwargs: None
checker._judge_gradients = lambda *args, **kwargs: None
checker.judge = lambda *args, **kwargs: None
checker.check = lambda *args, **kwargs: True


def subsample_labels(target):
    return torch.zeros(1)


def mean_iou(pred, target, num_classes):
    return 0.0
"""


def write_class(folder) -> None:
    """Seven submissions: complete; partial (a notebook); sleeping; failing on import; tampering
    with the checker; exiting with status 0; asking for more memory than the cap."""
    folder.mkdir()
    (folder / "complete.py").write_text(solution_source())
    nbformat.write(partial_notebook(), folder / "partial.ipynb")
    sleeps = "import time\n\n\ndef subsample_labels(target):\n    time.sleep(10**6)\n\n\n"
    (folder / "sleeping.py").write_text(sleeps + solution("mean_iou"))
    (folder / "crashing.py").write_text("1 / 0\n\n\n" + solution_source())
    (folder / "tampering.py").write_text(TAMPERING + "\n\n" + solution("elevate"))
    exits = "import os\n\n\ndef mean_iou(pred, target, num_classes):\n    os._exit(0)\n\n\n"
    (folder / "exiting.py").write_text(
        exits + solution("subsample_labels") + "\n\n\n" + solution("atrous_conv2d")
    )
    greedy = (
        "def subsample_labels(target):\n    return torch.ones(2**30)  # 4 GB: over the 2 GB cap\n"
    )
    (folder / "greedy.py").write_text("import torch\n\n\n" + greedy)


DESERVED = {  # student -> the points each exercise deserves (absent: 0)
    "complete": {name: e.points for name, e in EXERCISES.items()},
    "partial": {"network.upsample_scores": 10},
    "sleeping": {"metrics.mean_iou": 10},
    "crashing": {},
    "tampering": {"permutohedral.elevate": 10},
    "exiting": {"data.subsample_labels": 5, "atrous.conv2d": 15},
    "greedy": {},
}
SAYS = {  # (student, exercise) -> what its feedback must say
    ("partial", "metrics.mean_iou"): "Not submitted.",
    ("sleeping", "data.subsample_labels"): f"the time limit ({TIME_LIMIT} s) ran out",
    ("crashing", "atrous.conv2d"): "does not load: ZeroDivisionError",
    ("tampering", "data.subsample_labels"): "expected (1, 3, 3)",
    ("exiting", "metrics.mean_iou"): "the submission's process ended (exit status 0)",
    ("greedy", "data.subsample_labels"): "raised RuntimeError",
}


@pytest.mark.slow
def test_grading_a_class_gives_each_case_what_it_deserves(tmp_path, capsys):
    write_class(tmp_path / "class")
    start = time.monotonic()
    status = main(
        [
            "grade",
            str(tmp_path / "class"),
            "--out",
            str(tmp_path / "book"),
            "--time-limit",
            str(TIME_LIMIT),
        ]
    )
    elapsed = time.monotonic() - start
    assert status == 1  # not everyone passed everything
    assert elapsed < 6 * TIME_LIMIT, elapsed
    with open(tmp_path / "book" / "gradebook.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    questions = [e for e in EXERCISES.values() if e.question is not None]
    assert len(rows) == len(DESERVED) * (len(EXERCISES) + len(questions))
    for row in rows:
        if row["exercise"].endswith("(written)"):
            continue
        deserved = DESERVED[row["student"]].get(row["exercise"], 0)
        assert float(row["points"]) == deserved, row
        assert row["passed"] == str(deserved > 0), row
    for (student, exercise), says in SAYS.items():
        (row,) = [r for r in rows if r["student"] == student and r["exercise"] == exercise]
        assert says in row["feedback"], row
    (written,) = [
        r
        for r in rows
        if r["student"] == "partial"
        and r["exercise"].startswith("network.")
        and r["exercise"].endswith("(written)")
    ]
    assert written["answer"] == "Its grid puts cell i at 8i + 3.5." and written["points"] == ""
    assert "to mark by hand" in written["feedback"]
    summary = json.loads((tmp_path / "book" / "gradebook.json").read_text())["summary"]
    first = {line["exercise"]: line for line in summary}
    assert first["data.subsample_labels"]["passed"] == 2
    assert first["data.subsample_labels"]["submissions"] == len(DESERVED)
    out = capsys.readouterr().out
    assert "complete: 75 of 75 points (7 of 7 exercises passed)" in out
    # a second run refuses to replace the gradebook (marks may have been added by hand)
    assert (
        main(["grade", str(tmp_path / "class" / "greedy.py"), "--out", str(tmp_path / "book")]) == 2
    )
    assert "gradebook.csv exists" in capsys.readouterr().err


def test_submissions_are_files_and_folders_of_them(tmp_path):
    (tmp_path / "a.py").write_text("")
    (tmp_path / "class").mkdir()
    for name in ("c.ipynb", "b.py", "notes.txt"):
        (tmp_path / "class" / name).write_text("")
    found = find_submissions([tmp_path / "a.py", tmp_path / "class"])
    assert [p.name for p in found] == ["a.py", "b.py", "c.ipynb"]
    with pytest.raises(ValueError, match=r"expected a submission \(.py or .ipynb\)"):
        find_submissions([tmp_path / "class" / "notes.txt"])
    with pytest.raises(FileNotFoundError, match="submission not found"):
        find_submissions([tmp_path / "missing.py"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no submission"):
        find_submissions([tmp_path / "empty"])


def test_a_notebook_is_graded_on_its_graded_cells_only(tmp_path):
    notebook = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell("%matplotlib inline\nimport torch\nrun_the_whole_chapter()"),
            nbformat.v4.new_code_cell(
                textwrap.dedent(
                    """\
                    from deeplab_edu.exercises import check

                    SCALE = 2


                    def elevate(features):
                        return features * SCALE


                    report = check("permutohedral.elevate", elevate)
                    print(report)
                    """
                ),
                metadata={"tags": [GRADED_TAG]},
            ),
            nbformat.v4.new_markdown_cell(
                "**Your answer**\n\n" + ANSWER_PLACEHOLDER,
                metadata={"tags": ["written"], "question": "permutohedral.elevate"},
            ),
        ]
    )
    path = tmp_path / "student.ipynb"
    nbformat.write(notebook, path)
    source = graded_source(path)
    namespace: dict = {}
    exec(source, namespace)  # runs nothing of the chapter, and no checker
    assert namespace["elevate"](3) == 6
    assert "run_the_whole_chapter" not in source and "check(" not in source
    assert "print" not in source and "import torch" in source
    assert written_answers(path) == {"permutohedral.elevate": ""}
    notebook.cells[2].source = "**Your answer**\n\nThe lattice's cells must be the same size."
    nbformat.write(notebook, path)
    assert written_answers(path) == {
        "permutohedral.elevate": "The lattice's cells must be the same size."
    }
    (tmp_path / "broken.ipynb").write_text("{not json")
    with pytest.raises(ValueError, match="is not a Jupyter notebook"):
        graded_source(tmp_path / "broken.ipynb")


def test_the_chapters_mark_their_graded_and_written_cells():
    """Every exercise's cell is tagged for the grader, and every question has an answer cell."""
    graded, written = set(), set()
    for chapter in chapters():
        for cell in nbformat.read(chapter, as_version=4).cells:
            tags = cell.metadata.get("tags", [])
            if GRADED_TAG in tags:
                graded |= {n for n in EXERCISES if f'check("{n}"' in cell.source}
            if "written" in tags:
                written.add(cell.metadata["question"])
                assert cell.source.splitlines()[-1] == ANSWER_PLACEHOLDER
    assert graded == set(EXERCISES)
    assert written == {n for n, e in EXERCISES.items() if e.question is not None}


def test_grade_refuses_bad_options_before_grading(tmp_path, capsys):
    (tmp_path / "a.py").write_text("")
    assert main(["grade", str(tmp_path / "a.py"), "--time-limit", "0"]) == 2
    assert "expected a positive --time-limit" in capsys.readouterr().err
    assert main(["grade", str(tmp_path / "missing.py")]) == 2
    assert "submission not found" in capsys.readouterr().err
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "gradebook.json").write_text("{}")
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        gradebook_paths(tmp_path / "out")
    assert len(gradebook_paths(tmp_path / "out", overwrite=True)) == 2


def test_the_course_guide_states_each_exercises_points():
    guide = (Path(__file__).resolve().parents[1] / "book" / "course_guide.md").read_text()
    stated = {
        name: int(points)
        for name, points in re.findall(r"^\| `([\w.]+)` \|.*\| (\d+) \|$", guide, flags=re.M)
    }
    assert stated == {name: e.points for name, e in EXERCISES.items()}
