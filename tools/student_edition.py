"""Write the student edition of the book: every chapter without its solutions.

Usage: ``python -m tools.student_edition [OUT]`` writes ``OUT/student`` and ``OUT/instructor``
(``make student``: ``OUT = _build``).

A solution is a cell tagged ``solution``: the folded *Solutions* text at the end of a chapter
and the worked code of its graded exercise. An answer is a cell tagged ``answer``: one that shows
the package's own code of a graded exercise's function (``show_source``), which the chapter
explains before the exercise asks for it; :func:`answer_leaks` finds any such cell left
untagged. The student edition drops exactly those two kinds of cells and keeps everything else,
the graded exercises' checker cells included (``deeplab_edu.exercises``
ships with the package, so the checks run wherever the package is installed). The instructor's
copy, ``OUT/instructor``, is the chapters unchanged. The Colab check (``make colab``) runs
the student edition, so every chapter is known to run without its solutions.
"""

from __future__ import annotations

import inspect
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import nbformat

from deeplab_edu import exercises
from deeplab_edu.viz import core_source

REPO = Path(__file__).resolve().parents[1]
SOLUTION_TAG = "solution"
ANSWER_TAG = "answer"
ANSWER_NOTE = (
    "*The package's code of this step is left out of the student edition: you write it in this "
    "chapter's graded exercise, and the instructor's copy shows it.*"
)
# the package's code that answers each graded exercise
ANSWERS: dict[str, tuple[Callable, ...]] = {
    name: exercise.answers for name, exercise in exercises.EXERCISES.items()
}


def chapters() -> list[Path]:
    """The chapter notebooks in table-of-contents order."""
    toc = (REPO / "_toc.yml").read_text()
    files = re.findall(r"^\s*- file: (\S+)", toc, flags=re.M)
    return [REPO / f"{f}.ipynb" for f in files if (REPO / f"{f}.ipynb").is_file()]


def is_solution(cell: nbformat.NotebookNode) -> bool:
    """Whether a cell is (part of) a solution, or shows the package's answer: the cells the
    student edition leaves out."""
    tags = cell.get("metadata", {}).get("tags", [])
    return SOLUTION_TAG in tags or ANSWER_TAG in tags


def _code_lines(fn: Callable) -> set[str]:
    """The distinctive lines of ``fn``'s code as ``show_source`` shows it, after its argument
    checks: statements of 20 characters or more, stripped (no comment or blank line)."""
    source = core_source(inspect.getsource(fn))
    body = source.split("(argument checks left out", 1)[-1].splitlines()[1:]
    return {line.strip() for line in body if len(line.strip()) >= 20 and line.strip()[0] != "#"}


def answer_leaks(notebook: nbformat.NotebookNode) -> list[str]:
    """Cells the student edition keeps that show a graded exercise's answer: three of the
    distinctive lines of the package's function (all of them, if fewer) in the cell's source or
    its text outputs."""
    found = []
    for number, cell in enumerate(notebook.cells):
        if is_solution(cell):
            continue
        text = cell.source + "".join(
            "".join(output.get("text", "")) + "".join(output.get("data", {}).get("text/plain", ""))
            for output in cell.get("outputs", [])
        )
        shown = set(line.strip() for line in text.splitlines())
        for exercise, functions in ANSWERS.items():
            for fn in functions:
                lines = _code_lines(fn)
                if len(lines & shown) >= min(3, len(lines)):
                    found.append(f"cell {number} shows {fn.__qualname__} ({exercise}'s answer)")
    return found


def student_notebook(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """A copy of ``notebook`` without its solution cells, each run of answer cells replaced by
    one line saying why the code is not there.

    Raises:
        ValueError: if an untagged cell still holds a *Solutions* block (a solution that the
            edition would leak).
    """
    copy = nbformat.from_dict(notebook)
    cells = []
    for cell in copy.cells:
        if ANSWER_TAG in cell.get("metadata", {}).get("tags", []):
            if not cells or cells[-1].get("metadata", {}).get("placeholder") != ANSWER_TAG:
                cells.append(
                    nbformat.v4.new_markdown_cell(ANSWER_NOTE, metadata={"placeholder": ANSWER_TAG})
                )
        elif not is_solution(cell):
            cells.append(cell)
    copy.cells = cells
    for cell in copy.cells:
        if "<summary>Solutions" in "".join(cell.source):
            raise ValueError(f"an untagged cell holds solutions: {''.join(cell.source)[:80]!r}")
    leaks = answer_leaks(copy)
    if leaks:
        raise ValueError(f"untagged cells show graded answers (tag them {ANSWER_TAG!r}): {leaks}")
    return copy


def write(out: Path) -> list[Path]:
    """Write ``out/student/*.ipynb`` and ``out/instructor/*.ipynb``; return the student files."""
    written = []
    for edition in ("student", "instructor"):
        shutil.rmtree(out / edition, ignore_errors=True)
        (out / edition).mkdir(parents=True)
    for chapter in chapters():
        notebook = nbformat.read(chapter, as_version=4)
        shutil.copy(chapter, out / "instructor" / chapter.name)
        target = out / "student" / chapter.name
        nbformat.write(student_notebook(notebook), target)
        written.append(target)
    return written


def main(argv: list[str]) -> int:
    """Write the editions into ``argv[0]`` (default ``_build``)."""
    out = Path(argv[0]) if argv else REPO / "_build"
    written = write(out)
    print(f"student edition: {len(written)} chapters in {out / 'student'}")
    print(f"instructor's copy: {out / 'instructor'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
