"""Numbers in the chapters' prose are shown by outputs or listed with their source
(tools/claims.py): the book passes, a planted number fails, and the list holds no dead entry."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tools.claims import ALLOWED, MEASURE, PAPER, SKIPPED, unsupported

BOOK = Path(__file__).resolve().parents[1] / "book"


def test_every_number_in_the_chapters_prose_is_shown_or_listed() -> None:
    assert unsupported(BOOK) == []


def test_a_planted_number_fails_and_a_shown_one_passes(tmp_path) -> None:
    shutil.copy(BOOK / "results.ipynb", tmp_path)
    path = tmp_path / "results.ipynb"
    notebook = json.loads(path.read_text())
    markdown = next(c for c in notebook["cells"] if c["cell_type"] == "markdown")
    markdown["source"] = "".join(markdown["source"]) + "\nThe CRF adds 12.3 points here.\n"
    path.write_text(json.dumps(notebook))
    (problem,) = unsupported(tmp_path)
    assert problem.startswith("results: '12.3 points'")
    # a number an output shows (the held-out mean IoU with the CRF, 89.74 printed) passes
    markdown["source"] = markdown["source"].replace("12.3 points", "89.7%")
    path.write_text(json.dumps(notebook))
    assert unsupported(tmp_path) == []


def test_every_listed_number_is_still_in_its_chapter_and_the_papers_in_paper_facts() -> None:
    facts = (BOOK / "paper_facts.md").read_text()
    for chapter, numbers in ALLOWED.items():
        notebook = json.loads((BOOK / f"{chapter}.ipynb").read_text())
        prose = " ".join(
            SKIPPED.sub(" ", "".join(c["source"]))
            for c in notebook["cells"]
            if c["cell_type"] == "markdown"
        )
        found = {match.group(0).strip() for match in MEASURE.finditer(prose)}
        for number, reason in numbers.items():
            assert number in found, f"{chapter}: {number!r} is listed but no longer in the text"
            if reason == PAPER:
                assert number.rstrip("%") in facts, f"{number} is not in paper facts"
