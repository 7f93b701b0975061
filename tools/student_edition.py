"""Write the student edition of the book: every chapter without its solutions, and the
instructor's key apart.

Usage: ``python -m tools.student_edition [OUT]`` writes ``OUT/student`` and ``OUT/instructor``
(``make student``: ``OUT = _build``); ``python -m tools.student_edition publish`` commits the
student edition to the branch ``student-edition`` (for the maintainers to push: the public
site's Colab buttons open the chapters there).

A solution is a cell tagged ``solution``: the folded *Solutions* text at the end of a chapter
(the model answers, the graded exercise's question's included) and the worked code of its
graded exercise. An answer is a cell tagged ``answer``: one that shows the package's own code of
a graded exercise's function (``show_source``), which the chapter explains before the exercise
asks for it; :func:`answer_leaks` finds any such cell left untagged. The student edition drops
exactly those two kinds of cells and keeps everything else, the graded exercises' checker cells
and answer cells included (``deeplab_edu.exercises`` ships with the package, so the checks run
wherever the package is installed).

``OUT/student`` is a whole book (every page of the table of contents, the chapters in their
student edition, the configuration with the Colab buttons on the student branch): the public
website is built from it (``tools.chapters stage``), so the site holds no solution. The
instructor's copy, ``OUT/instructor``, is the chapters unchanged and ``key.ipynb``: the
solutions and the package's answers of every chapter in one notebook, which is on no site.
"""

from __future__ import annotations

import functools
import inspect
import os
import re
import shutil
import subprocess
import sys
import tempfile
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


@functools.cache
def _code_lines(fn: Callable) -> frozenset[str]:
    """The distinctive lines of ``fn``'s code as ``show_source`` shows it, after its argument
    checks: statements of 20 characters or more, stripped (no comment or blank line)."""
    source = core_source(inspect.getsource(fn))
    body = source.split("(argument checks left out", 1)[-1].splitlines()[1:]
    return frozenset(
        line.strip() for line in body if len(line.strip()) >= 20 and line.strip()[0] != "#"
    )


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


STUDENT_BRANCH = "student-edition"  # the branch the public site's Colab buttons open


def site_config(text: str) -> str:
    """The book's ``_config.yml`` for the student edition: launch buttons on its branch."""
    line = "  branch: main\n"
    if text.count(line) != 1:
        raise ValueError("expected one 'branch: main' line under 'repository:' in _config.yml")
    return text.replace(line, f"  branch: {STUDENT_BRANCH}\n")


def student_book(site: Path, executed: Path) -> list[Path]:
    """Write the student edition as a whole book into ``site`` (made afresh): every page of
    ``book/``, ``_toc.yml``, :func:`site_config`, and the student edition of each chapter
    notebook found in ``executed``. Returns the chapters written."""
    shutil.rmtree(site, ignore_errors=True)
    shutil.copytree(REPO / "book", site / "book", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "_toc.yml", site / "_toc.yml")
    (site / "_config.yml").write_text(site_config((REPO / "_config.yml").read_text()))
    written = []
    for chapter in chapters():
        notebook = nbformat.read(executed / chapter.name, as_version=4)
        target = site / "book" / chapter.name
        nbformat.write(student_notebook(notebook), target)
        written.append(target)
    return written


def key(notebooks: list[Path]) -> nbformat.NotebookNode:
    """The instructor's key: for each chapter, its solution cells (model answers, worked code
    with its outputs) and its answer cells (the package's code of a graded function)."""
    cells = [
        nbformat.v4.new_markdown_cell(
            "# Instructor's key\n\nThe solutions of every chapter, the graded exercises' "
            "worked code and the model answers to their questions, and the package's own code "
            "of each graded function. Not for students: the public site and the student edition "
            "leave all of it out."
        )
    ]
    for path in notebooks:
        notebook = nbformat.read(path, as_version=4)
        kept = [c for c in notebook.cells if is_solution(c)]
        if kept:
            title = notebook.cells[0].source.splitlines()[0].lstrip("# ")
            cells.append(nbformat.v4.new_markdown_cell(f"## {title} (`{path.stem}`)"))
            cells += [_copy(c) for c in kept]  # with ids of their own (unique in the key)
    return nbformat.v4.new_notebook(cells=cells, metadata=notebook.metadata)


def _copy(cell: nbformat.NotebookNode) -> nbformat.NotebookNode:
    if cell.cell_type == "code":
        return nbformat.v4.new_code_cell(
            cell.source,
            metadata=cell.metadata,
            outputs=cell.outputs,
            execution_count=cell.execution_count,
        )
    return nbformat.v4.new_markdown_cell(cell.source, metadata=cell.metadata)


def write(out: Path) -> list[Path]:
    """Write ``out/student`` (:func:`student_book` of the committed chapters) and
    ``out/instructor`` (the chapters unchanged, and :func:`key`); return the student chapters."""
    shutil.rmtree(out / "instructor", ignore_errors=True)
    (out / "instructor").mkdir(parents=True)
    for chapter in chapters():
        shutil.copy(chapter, out / "instructor" / chapter.name)
    nbformat.write(key(chapters()), out / "instructor" / "key.ipynb")
    return student_book(out / "student", REPO / "book")


def publish(repo: Path, branch: str = STUDENT_BRANCH) -> str:
    """Commit the student edition's chapters (``book/<chapter>.ipynb``, as the public site's
    Colab buttons name them) to ``branch`` of the git repository ``repo``, on top of its last
    commit; the working tree, the index and the current branch are left alone. Returns the new
    commit's hash."""

    def git(*args: str, env: dict | None = None) -> str:
        done = subprocess.run(
            ["git", *args], cwd=repo, env=env, capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"git {' '.join(args)} failed: {done.stderr.strip()}")
        return done.stdout.strip()

    with tempfile.TemporaryDirectory() as folder:
        tree = Path(folder) / "tree"
        for chapter in student_book(Path(folder) / "site", REPO / "book"):
            (tree / "book").mkdir(parents=True, exist_ok=True)
            shutil.copy(chapter, tree / "book" / chapter.name)
        env = dict(os.environ, GIT_INDEX_FILE=str(Path(folder) / "index"))
        env.setdefault("GIT_AUTHOR_NAME", "deeplab-edu")
        env.setdefault("GIT_AUTHOR_EMAIL", "deeplab-edu@users.noreply.github.com")
        env.setdefault("GIT_COMMITTER_NAME", env["GIT_AUTHOR_NAME"])
        env.setdefault("GIT_COMMITTER_EMAIL", env["GIT_AUTHOR_EMAIL"])
        git("--work-tree", str(tree), "add", "-A", ".", env=env)
        written = git("write-tree", env=env)
        try:
            parent = ["-p", git("rev-parse", "--verify", "--quiet", f"refs/heads/{branch}")]
        except RuntimeError:
            parent = []  # the branch's first commit
        source = git("rev-parse", "--short", "HEAD")
        message = f"The student edition of {source} (tools/student_edition.py publish)"
        commit = git("commit-tree", written, *parent, "-m", message, env=env)
        git("update-ref", f"refs/heads/{branch}", commit)
    return commit


def main(argv: list[str]) -> int:
    """``publish`` (:func:`publish` to this checkout), or write the editions into ``argv[0]``
    (default ``_build``)."""
    if argv[:1] == ["publish"]:
        commit = publish(REPO)
        print(f"student edition committed to branch {STUDENT_BRANCH}: {commit}")
        return 0
    out = Path(argv[0]) if argv else REPO / "_build"
    written = write(out)
    print(f"student edition: {len(written)} chapters, a whole book, in {out / 'student'}")
    print(f"instructor's copy and key: {out / 'instructor'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
