"""The chapter runner's checks (tools/chapters.py): nbval's comparison semantics and the student
edition's static check, on small notebooks made here."""

from __future__ import annotations

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook, new_output

from tools.chapters import differences, student_leaks


def stream(text: str, name: str = "stdout"):
    return new_output("stream", name=name, text=text)


def notebook(*outputs_per_cell, mark: bool = True):
    cells = []
    for number, outputs in enumerate(outputs_per_cell):
        source = ("# NBVAL_CHECK_OUTPUT\n" if mark else "") + f"print({number})"
        cells.append(new_code_cell(source, outputs=list(outputs)))
    return new_notebook(cells=cells)


def test_equal_outputs_agree_and_streams_are_merged_as_nbval_does() -> None:
    committed = notebook([stream("a\nb\n")])
    ran = notebook([stream("a\n"), stream("b\n")])
    assert differences(ran, committed) == []
    progress = notebook([stream("a\n"), stream("10%\r"), stream("b\n")])  # \r overwritten
    assert differences(progress, committed) == []


def test_a_changed_number_is_reported_with_both_outputs() -> None:
    committed = notebook([stream("mean IoU 76.5%\n")])
    (problem,) = differences(notebook([stream("mean IoU 76.4%\n")]), committed)
    assert "cell 0" in problem and "76.5" in problem and "76.4" in problem


def test_unchecked_cells_images_and_counts_are_not_compared() -> None:
    ran = notebook([stream("anything\n")], mark=False)
    assert differences(ran, notebook([stream("else\n")], mark=False)) == []
    image = {"image/png": "AAAA", "text/plain": "<Figure size 800x360 with 2 Axes>"}
    other = {"image/png": "BBBB", "text/plain": "<Figure size 800x360 with 2 Axes>"}
    committed = notebook([new_output("display_data", data=image)])
    assert differences(notebook([new_output("display_data", data=other)]), committed) == []
    smaller = {"image/png": "BBBB", "text/plain": "<Figure size 400x360 with 1 Axes>"}
    assert differences(notebook([new_output("display_data", data=smaller)]), committed)


def test_a_missing_or_extra_output_differs() -> None:
    committed = notebook([stream("x\n")])
    assert differences(notebook([]), committed)
    assert differences(notebook([stream("x\n"), stream("oops\n", name="stderr")]), committed)


def test_other_sources_are_refused() -> None:
    ran = notebook([stream("x\n")])
    ran.cells[0].source += "\n# edited"
    assert differences(ran, notebook([stream("x\n")])) == [
        "the executed notebook's cells are not the committed chapter's"
    ]


def solution(source: str):
    cell = new_code_cell(source)
    cell.metadata["tags"] = ["solution"]
    return cell


def test_student_edition_names_only_a_solution_defines() -> None:
    leaky = new_notebook(
        cells=[
            new_code_cell("%pip install -q x\nimport numpy as np\ndef f(x):\n    raise ValueError"),
            solution("def helper(x):\n    return x\ndef f(x):\n    return helper(x)\nbest = f(1)"),
            new_code_cell("print(f(2), np.pi)"),  # f is the stub's name too: fine
            new_code_cell("print(best, helper)"),  # only the solution defines these
        ]
    )
    assert student_leaks(leaky) == [
        "cell 3 reads 'best', which only a solution cell defines",
        "cell 3 reads 'helper', which only a solution cell defines",
    ]
    leaky.cells[3].source = "best = 0\nprint(best)"
    assert student_leaks(nbformat.from_dict(leaky)) == []


def test_every_chapter_runs_without_its_solutions() -> None:
    from tools.student_edition import chapters

    for chapter in chapters():
        assert student_leaks(nbformat.read(chapter, as_version=4)) == [], chapter.name


def test_the_student_edition_keeps_no_graded_answer() -> None:
    """The package's code of a graded function, shown with show_source before the exercise,
    is left out of the student edition (cells tagged "answer"), and an untagged one is found."""
    import inspect

    from deeplab_edu.exercises import EXERCISES
    from deeplab_edu.train import segmentation_loss
    from tools.student_edition import ANSWER_NOTE, ANSWERS, answer_leaks, chapters, student_notebook

    assert set(ANSWERS) == set(EXERCISES)
    for chapter in chapters():
        notebook = nbformat.read(chapter, as_version=4)
        student = student_notebook(notebook)  # raises if an untagged cell shows an answer
        assert answer_leaks(student) == [], chapter.name
    shown = new_code_cell("show_source(segmentation_loss)")
    shown.outputs = [
        nbformat.v4.new_output(
            "execute_result", data={"text/plain": inspect.getsource(segmentation_loss)}
        )
    ]
    planted = new_notebook(cells=[new_code_cell("x = 1"), shown])
    assert answer_leaks(planted) == [
        "cell 1 shows segmentation_loss (training.segmentation_loss's answer)"
    ]
    with pytest.raises(ValueError, match="tag them 'answer'"):
        student_notebook(planted)
    shown.metadata["tags"] = ["answer"]
    kept = student_notebook(planted).cells
    assert [c.source for c in kept] == ["x = 1", ANSWER_NOTE]


def test_make_figures_exports_each_figure_as_png_and_svg(tmp_path) -> None:
    """The figures of the executed chapters, numbered in reading order, in both formats; the
    execution's kernels are configured to store both; a missing chapter or SVG is reported."""
    import base64

    from tools.chapters import figure_formats
    from tools.figures import export
    from tools.student_edition import chapters

    png = base64.b64encode(b"\x89PNG fake").decode()
    executed = tmp_path / "executed"
    executed.mkdir()
    for chapter in chapters():
        notebook = new_notebook(cells=[new_code_cell("x = 1")])
        if chapter.stem == "metrics":
            for svg in ("<svg>a</svg>", "<svg>b</svg>"):
                cell = new_code_cell("fig")
                cell.outputs = [
                    nbformat.v4.new_output(
                        "display_data", data={"image/png": png, "image/svg+xml": svg}
                    )
                ]
                notebook.cells.append(cell)
        nbformat.write(notebook, executed / chapter.name)
    (tmp_path / "figures" / "metrics").mkdir(parents=True)
    (tmp_path / "figures" / "metrics" / "metrics-3.png").write_bytes(b"an earlier export's")
    (tmp_path / "figures" / "metrics" / "my-slide.png").write_bytes(b"the user's")
    (tmp_path / "figures" / "notes.txt").write_text("the user's")
    assert export(executed, tmp_path / "figures") == 0
    written = sorted(p.name for p in (tmp_path / "figures").rglob("*.*"))
    assert written == [
        "metrics-1.png",
        "metrics-1.svg",
        "metrics-2.png",
        "metrics-2.svg",
        "my-slide.png",
        "notes.txt",
    ]  # the stale metrics-3 removed; the user's files kept
    assert (tmp_path / "figures" / "metrics" / "metrics-2.svg").read_text() == "<svg>b</svg>"
    assert (tmp_path / "figures" / "metrics" / "metrics-1.png").read_bytes() == b"\x89PNG fake"
    (executed / "metrics.ipynb").write_text(
        (executed / "metrics.ipynb").read_text().replace('"image/svg+xml"', '"text/html"')
    )
    assert export(executed, tmp_path / "figures") == 1  # a figure without its SVG
    (executed / "crf.ipynb").unlink()
    assert export(executed, tmp_path / "figures") == 1  # a chapter not executed
    config = figure_formats(tmp_path / "ipython") / "profile_default" / "ipython_kernel_config.py"
    assert config.read_text() in (
        "c.InlineBackend.figure_formats = {'png', 'svg'}\n",
        "c.InlineBackend.figure_formats = {'svg', 'png'}\n",
    )
