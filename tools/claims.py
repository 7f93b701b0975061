"""Every measured number in the chapters' prose is shown by an output, or listed here with why.

A number in a chapter's text followed by a unit of measurement (%, points, x, times, s, min,
MB, GB, images/s, frames/s), outside math and code spans, looks like a measurement. It passes
if an output of a code cell of the same chapter shows it (an output number that rounds to it at
the prose's precision, or whose percentage does: 0.7794 shows 77.9%), or if :data:`ALLOWED`
lists it for that chapter: the paper's numbers and other cited sources' (each also in the
appendix *Paper facts* or cited where it stands), file sizes, design values, and full-mode
estimates. The "Time to run" lines are checked by ``tests/test_project.py`` against the runner's
measurements, not here.

So a re-execution that moves a number leaves the prose that quotes it failing this check (run by
``make test`` on the executed chapters and by the unit tests on the committed ones), instead of
stale. Run: ``python -m tools.claims [FOLDER]`` (default ``book``).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

UNIT = (
    r"(?:%|\s?(?:points?|pt)\b|x\b|\s?times\b|\s?s\b|\s?seconds?\b|\s?min(?:utes?)?\b"
    r"|\s?[MG]B\b|\s?images/s\b|\s?frames/s\b)"
)
MEASURE = re.compile(r"(?<![\w.$^{/])(\d+(?:\.\d+)?)" + UNIT)
NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?")
SKIPPED = re.compile(r"\$\$.*?\$\$|\$[^$\n]*\$|`[^`]*`|\*\*Time to run:\*\*[^\n]*", re.S)

PAPER = "the paper (Paper facts)"
CITED = "a cited paper's reported result, named where it stands"
SIZE = "the size of a published file"
ESTIMATE = "a full-mode estimate, labelled as one in its table"
RECORD = "a benchmark record, stated as measured by benchmarks/bench_crf.py (its README)"
TRAINING = "a benchmark record, stated as measured by benchmarks/bench_training.py"
ALLOWED: dict[str, dict[str, str]] = {
    "before_and_after": {
        "62.2%": CITED,
        "67.2%": CITED,
        "71.6%": PAPER,
        "74.7%": CITED,
        "79.7%": CITED,
        "89.0%": CITED,
    },
    "crf_training": {"74.7%": CITED},
    "getting_started": {"71.6%": PAPER},
    "vgg_to_deeplab": {
        "67.64%": PAPER,
        "528 MB": SIZE,
        "15%": "derived in the text from two printed counts (20.5M / 134.3M)",
        "76%": "an exercise's solution, derived from printed counts",
    },
    "data": {"1.4 GB": SIZE},
    "engineering": {
        "1.4 GB": SIZE,
        "0.57 s": RECORD,
        "0.41 s": RECORD,
        "0.71 s": RECORD,
        "0.15 s": RECORD,
        "0.032 s": RECORD,
        "0.007 s": RECORD,
        "4x": RECORD,
        "2.57 s": RECORD,
        "2.68 s": RECORD,
        "7x": RECORD,
        "4.2x": RECORD,
        "8x": RECORD,
        "9x": RECORD,
        "768 points": "a chunk size (32,768 points), a design value",
        "0.90 s": RECORD,
        "0.74 s": RECORD,
        "3x": RECORD,
        "15%": RECORD,
        "21 s": RECORD,
        "975 MB": RECORD,
        "700 MB": RECORD,
        "1.38x": RECORD,
        "610 MB": RECORD,
        "0.87x": RECORD,
        "127 s": TRAINING,
        "168 s": TRAINING,
    },
    "reproduce": {
        "3.4 GB": SIZE,
        "1.4 GB": SIZE,
        "528 MB": SIZE,
        "40 min": ESTIMATE,
        "1.5 s": ESTIMATE,
        "60 min": ESTIMATE,
        "30 min": ESTIMATE,
        "5 points": "the paper's CRF gain, 62.25% -> 67.64% (Paper facts)",
    },
    "crf_parameters": {
        "27 points": "the size of a fine grid, 3 x 3 x 3, a design value",
        "76.3%": "recorded with deeplab_edu.runs.MIOU_TOLERANCE (two threads), cited there",
    },
}


def output_numbers(notebook: dict) -> set[float]:
    """Every number a chapter's code cells' outputs show, at 0-3 decimals, and as a percentage."""
    shown: set[float] = set()
    for cell in notebook["cells"]:
        for output in cell.get("outputs", []):
            text = "".join(output.get("text", "")) + "".join(
                output.get("data", {}).get("text/plain", "")
            )
            for value in map(float, NUMBER.findall(text)):
                for digits in range(4):
                    shown.update({round(abs(value), digits), round(abs(value) * 100, digits)})
    return shown


def unsupported(folder: Path) -> list[str]:
    """The measured-looking numbers of the chapters in ``folder`` that no output shows and
    :data:`ALLOWED` does not list: ``"chapter: '78.1%' in ...text..."`` each."""
    chapters = {path.stem: json.loads(path.read_text()) for path in sorted(folder.glob("*.ipynb"))}
    problems = []
    for name, notebook in chapters.items():
        shown, allowed = output_numbers(notebook), ALLOWED.get(name, {})
        for cell in notebook["cells"]:
            if cell["cell_type"] != "markdown":
                continue
            text = SKIPPED.sub(" ", "".join(cell["source"]))
            for match in MEASURE.finditer(text):
                if float(match.group(1)) in shown or match.group(0).strip() in allowed:
                    continue
                context = " ".join(text[max(0, match.start() - 50) : match.end() + 20].split())
                problems.append(f"{name}: {match.group(0).strip()!r} in '...{context}...'")
    return problems


def main(argv: list[str]) -> int:
    folder = Path(argv[0]) if argv else Path("book")
    problems = unsupported(folder)
    for problem in problems:
        print(
            f"[claims] {problem}: no output shows it; compute it, drop it, or list it in "
            "tools/claims.py with its source"
        )
    print(f"[claims] {folder}: {len(problems)} number(s) in prose without an output")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
