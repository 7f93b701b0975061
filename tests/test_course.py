"""The course guide keeps its promises: every learning objective a chapter states has a row that
names the activity exercising it, and the guide has its sessions, study hours, readings,
assessment weights that add up to 100% per unit, and a rubric with levels. Fast: it reads the
committed notebooks and the guide, and executes nothing."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
GUIDE = REPO / "book" / "course_guide.md"
CHAPTERS = sorted((REPO / "book").glob("*.ipynb"))

# The objectives that no activity exercises yet: their row in the guide says "none yet". Adding
# an activity (or dropping the objective) must update this set, so that it stays the to-do list.
UNEXERCISED: set[str] = set()

OBJECTIVES = "**Learning objectives.**"
TABLES = "## Learning objectives and the activities that exercise them"
ITEM = re.compile(r"^(\d+)\. (.*)")
CHAPTER_HEADING = re.compile(r"^### .+ \(`(\w+)`\)$", flags=re.M)
ROW = re.compile(r"^\| *(\d+) *\|(.*)\|(.*)\|$")


def notebook(path: Path) -> dict:
    return json.loads(path.read_text())


def stated_objectives(chapter: dict) -> list[str]:
    """The numbered list that follows "**Learning objectives.**" in the chapter's first cells."""
    for cell in chapter["cells"][:3]:
        text = "".join(cell["source"])
        if cell["cell_type"] != "markdown" or OBJECTIVES not in text:
            continue
        items: list[str] = []
        for line in text.split(OBJECTIVES, 1)[1].splitlines()[1:]:  # after "... you can:"
            if match := ITEM.match(line):
                assert int(match.group(1)) == len(items) + 1, f"list numbered out of order: {line}"
                items.append(match.group(2))
            elif items and line.startswith("   "):  # an item's continuation line
                items[-1] += " " + line.strip()
            elif items and not line.strip():
                break
        return items
    return []


def section(text: str, heading: str) -> str:
    """The text under ``heading`` (a "## " heading) up to the next "## " heading."""
    assert heading in text, f"the course guide has no section {heading!r}"
    body = text.split(heading + "\n", 1)[1]
    return re.split(r"^## ", body, maxsplit=1, flags=re.M)[0]


def objective_rows(text: str) -> dict[str, list[tuple[int, str, str]]]:
    """Per chapter stem, the rows (number, objective, activity) of its table in the guide."""
    body = section(text, TABLES)
    headings = list(CHAPTER_HEADING.finditer(body))
    tables = {}
    for heading, after in zip(headings, [*headings[1:], None], strict=True):
        block = body[heading.end() : after.start() if after else len(body)]
        rows = []
        for line in block.splitlines():
            if match := ROW.match(line.strip()):
                number, objective, activity = match.groups()
                rows.append((int(number), objective.strip(), activity.strip()))
        tables[heading.group(1)] = rows
    return tables


def objective_problems(text: str, stated: dict[str, list[str]]) -> list[str]:
    """What is wrong with the guide's objective tables against the chapters' stated lists."""
    tables, problems = objective_rows(text), []
    for stem in sorted(set(tables) - set(stated)):
        problems.append(f"{stem}: a table for a chapter that does not exist")
    for stem, objectives in stated.items():
        rows = tables.get(stem)
        if rows is None:
            problems.append(f"{stem}: no table (a heading '### Title (`{stem}`)' and its rows)")
            continue
        numbers = [number for number, _, _ in rows]
        if numbers != list(range(1, len(objectives) + 1)):
            problems.append(
                f"{stem}: rows {numbers}, but the chapter states objectives 1 to {len(objectives)}"
            )
        for number, objective, activity in rows:
            if not objective or not activity:
                problems.append(f"{stem}: row {number} has an empty objective or activity")
    return problems


def unexercised(text: str) -> set[str]:
    return {
        f"{stem}:{number}"
        for stem, rows in objective_rows(text).items()
        for number, _, activity in rows
        if activity.lower().startswith("none yet")
    }


@pytest.fixture(scope="module")
def guide() -> str:
    return GUIDE.read_text()


@pytest.fixture(scope="module")
def stated() -> dict[str, list[str]]:
    objectives = {path.stem: stated_objectives(notebook(path)) for path in CHAPTERS}
    assert CHAPTERS and all(objectives.values()), [s for s, o in objectives.items() if not o]
    return objectives


def test_every_stated_objective_has_a_row_with_an_activity(guide, stated) -> None:
    assert objective_problems(guide, stated) == []


def test_unexercised_objectives_are_the_listed_ones(guide) -> None:
    assert unexercised(guide) == UNEXERCISED


def test_the_objective_check_reports_a_missing_row_and_an_empty_activity(guide, stated) -> None:
    row = next(line for line in guide.splitlines() if line.startswith("| 2 | the receptive field"))
    problems = objective_problems(guide.replace(row + "\n", ""), stated)
    assert problems == ["atrous: rows [1, 3, 4], but the chapter states objectives 1 to 4"]
    emptied = guide.replace(row, row.rsplit("|", 2)[0] + "| |")
    assert objective_problems(emptied, stated) == [
        "atrous: row 2 has an empty objective or activity"
    ]
    renamed = guide.replace("(`atrous`)", "(`atrous_old`)")
    assert sorted(objective_problems(renamed, stated)) == [
        "atrous: no table (a heading '### Title (`atrous`)' and its rows)",
        "atrous_old: a table for a chapter that does not exist",
    ]
    assert unexercised(guide.replace(row, "| 2 | x | none yet |")) == UNEXERCISED | {"atrous:2"}


def test_objectives_are_read_from_the_chapters() -> None:
    atrous = stated_objectives(notebook(REPO / "book" / "atrous.ipynb"))
    assert len(atrous) == 4
    assert atrous[0].startswith("implement atrous (dilated) convolution from ordinary operations")
    assert atrous[0].endswith("against PyTorch's `dilation=`;")


SECTIONS = (
    "## Study hours per chapter",
    "## Syllabi: sessions",
    "## Readings",
    "## Assessment weights",
    "## Projects",
    "### Rubric",
    "## Lab rooms and shared machines",
    TABLES,
)
SESSION_FIELDS = ("**Chapters:**", "**Lecture:**", "**Lab:**", "**Due", "**Read:**")


def test_the_guide_has_its_sections_in_order(guide) -> None:
    positions = [guide.find("\n" + heading + "\n") for heading in SECTIONS]
    missing = [h for h, p in zip(SECTIONS, positions, strict=True) if p < 0]
    assert not missing and positions == sorted(positions), missing or "sections out of order"
    prose = re.sub(r"^```.*?^```", "", guide, flags=re.M | re.S)  # no code blocks
    levels = [len(h) for h in re.findall(r"^(#+) ", prose, flags=re.M)]
    assert levels[0] == 1 and all(b <= a + 1 for a, b in zip(levels, levels[1:], strict=False)), (
        "a heading skips a level"
    )


def sessions(guide: str, unit: str) -> list[str]:
    body = section(guide, "## Syllabi: sessions")
    body = body.split(f"### {unit}\n", 1)[1].split("\n### ", 1)[0]
    return re.split(r"^#### ", body, flags=re.M)[1:]


@pytest.mark.parametrize(("unit", "count"), [("A one-week module", 2), ("A three-week unit", 6)])
def test_every_session_has_chapters_lecture_lab_due_and_readings(guide, unit, count) -> None:
    found = sessions(guide, unit)
    assert len(found) == count
    for text in found:
        title = text.splitlines()[0]
        assert title.startswith("Session "), title
        for field in SESSION_FIELDS:
            assert field in text, f"{unit}, {title}: no {field}"
        reading = text.split("**Read:**", 1)[1]
        assert "the paper, §" in reading, f"{unit}, {title}: no section of the paper to read"


def test_projects_come_after_the_chapters_they_need(guide) -> None:
    """A project the three-week unit assigns at session N needs only chapters of sessions 1..N."""
    covered: list[set[str]] = []
    for text in sessions(guide, "A three-week unit"):
        line = text.split("**Chapters:**", 1)[1].split("\n- **", 1)[0]
        covered.append(set(re.findall(r"\[([^\]]+)\]\(\w+\.ipynb\)", line)))
    projects = section(guide, "## Projects").split("### Rubric")[0]
    assigned = 0
    for row in re.findall(r"^\| (P\d[^|]*) \|([^|]*)\|([^|]*)\|", projects, flags=re.M):
        name, needs, when = (cell.strip() for cell in row)
        if match := re.search(r"three-week unit[^|;]*?session (\d+)", when):
            assigned += 1
            done = set().union(*covered[: int(match.group(1))])
            missing = set(needs.split(", ")) - done
            assert not missing, f"{name}: assigned at session {match.group(1)} before {missing}"
    assert assigned >= 1, "the three-week unit assigns no project"


def test_study_hours_follow_the_stated_formula_and_the_chapters(guide) -> None:
    table = section(guide, "## Study hours per chapter")
    rows = [line.split(" | ") for line in table.splitlines() if line.startswith("| ")][1:]
    by_title = {row[0].removeprefix("| "): row for row in rows}
    for path in CHAPTERS:
        cells = notebook(path)["cells"]
        title = "".join(cells[0]["source"]).splitlines()[0].removeprefix("# ")
        (row,) = [r for name, r in by_title.items() if title.startswith(name.split(":")[0])]
        reading, exercises = row[4], row[5]
        assert re.fullmatch(r"\d+ min", reading), (path.stem, reading)
        written, graded, minutes = map(
            int, re.fullmatch(r"(\d+) \+ (\d+): (\d+) min", exercises).groups()
        )
        assert minutes == 15 * written + 45 * graded, (path.stem, exercises)
        text = [
            "".join(c["source"]) for c in cells if "solution" not in c["metadata"].get("tags", [])
        ]
        posed = next(t for t in text if "## Exercises" in t).split("## Exercises", 1)[1]
        posed = posed.split("**Graded exercise", 1)[0]
        assert written == len(re.findall(r"^\d+\. ", posed, flags=re.M)), path.stem
        assert graded == sum(t.count("**Graded exercise") for t in text), path.stem
        words, lines = study_counts(path)
        assert (int(row[2]), int(row[3])) == (words, lines), (path.stem, words, lines)
        estimate = words / 100 + lines / 4  # minutes, rounded to the nearest 5
        assert reading == f"{5 * round(estimate / 5)} min", (path.stem, reading, estimate)


def study_counts(path: Path) -> tuple[int, int]:
    """The guide's counts for a chapter as the student edition hands it out: words of the
    markdown cells (tokens with a letter or a digit; the line that replaces a left-out answer
    not counted), and non-blank code lines a reader sees (cells not tagged hide-input), with the
    package source that the show_source cells display."""
    from tools.student_edition import ANSWER_NOTE, student_notebook

    edition = student_notebook(nbformat.read(path, as_version=4))
    words = lines = 0
    for cell in edition.cells:
        if cell.cell_type == "markdown" and cell.source != ANSWER_NOTE:
            words += sum(1 for token in cell.source.split() if re.search(r"[A-Za-z0-9]", token))
        elif cell.cell_type == "code" and "hide-input" not in cell.metadata.get("tags", []):
            shown = [cell.source]
            if "show_source(" in cell.source:
                shown += [
                    o.get("data", {}).get("text/plain", "") or o.get("text", "")
                    for o in cell.outputs
                ]
            lines += sum(1 for text in shown for line in text.splitlines() if line.strip())
    return words, lines


def test_assessment_weights_add_up_to_100_per_unit(guide) -> None:
    lines = [
        line
        for line in section(guide, "## Assessment weights").splitlines()
        if line.startswith("|")
    ]
    units = [cell.strip() for cell in lines[0].strip("|").split("|")][1:]
    assert units == ["one-week module", "three-week unit", "term-long course"]
    totals = [0.0] * len(units)
    for line in lines[2:]:
        name, *weights = (cell.strip() for cell in line.strip("|").split("|"))
        values = [float(w.removesuffix("%")) for w in weights]
        if name == "total":
            assert values == [100.0] * len(units)
        else:
            totals = [t + v for t, v in zip(totals, values, strict=True)]
    assert totals == [100.0] * len(units)


def test_the_rubric_describes_four_levels_for_each_criterion(guide) -> None:
    rubric = section(guide, "## Projects").split("### Rubric", 1)[1]
    lines = [line for line in rubric.splitlines() if line.startswith("|")]
    levels = [cell.strip() for cell in lines[0].strip("|").split("|")][1:]
    assert [level.split(" (")[0] for level in levels] == [
        "excellent",
        "good",
        "adequate",
        "insufficient",
    ]
    assert all(re.search(r"\(\d+(-\d+)? points\)", level) for level in levels)
    criteria = {}
    for line in lines[2:]:
        name, *descriptions = (cell.strip() for cell in line.strip("|").split("|"))
        assert len(descriptions) == 4 and all(len(d) > 20 for d in descriptions), name
        criteria[name] = descriptions
    assert list(criteria) == ["correctness", "experimental care", "analysis", "presentation"]


def test_links_to_chapters_name_existing_files(guide) -> None:
    linked = set(re.findall(r"\]\((\w+)\.(?:ipynb|md)\)", guide))
    assert linked and linked <= {p.stem for p in (REPO / "book").iterdir()}
