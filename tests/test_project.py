"""The project's own promises: one dependency list, one repository URL, the chapter template."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import nbformat
import pytest
import yaml
from packaging.requirements import Requirement

from deeplab_edu.exercises import EXERCISES
from tools.student_edition import (
    ANSWER_NOTE,
    answer_leaks,
    chapters,
    is_solution,
    student_notebook,
    write,
)

REPO = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((REPO / "book").glob("*.ipynb"))


def pyproject_requirements(*, without: tuple[str, ...] = ()) -> set[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = [v for k, v in project["optional-dependencies"].items() if k not in without]
    return {str(Requirement(r)) for group in [project["dependencies"], *extras] for r in group}


def test_environment_yml_agrees_with_pyproject() -> None:
    # everything but the optional reference CRF, whose build may fail (it is never mandatory)
    environment = yaml.safe_load((REPO / "environment.yml").read_text())
    pip = next(d["pip"] for d in environment["dependencies"] if isinstance(d, dict))
    declared = {str(Requirement(r)) for r in pip if not r.startswith("-e")}
    assert declared == pyproject_requirements(without=("reference",))


def test_lock_pins_every_requirement_within_its_bounds() -> None:
    pins = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.strip().lower().replace("_", "-")] = version.strip()
    for text in pyproject_requirements():
        requirement = Requirement(text)
        name = requirement.name.lower().replace("_", "-")
        assert name in pins, f"{name} is not pinned in requirements.lock"
        assert requirement.specifier.contains(pins[name]), f"{name}=={pins[name]} vs {text}"
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"


def test_repository_url_is_defined_once_and_colab_cells_use_it() -> None:
    config = yaml.safe_load((REPO / "_config.yml").read_text())
    url = config["repository"]["url"]
    assert config["launch_buttons"]["colab_url"]
    assert CHAPTERS, "no chapter notebooks found"
    for chapter in CHAPTERS:
        setup = "".join(json.loads(chapter.read_text())["cells"][1]["source"])
        found = re.findall(r"git\+(\S+?)\"", setup)
        assert found == [url], f"{chapter.name}: Colab install cell uses {found}, config has {url}"


def test_chapters_follow_the_template() -> None:
    for chapter in CHAPTERS:
        cells = json.loads(chapter.read_text())["cells"]
        text = ["".join(cell["source"]) for cell in cells]
        assert cells[0]["cell_type"] == "markdown" and text[0].startswith("# "), chapter.name
        assert 'if "google.colab" in sys.modules:' in text[1], f"{chapter.name}: setup cell"
        assert "runtime.describe(" in text[1], f"{chapter.name}: setup cell prints mode/device"
        assert any("## Summary" in t for t in text), f"{chapter.name}: no Summary"
        assert any("## Exercises" in t for t in text), f"{chapter.name}: no Exercises"
        for opening in ("**Learning objectives.**", "**Prerequisites:**", "**Time to run:**"):
            assert opening in text[0], f"{chapter.name}: the first cell has no {opening}"
        solutions = [t for c, t in zip(cells, text, strict=True) if is_solution(c)]
        assert any("<summary>Solutions</summary>" in t for t in solutions), chapter.name
        code = [c for c in cells if c["cell_type"] == "code"]
        assert all(c.get("outputs") for c in code[:2]), f"{chapter.name}: committed without outputs"
        assert not re.search(r"device\s*=\s*['\"]cuda", "".join(text)), f"{chapter.name}: cuda"


def test_every_chapter_is_in_the_table_of_contents() -> None:
    toc = (REPO / "_toc.yml").read_text()
    listed = set(re.findall(r"^\s*- file: (\S+)", toc, flags=re.M))
    for chapter in CHAPTERS:
        assert f"book/{chapter.stem}" in listed, f"{chapter.name} is not in _toc.yml"


# MyST syntax that Jupyter and Colab show as raw text: directives, roles, labels, comments
COLAB_RAW = re.compile(r"```\{|:::|\{[a-z:-]+\}`|^\([\w-]+\)=\s*$|^% ", flags=re.M)


def test_chapter_markdown_renders_in_colab() -> None:
    """Solutions in HTML ``<details>`` (hidden until clicked in Colab and on the site), notes as
    blockquotes, links as plain markdown: nothing a reader needs is MyST-only."""
    raw = []
    for chapter in CHAPTERS:
        for index, cell in enumerate(json.loads(chapter.read_text())["cells"]):
            source = "".join(cell["source"])
            if cell["cell_type"] == "markdown":
                raw += [f"{chapter.name} cell {index}: {m!r}" for m in COLAB_RAW.findall(source)]
                if source.count("<details>") != source.count("</details>"):
                    raw.append(f"{chapter.name} cell {index}: unbalanced <details>")
    assert raw == []


def test_colab_scan_finds_myst_syntax() -> None:
    for sample in (
        "```{dropdown} Solutions",
        ":::{admonition} Paper",
        "see {doc}`data`",
        "{func}`~deeplab_edu.crf.dense_crf`",
        "(my-label)=",
        "% a MyST comment",
    ):
        assert COLAB_RAW.search(sample), sample
    assert not COLAB_RAW.search("> **Paper, section 4.** A quote.\n\n<details>")


MACHINE_PATH = re.compile(r"(/work/|/root/|/home/[^/\s]+/|/tmp/tmp|/Users/[^/\s]+/)")


def test_committed_outputs_show_no_machine_paths() -> None:
    found = []
    for chapter in CHAPTERS:
        for index, cell in enumerate(json.loads(chapter.read_text())["cells"]):
            text = json.dumps(cell.get("outputs", []))
            found += [f"{chapter.name} cell {index}: {m}" for m in MACHINE_PATH.findall(text)]
    assert found == []


CHECK_CALL = re.compile(r'check\("([\w.]+)", (\w+)\)')


def test_core_chapters_have_a_graded_exercise_and_its_solution() -> None:
    """Each exercise of deeplab_edu.exercises is posed in its chapter (a stub and the checker,
    kept in the student edition) and solved in a cell tagged ``solution``."""
    posed, solved = {}, {}
    for chapter in CHAPTERS:
        for cell in json.loads(chapter.read_text())["cells"]:
            for name, function in CHECK_CALL.findall("".join(cell["source"])):
                assert EXERCISES[name].function == function, (chapter.name, name, function)
                target = solved if is_solution(cell) else posed
                target[name] = chapter.stem
                if not is_solution(cell):
                    assert "raise NotImplementedError" in "".join(cell["source"]), chapter.name
    assert posed == solved and set(posed) == set(EXERCISES)
    stems = {"network": "vgg_to_deeplab"}
    assert all(
        chapter == stems.get(n.split(".")[0], n.split(".")[0]) for n, chapter in posed.items()
    )


@pytest.fixture(scope="module")
def editions(tmp_path_factory) -> tuple[Path, list[Path]]:
    """``make student``'s output: the editions' folder and the student chapters written."""
    out = tmp_path_factory.mktemp("editions")
    return out, write(out)


def test_student_edition_keeps_every_exercise_and_no_solution(editions) -> None:
    tmp_path, written = editions
    assert [p.name for p in written] == [p.name for p in chapters()]
    assert sorted(p.name for p in (tmp_path / "instructor").iterdir()) == sorted(
        [p.name for p in written] + ["key.ipynb"]
    )
    for path in written:
        original = nbformat.read(REPO / "book" / path.name, as_version=4)
        student = nbformat.read(path, as_version=4)
        kept = [c.source for c in original.cells if not is_solution(c)]  # nor answers
        assert [c.source for c in student.cells if c.source != ANSWER_NOTE] == kept, path.name
        text = "\n".join(c.source for c in student.cells)
        assert "## Exercises" in text and "<summary>Solutions" not in text, path.name
        assert len(student.cells) < len(original.cells), f"{path.name}: nothing removed"
    leaky = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_markdown_cell(
                "<details>\n<summary>Solutions</summary>\n\n1. 42\n</details>"
            )
        ]
    )
    with pytest.raises(ValueError, match="an untagged cell holds solutions"):
        student_notebook(leaky)


LINK = re.compile(r"\]\(([\w./-]+\.(?:ipynb|md))(?:#[\w-]*)?\)")


def test_the_student_edition_is_a_whole_book_without_solutions(editions) -> None:
    """Every page of the table of contents and every page a chapter or page links to is in the
    student edition; no cell of it is a solution or shows a graded function's code (source or
    outputs); its Colab buttons open the student branch; the key is not in it."""
    site = editions[0] / "student"
    toc = re.findall(r"^\s*(?:- file|root): (\S+)", (site / "_toc.yml").read_text(), flags=re.M)
    pages = [p for p in (site / "book").iterdir() if p.suffix in (".md", ".ipynb")]
    assert {f"book/{p.stem}" for p in pages} == set(toc)
    for page in pages:
        text = page.read_text()
        for target in LINK.findall(text):
            assert (page.parent / target).is_file(), f"{page.name} links to missing {target}"
        if page.suffix == ".ipynb":
            notebook = nbformat.read(page, as_version=4)
            assert not any(is_solution(c) for c in notebook.cells), page.name
            assert answer_leaks(notebook) == [], page.name
            assert "<summary>Solutions" not in text, page.name
    assert "branch: student-edition" in (site / "_config.yml").read_text()
    assert not list(site.rglob("key.ipynb"))


def test_the_key_holds_every_solution_and_model_answer(editions) -> None:
    key = nbformat.read(editions[0] / "instructor" / "key.ipynb", as_version=4)
    text = "\n".join(c.source for c in key.cells)
    for exercise in EXERCISES.values():
        assert f"def {exercise.function}(" in text, exercise.name  # the worked solution
    solutions = [
        c.source
        for chapter in chapters()
        for c in nbformat.read(chapter, as_version=4).cells
        if c.cell_type == "markdown" and is_solution(c)
    ]
    assert solutions and all(s in text for s in solutions)
    # the questions' model answers: after "Graded exercise:" in three chapters' solutions
    answered = [
        s for s in solutions if "Graded exercise: the worked solution is the next cell. " in s
    ]
    assert len(answered) >= sum(e.question is not None for e in EXERCISES.values())


def test_publish_commits_the_student_edition_to_its_branch(tmp_path) -> None:
    import subprocess

    from tools.student_edition import STUDENT_BRANCH, publish

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=tmp_path, capture_output=True, text=True, check=True
        ).stdout.strip()

    git("init", "-q", "-b", "main")
    (tmp_path / "work.txt").write_text("a teacher's file")
    git("add", "work.txt")
    git("-c", "user.name=t", "-c", "user.email=t@example.org", "commit", "-q", "-m", "start")
    first = publish(tmp_path)
    second = publish(tmp_path)
    assert git("rev-parse", STUDENT_BRANCH) == second
    assert git("rev-parse", f"{second}^") == first  # each publication on top of the last
    names = git("ls-tree", "--name-only", f"{STUDENT_BRANCH}:book").splitlines()
    assert names == sorted(c.name for c in chapters())
    published = nbformat.reads(git("show", f"{STUDENT_BRANCH}:book/crf.ipynb"), as_version=4)
    assert not any(is_solution(c) for c in published.cells)
    assert git("rev-parse", "--abbrev-ref", "HEAD") == "main" and git("status", "--short") == ""


TIME = re.compile(r"\*\*Time to run:\*\* about (\d+ (?:s|min))")


def test_course_guide_times_are_the_chapters_own() -> None:
    """The course guide's table lists each chapter's measured time as the chapter states it."""
    guide = (REPO / "book" / "course_guide.md").read_text()
    rows = dict(re.findall(r"^\| ([^|]+?) \| about (\d+ (?:s|min))", guide, flags=re.M))
    for chapter in chapters():
        notebook = json.loads(chapter.read_text())
        first = "".join(notebook["cells"][0]["source"])
        title = first.splitlines()[0].removeprefix("# ")
        (minutes,) = TIME.findall(first) or [None]
        assert minutes is not None, f"{chapter.name}: no measured time in the first cell"
        matches = [m for row, m in rows.items() if title.startswith(row.split(":")[0])]
        assert matches == [minutes], (chapter.name, title, matches, minutes)


def test_show_source_leaves_out_docstrings_and_argument_checks() -> None:
    import inspect

    from deeplab_edu.models.atrous import atrous_conv2d
    from deeplab_edu.viz import core_source

    full = inspect.getsource(atrous_conv2d)
    core = core_source(full)
    assert "raise ValueError" in full and "Args:" in full
    assert "raise" not in core and "Args:" not in core and "_check(" not in core
    assert core.count("argument checks left out") == 1
    assert "weight.reshape(c_out, -1) @ columns" in core  # the computation stays, line for line
    assert set(core.splitlines()) - set(full.splitlines()) == {
        "    # (argument checks left out: show_source(..., core=False))"
    }


def test_pre_commit_runs_the_lint_target_and_lint_type_checks_the_package() -> None:
    hooks = yaml.safe_load((REPO / ".pre-commit-config.yaml").read_text())["repos"][0]["hooks"]
    assert [hook["entry"] for hook in hooks] == ["make lint"]
    makefile = (REPO / "Makefile").read_text()
    lint = makefile.split("\nlint:", 1)[1].split("\n\n", 1)[0]
    assert "ruff check" in lint and "ruff format --check" in lint and "mypy" in lint
    settings = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["mypy"]
    assert settings["files"] == ["deeplab_edu"]


BANDWIDTH_AS_THETA = re.compile(r"\\\\?theta_\{?\\\\?(alpha|beta|gamma)")


def test_one_notation_in_the_chapters_and_the_package() -> None:
    """The bandwidths are sigma (the paper's), theta is kept for the potentials: no chapter's text
    and no docstring or comment's equation writes theta for a bandwidth; the glossary lists every
    bandwidth with its name in the code, and is in the table of contents."""
    found = []
    for chapter in CHAPTERS:
        for index, cell in enumerate(json.loads(chapter.read_text())["cells"]):
            if cell["cell_type"] == "markdown" and BANDWIDTH_AS_THETA.search(
                "".join(cell["source"])
            ):
                found.append(f"{chapter.name} cell {index}")
    for page in sorted((REPO / "book").glob("*.md")):
        if BANDWIDTH_AS_THETA.search(page.read_text()):
            found.append(page.name)
    for path in sorted((REPO / "deeplab_edu").rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if "$" in line and BANDWIDTH_AS_THETA.search(line):
                found.append(f"{path.name}:{number}")
    assert found == []
    glossary = (REPO / "book" / "notation.md").read_text()
    for greek in ("alpha", "beta", "gamma"):
        assert f"$\\sigma_\\{greek}$" in glossary and f"`theta_{greek}`" in glossary
    assert "book/notation" in (REPO / "_toc.yml").read_text()


def test_the_teaching_kits_misconception_boxes() -> None:
    """The atrous, metrics and CRF chapters each hold a box of at least three misconceptions."""
    for stem in ("atrous", "metrics", "crf"):
        cells = json.loads((REPO / "book" / f"{stem}.ipynb").read_text())["cells"]
        boxes = [
            "".join(c["source"])
            for c in cells
            if c["cell_type"] == "markdown"
            and "> **Common misconceptions**" in "".join(c["source"])
        ]
        assert len(boxes) == 1, stem
        box = boxes[0].split("> **Common misconceptions**", 1)[1].split("\n\n", 1)[0]
        assert box.count('\n> - *"') >= 3, stem
