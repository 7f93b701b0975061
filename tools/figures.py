"""Export every chapter's figures for slides: ``python -m tools.figures EXECUTED OUT``.

Reads the chapters executed by ``tools.chapters execute`` (``make figures``: ``EXECUTED =
_build/executed``, run nothing again) and writes ``OUT/<chapter>/<chapter>-<n>.png`` and
``.svg`` for the ``n``-th figure of each chapter, numbered in reading order. The execution
stores every Matplotlib figure in both formats (:data:`FIGURE_FORMATS`); the committed chapters
keep the PNG only (``tools.chapters write-back`` drops the SVG), so exporting needs the
executed chapters.
"""

from __future__ import annotations

import base64
import sys
from pathlib import Path

import nbformat

from tools.student_edition import chapters

MIMES = {"png": "image/png", "svg": "image/svg+xml"}
FIGURE_FORMATS = tuple(MIMES)  # what the execution's inline backend stores for each figure


def figures(notebook: nbformat.NotebookNode) -> list[dict[str, str]]:
    """Each figure's data in the notebook's outputs: ``{"png": base64, "svg": text}``."""
    found = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if MIMES["png"] in data:
                found.append({kind: data[mime] for kind, mime in MIMES.items() if mime in data})
    return found


def export(executed: Path, out: Path) -> int:
    """Write the figures of every chapter in ``executed`` into ``out``; return 0, or 1 naming
    what is missing (a chapter not executed, a figure without its SVG). Only files named as
    this function names them (``<chapter>/<chapter>-<n>.png|svg``) are replaced or, left from
    an earlier export with more figures, removed: anything else in ``out`` is left alone."""
    missing = [c.name for c in chapters() if not (executed / c.name).is_file()]
    if missing:
        print(f"[figures] not executed: {missing}; run `make chapters` first")
        return 1
    count, problems = 0, []
    for chapter in chapters():
        folder = out / chapter.stem
        for stale in folder.glob(f"{chapter.stem}-*.*") if folder.is_dir() else []:
            if stale.stem.removeprefix(f"{chapter.stem}-").isdigit() and stale.suffix in (
                ".png",
                ".svg",
            ):
                stale.unlink()
        for number, figure in enumerate(figures(nbformat.read(executed / chapter.name, 4)), 1):
            folder.mkdir(parents=True, exist_ok=True)
            name = f"{chapter.stem}-{number}"
            (folder / f"{name}.png").write_bytes(base64.b64decode(figure["png"]))
            if "svg" in figure:
                (folder / f"{name}.svg").write_text(figure["svg"])
            else:
                problems.append(f"{name}: no SVG in the executed chapter")
            count += 1
    print(f"[figures] {count} figures of {len(chapters())} chapters in {out}")
    for problem in problems:
        print(f"[figures] {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(export(Path(sys.argv[1]), Path(sys.argv[2])))
