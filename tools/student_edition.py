"""Write the student edition of the book: every chapter without its solutions.

Usage: ``python -m tools.student_edition [OUT]`` writes ``OUT/student`` and ``OUT/instructor``
(``make student``: ``OUT = _build``).

A solution is a cell tagged ``solution``: the folded *Solutions* text at the end of a chapter
and the worked code of its graded exercise. The student edition drops exactly those cells and
keeps everything else, the graded exercises' checker cells included (``deeplab_edu.exercises``
ships with the package, so the checks run wherever the package is installed). The instructor's
copy, ``OUT/instructor``, is the chapters unchanged. The Colab check (``make colab``) runs
the student edition, so every chapter is known to run without its solutions.
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parents[1]
SOLUTION_TAG = "solution"


def chapters() -> list[Path]:
    """The chapter notebooks in table-of-contents order."""
    toc = (REPO / "_toc.yml").read_text()
    files = re.findall(r"^\s*- file: (\S+)", toc, flags=re.M)
    return [REPO / f"{f}.ipynb" for f in files if (REPO / f"{f}.ipynb").is_file()]


def is_solution(cell: nbformat.NotebookNode) -> bool:
    """Whether a cell is (part of) a solution."""
    return SOLUTION_TAG in cell.get("metadata", {}).get("tags", [])


def student_notebook(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """A copy of ``notebook`` without its solution cells.

    Raises:
        ValueError: if an untagged cell still holds a *Solutions* block (a solution that the
            edition would leak).
    """
    copy = nbformat.from_dict(notebook)
    copy.cells = [cell for cell in copy.cells if not is_solution(cell)]
    for cell in copy.cells:
        if "<summary>Solutions" in "".join(cell.source):
            raise ValueError(f"an untagged cell holds solutions: {''.join(cell.source)[:80]!r}")
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
