"""Grading a class: every submission in a process of its own, a gradebook for the teacher.

A submission is a Python file that defines some of the graded functions
(:data:`~deeplab_edu.exercises.EXERCISES`), or the student's own chapter notebook. Of a
notebook, only the imports and definitions of its graded cells run (the exercise cells, tagged
``graded``, or any cell that defines a graded function), after the import statements of its
other code cells: never the whole chapter. Its cells tagged ``written`` hold the answers to the
exercises' conceptual questions, collected into the gradebook for marking by hand.

Each submission runs in a process of its own (``python -m deeplab_edu.grading WORKDIR``) under
a time limit and a memory cap. That process calls the student's functions
(:func:`~deeplab_edu.exercises.attempt`) and saves what they returned; the grader's own process
judges it (:func:`~deeplab_edu.exercises.judge`). A hang, a crash, ``sys.exit`` or a replaced
checker costs that submission only, and can change nothing but the values that are judged; a
run that ends early costs the exercise it was in, and a new run takes the exercises after it.
The worker is not a sandbox: a submission written to subvert the worker's own code (reading
the grader's source to do so) is cheating that a teacher finds by reading it, not a mistake
the grader reports.

Points: an exercise whose cases all pass earns its ``points``, any other nothing: the checker
stops at the first case that differs, so counting cases would reward the order of the cases,
not the work. A missing function earns nothing.
"""

from __future__ import annotations

import ast
import contextlib
import csv
import dataclasses
import importlib.util
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from deeplab_edu.exercises import EXERCISES, Attempt, Exercise, Report, attempt, judge
from deeplab_edu.exercises import source_problem as rule_in_source
from deeplab_edu.fetch import atomic_write

GRADED_TAG = "graded"  # a notebook cell whose imports and definitions are graded
WRITTEN_TAG = "written"  # a markdown cell holding the answer to an exercise's question
# the written answer cell as the student edition hands it out: its first line, then this
ANSWER_PLACEHOLDER = "*Write your answer here.*"
SUFFIXES = (".py", ".ipynb")
LOADED = "loaded.json"  # what the worker found in the submission, or why it would not load


@dataclass(frozen=True)
class Limits:
    """What one submission may use.

    Attributes:
        seconds: wall-clock time for one run of the submission's process (loading it and the
            exercises left; a run that ends early is followed by one for the exercises after
            the one it ended in).
        memory_mb: the cap on its data memory (``RLIMIT_DATA``: heap and anonymous mappings);
            importing PyTorch takes about 0.8 GB of it.
    """

    seconds: float = 120.0
    memory_mb: int = 2048


@dataclass(frozen=True)
class Row:
    """One line of the gradebook: a student's exercise, or their written answer.

    Attributes:
        student: the submission's file name without its suffix.
        submission: the submission's path.
        exercise: the exercise's name; ``"<name> (written)"`` for its conceptual question.
        points: the points earned; None for a written answer (marked by hand).
        max_points: what the exercise is worth; None for a written answer.
        passed: every case passed; None for a written answer.
        cases: the cases that passed.
        total: the exercise's cases.
        feedback: the checker's report, or why there is none.
        failed_case: the first case that did not pass ("" if none).
        answer: the written answer ("" if none).
    """

    student: str
    submission: str
    exercise: str
    points: float | None
    max_points: int | None
    passed: bool | None
    cases: int
    total: int
    feedback: str
    failed_case: str = ""
    answer: str = ""


def find_submissions(paths: Sequence[str | Path]) -> list[Path]:
    """The submissions named by ``paths``: files, and the ``.py``/``.ipynb`` files directly
    inside folders (sorted by name).

    Raises:
        FileNotFoundError: if a path does not exist.
        ValueError: for a file of another kind, a folder without submissions, or none at all.
    """
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            inside = sorted(p for p in path.iterdir() if p.suffix in SUFFIXES and p.is_file())
            if not inside:
                raise ValueError(f"{path} holds no submission (expected .py or .ipynb files)")
            found += inside
        elif path.is_file():
            if path.suffix not in SUFFIXES:
                raise ValueError(
                    f"expected a submission (.py or .ipynb) or a folder of them, got {path}"
                )
            found.append(path)
        else:
            raise FileNotFoundError(f"submission not found: {path}")
    return found


def _cells(notebook: Path) -> list[dict]:
    """A notebook's cells (JSON), each ``source`` one string.

    Raises:
        ValueError: if the file is not a notebook.
    """
    try:
        cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as error:
        raise ValueError(f"{notebook} is not a Jupyter notebook ({error})") from error
    for cell in cells:
        source = cell.get("source", "")
        cell["source"] = "".join(source) if isinstance(source, list) else source
    return cells


def _tags(cell: dict) -> list[str]:
    return cell.get("metadata", {}).get("tags", [])


def graded_source(notebook: Path) -> str:
    """The Python a notebook submission is graded on: the import statements of every code cell,
    then the imports and definitions of its graded cells (statements that call ``check`` and
    other statements left out), each statement as the student wrote it."""
    functions = {e.function for e in EXERCISES.values()}
    kept: list[str] = []
    for cell in _cells(notebook):
        if cell.get("cell_type") != "code":
            continue
        # IPython's magics and shell lines are not Python
        lines = [
            "" if line.lstrip().startswith(("%", "!")) else line
            for line in cell["source"].splitlines()
        ]
        try:
            tree = ast.parse("\n".join(lines))
        except SyntaxError:
            continue  # not graded: a cell that does not parse defines nothing that is
        defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        graded = GRADED_TAG in _tags(cell) or bool(defined & functions)
        for node in tree.body:
            if isinstance(node, ast.Import | ast.ImportFrom) or (graded and _definition(node)):
                first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
                kept.append("\n".join(lines[first - 1 : node.end_lineno]))
    return "\n\n".join(kept) + "\n"


def _definition(node: ast.stmt) -> bool:
    """A definition (function, class, assignment) that does not call ``check``."""
    if not isinstance(node, ast.FunctionDef | ast.ClassDef | ast.Assign | ast.AnnAssign):
        return False
    if isinstance(node, ast.FunctionDef | ast.ClassDef):
        return True
    calls = (n.func for n in ast.walk(node) if isinstance(n, ast.Call))
    return not any(isinstance(f, ast.Name) and f.id == "check" for f in calls)


def written_answers(notebook: Path) -> dict[str, str]:
    """Each exercise's written answer in a notebook submission: its ``written`` cell (metadata
    ``question``: the exercise's name) after its first line; "" where it is still the
    placeholder."""
    answers = {}
    for cell in _cells(notebook):
        name = cell.get("metadata", {}).get("question")
        if cell.get("cell_type") == "markdown" and WRITTEN_TAG in _tags(cell) and name:
            text = "\n".join(cell["source"].splitlines()[1:]).strip()
            answers[name] = "" if text == ANSWER_PLACEHOLDER else text
    return answers


# ---------------------------------------------------------------------------------------------
# the submission's own process


def _save(path: Path, data: object) -> None:
    with atomic_write(path) as handle:
        torch.save(data, handle)


def _load(source: Path) -> object:
    spec = importlib.util.spec_from_file_location("submission", source)
    if spec is None or spec.loader is None:
        raise ImportError(f"{source} cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def worker(workdir: Path, names: Sequence[str] = ()) -> int:
    """The submission's process: load ``workdir/submission.py``, write ``LOADED`` (the graded
    functions it defines, or why it does not load), then one ``<exercise>.pt`` per exercise
    (those in ``names``, or all), in the order of ``EXERCISES``, with the student's attempts at
    its cases."""
    try:
        module = _load(workdir / "submission.py")
    except SystemExit as error:
        problem = f"the submission ends the process when it is loaded (sys.exit({error}))"
        (workdir / LOADED).write_text(json.dumps({"problem": problem}))
        return 0
    except BaseException as error:  # noqa: BLE001 - the student's file: its error is the grade
        problem = f"the submission does not load: {type(error).__name__}: {error}"
        (workdir / LOADED).write_text(json.dumps({"problem": problem}))
        return 0
    found = [e for e in EXERCISES.values() if callable(getattr(module, e.function, None))]
    (workdir / LOADED).write_text(json.dumps({"found": [e.name for e in found]}))
    for spec in (e for e in found if not names or e.name in names):
        fn = getattr(module, spec.function)
        broken = rule_in_source(spec, fn)
        tries = [] if broken else [attempt(spec, fn, case) for case in spec.cases()]
        record = {"rule": broken, "attempts": [dataclasses.asdict(t) for t in tries]}
        _save(workdir / f"{spec.name}.pt", record)
    return 0


def _limit_memory(megabytes: int) -> None:
    """Cap the calling process's data memory (run in the child before it starts), where the
    system lets a process lower its own limit (Linux does; where it does not, the submission
    runs with the time limit only)."""
    import resource  # POSIX only; checked by grade()

    cap = megabytes * 2**20
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_DATA, (cap, cap))


def _run(workdir: Path, limits: Limits, names: Sequence[str]) -> str:
    """Run the worker on ``workdir`` for the exercises ``names`` (all: none); return how it
    ended, for the feedback."""
    package_parent = str(Path(__file__).resolve().parents[1])
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        PYTHONDONTWRITEBYTECODE="1",
        PYTHONPATH=os.pathsep.join(filter(None, [package_parent, os.environ.get("PYTHONPATH")])),
    )
    with open(workdir / "output.txt", "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "deeplab_edu.grading", str(workdir), *names],
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: killed whole on a timeout
            preexec_fn=lambda: _limit_memory(limits.memory_mb),  # noqa: PLW1509 - no threads
        )
        try:
            status = process.wait(timeout=limits.seconds)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return f"the time limit ({limits.seconds:g} s) ran out"
    return f"the submission's process ended (exit status {status})"


def _judged(spec: Exercise, workdir: Path, ended: str) -> Report:
    """Judge the attempts the worker saved for ``spec`` (here, out of the submission's reach)."""
    total = len(list(spec.cases()))
    path = workdir / f"{spec.name}.pt"
    if not path.is_file():
        return Report(spec.name, False, 0, total, f"No result: {ended} before it was checked.")
    try:
        record = torch.load(path, weights_only=True)  # data only: no code from the submission
        if record["rule"]:
            return Report(spec.name, False, 0, total, f"Case 1: {record['rule']}", "its source")
        tries = [Attempt(**fields) for fields in record["attempts"]]
        return judge(spec, zip(spec.cases(), tries, strict=False))
    except Exception as error:  # noqa: BLE001 - whatever the submission left there
        return Report(spec.name, False, 0, total, f"Its results could not be read ({error}).")


def grade_one(path: Path, workdir: Path, limits: Limits) -> list[Row]:
    """Grade one submission, working in the (new, empty) folder ``workdir``."""
    workdir.mkdir(parents=True)
    if path.suffix == ".ipynb":
        (workdir / "submission.py").write_text(graded_source(path), encoding="utf-8")
        answers = written_answers(path)
    else:
        (workdir / "submission.py").write_bytes(path.read_bytes())
        answers = {}
    loaded, ended_in = _attempts(workdir, limits)
    rows = []
    for spec in EXERCISES.values():
        if "problem" in loaded:
            report = Report(spec.name, False, 0, len(list(spec.cases())), str(loaded["problem"]))
        elif spec.name not in loaded.get("found", []):
            report = Report(spec.name, False, 0, len(list(spec.cases())), "Not submitted.")
        else:
            report = _judged(spec, workdir, ended_in.get(spec.name, "the worker stopped"))
        points = spec.points if report.passed else 0
        rows.append(_row(path, report, points, spec.points, report.failed_case))
        if spec.question is not None:
            answer = answers.get(spec.name, "")
            note = "to mark by hand" if answer else "not answered"
            rows.append(
                Row(
                    path.stem,
                    str(path),
                    f"{spec.name} (written)",
                    None,
                    None,
                    None,
                    0,
                    0,
                    f"{note}: {spec.question}",
                    answer=answer,
                )
            )
    return rows


def _attempts(workdir: Path, limits: Limits) -> tuple[dict, dict[str, str]]:
    """Run the worker until every exercise the submission defines has been tried: a run that
    ends early (a hang, an exit, a crash) costs the exercise it was in, and the next run takes
    the exercises after it. Returns what ``LOADED`` says and, for each exercise a run ended in,
    how it ended."""
    ended_in: dict[str, str] = {}
    names: list[str] = []  # the first run: every exercise
    while True:
        ended = _run(workdir, limits, names)
        try:
            loaded = json.loads((workdir / LOADED).read_text())
        except (OSError, ValueError):
            return {"problem": f"the submission did not load: {ended}"}, ended_in
        todo = [n for n in names or loaded.get("found", []) if not (workdir / f"{n}.pt").exists()]
        if not todo:
            return loaded, ended_in
        ended_in[todo[0]] = ended
        names = todo[1:]
        if not names:
            return loaded, ended_in


def _row(path: Path, report: Report, points: float, max_points: int, failed: str) -> Row:
    return Row(
        path.stem,
        str(path),
        report.exercise,
        points,
        max_points,
        report.passed,
        report.cases,
        report.total,
        report.message,
        failed,
    )


# ---------------------------------------------------------------------------------------------
# the class


def grade(paths: Sequence[str | Path], workdir: Path, limits: Limits = Limits()) -> list[Row]:
    """Grade every submission named by ``paths`` (:func:`find_submissions`), one at a time,
    each in ``workdir/<n>-<student>``.

    Raises:
        OSError: on a system without ``resource`` (Windows): the memory cap needs POSIX.
    """
    if os.name != "posix":
        raise OSError("the class grader needs a POSIX system (Linux, macOS) for its memory cap")
    rows: list[Row] = []
    for number, path in enumerate(find_submissions(paths)):
        rows += grade_one(path, workdir / f"{number:03d}-{path.stem}", limits)
    return rows


def summary(rows: Iterable[Row]) -> list[dict]:
    """Per exercise: submissions, how many passed, mean points, the most common first failing
    case (with how many submissions failed there first)."""
    table = []
    graded = [r for r in rows if r.passed is not None]
    for name in EXERCISES:
        mine = [r for r in graded if r.exercise == name]
        failed = Counter(r.failed_case for r in mine if not r.passed and r.failed_case)
        case, count = failed.most_common(1)[0] if failed else ("", 0)
        table.append(
            {
                "exercise": name,
                "submissions": len(mine),
                "passed": sum(bool(r.passed) for r in mine),
                "mean_points": sum(r.points or 0 for r in mine) / max(len(mine), 1),
                "most_common_failing_case": case,
                "failing_there": count,
            }
        )
    return table


def gradebook_paths(out: Path, *, overwrite: bool = False) -> list[Path]:
    """``out/gradebook.csv`` and ``out/gradebook.json``, checked before any grading starts.

    Raises:
        FileExistsError: if one exists and not ``overwrite`` (marks added by hand would be lost).
    """
    paths = [out / "gradebook.csv", out / "gradebook.json"]
    for path in paths:
        if path.exists() and not overwrite:
            raise FileExistsError(
                f"{path} exists (marks added to it by hand would be lost): choose another "
                "--out, or pass --overwrite to replace it"
            )
    return paths


def write_gradebook(rows: list[Row], out: Path, *, overwrite: bool = False) -> list[Path]:
    """Write :func:`gradebook_paths`: the rows as CSV; the rows, points per exercise and
    :func:`summary` as JSON; each atomically."""
    paths = gradebook_paths(out, overwrite=overwrite)
    fields = [f.name for f in dataclasses.fields(Row)]
    with atomic_write(paths[0], "w") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(dataclasses.asdict(r) for r in rows)
    document = {
        "points": {name: e.points for name, e in EXERCISES.items()},
        "rows": [dataclasses.asdict(r) for r in rows],
        "summary": summary(rows),
    }
    with atomic_write(paths[1], "w") as handle:
        json.dump(document, handle, indent=1)
    return paths


if __name__ == "__main__":
    sys.exit(worker(Path(sys.argv[1]), sys.argv[2:]))
