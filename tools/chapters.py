"""Execute every chapter once, as a Colab reader meets it, and derive every check from that run.

Usage (the Makefile's targets call these):

- ``python -m tools.chapters execute OUT``: build the package's wheel, install it into a folder
  of its own (first on the kernel's ``PYTHONPATH``, so ``import deeplab_edu`` finds the installed
  copy with its package data, not the checkout), and execute every chapter in a folder of its
  own, in the default mode (fast) with no data root set: the package must find or make
  everything under ``./data``, as on Colab (the teaching set is made once by the installed
  package and linked into each folder; the chapters that tune the CRF share one folder, see
  :data:`SHARED_FOLDER`). Two chapters run at a time, one PyTorch thread each. The executed
  chapters are written to ``OUT``. It fails if a cell raises, or if the data landed anywhere
  but ``./data``.
- ``python -m tools.chapters check OUT``: compare every cell marked ``# NBVAL_CHECK_OUTPUT`` in
  the executed chapters with the outputs committed in ``book/`` (nbval's ``--nbval-lax``
  semantics, :func:`differences`), and check statically that the student edition runs: no
  kept cell uses a name that only a solution cell defines (:func:`student_leaks`).
- ``python -m tools.chapters stage OUT SITE``: the book's source with the student edition of
  the executed chapters in place of the committed ones, which the strict build turns into the
  website (execution off: the site shows exactly what was checked, and no solution).
- ``python -m tools.chapters write-back OUT``: ``make execute``, the executed chapters' outputs
  copied into ``book/``.

What this does not reproduce: Colab's own Python (3.12) and preinstalled packages; the chapters'
``%pip install`` lines, which run only on Colab (here the installed wheel stands in for them).
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbval.plugin import coalesce_streams

from tools import claims
from tools.figures import FIGURE_FORMATS
from tools.student_edition import chapters, is_solution, student_book

REPO = Path(__file__).resolve().parents[1]
CHECK_MARK = "# NBVAL_CHECK_OUTPUT"
CELL_TIMEOUT = 3600  # s; see the README (a loaded machine is up to 14x slower than an idle one)
# what nbval leaves out of a comparison (its defaults; images too, without --nbdime)
SKIPPED_KEYS = {
    "metadata",
    "traceback",
    "prompt_number",
    "output_type",
    "name",
    "execution_count",
    "application/vnd.jupyter.widget-view+json",
    "image/png",
    "image/jpeg",
    "image/svg+xml",
}


def install(target: Path) -> None:
    """Build the wheel and install it (without dependencies: the environment has them)."""
    source, wheels = target.parent / "source", target.parent / "wheels"
    # built from a copy of the package, so that no build/ folder lands in the checkout
    shutil.copytree(
        REPO / "deeplab_edu", source / "deeplab_edu", ignore=shutil.ignore_patterns("__pycache__")
    )
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    run = [sys.executable, "-m", "pip", "-q"]
    subprocess.run([*run, "wheel", "--no-deps", "-w", str(wheels), str(source)], check=True)
    (wheel,) = wheels.glob("deeplab_edu-*.whl")
    print(f"[chapters] wheel {wheel.name}: {wheel.stat().st_size / 1e6:.2f} MB")
    subprocess.run([*run, "install", "--no-deps", "--target", str(target), str(wheel)], check=True)


# Chapters that share one folder, in this order: the later ones reuse the CRF search the first
# one ran (a reader who opens one of them alone waits for that search instead). Every other
# chapter runs alone in an empty folder of its own, as a reader who opens it first meets it.
SHARED_FOLDER = ("crf_parameters", "results", "reproduce", "crf_training", "what_came_next")
LONG = ("training", "own_data")  # the single chapters that train a network (minutes each)
WORKERS = 2  # chapters executed at a time (this machine and CI have two cores)
# one PyTorch thread per chapter: two chapters fill two cores, and a single thread degrades
# gracefully on a busy machine, where two threads wait for each other (see the README)
THREADS = "1"


def jobs() -> list[list[Path]]:
    """The chapters in groups that run one after another in one folder, the longest first (the
    shared folder's group, then the chapters that train: :data:`LONG`), the rest in reading
    order: the short ones then fill whichever worker is free, and both end at about the same
    time (run last, a long one kept one worker busy while the other stood idle)."""
    by_stem = {chapter.stem: chapter for chapter in chapters()}
    shared = [by_stem.pop(stem) for stem in SHARED_FOLDER if stem in by_stem]
    long = [[by_stem.pop(stem)] for stem in LONG if stem in by_stem]
    return [group for group in (shared, *long) if group] + [[c] for c in by_stem.values()]


def figure_formats(ipython_dir: Path) -> Path:
    """An IPython folder whose kernels store every inline figure in
    :data:`tools.figures.FIGURE_FORMATS` (the SVG is for ``make figures``)."""
    config = ipython_dir / "profile_default" / "ipython_kernel_config.py"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(f"c.InlineBackend.figure_formats = {set(FIGURE_FORMATS)!r}\n")
    return ipython_dir


def _run_job(group: list[Path], folder: Path, out: Path) -> list[tuple[str, str, float]]:
    """Execute ``group`` in ``folder``, one chapter after another; write each into ``out``."""
    results = []
    for chapter in group:
        notebook = nbformat.read(chapter, as_version=4)
        for cell in notebook.cells:
            cell.metadata.pop("execution", None)  # timings of an earlier run
        began = time.perf_counter()
        try:
            resources = {"metadata": {"path": str(folder)}}
            NotebookClient(
                notebook, timeout=CELL_TIMEOUT, resources=resources, record_timing=False
            ).execute()
            status = "ok"
        except Exception as error:  # a cell raised: report the chapter and go on
            status = f"FAILED: {str(error).strip().splitlines()[-1][:300]}"
        nbformat.write(notebook, out / chapter.name)  # with the error, to read it
        seconds = time.perf_counter() - began
        print(f"[chapters] {chapter.name}: {status} ({seconds:.0f} s)", flush=True)
        results.append((chapter.name, status, seconds))
    return results


def execute(out: Path) -> int:
    """Execute every chapter, each in an empty folder (:data:`SHARED_FOLDER` excepted),
    :data:`WORKERS` at a time, into ``out``; return 0 if all ran, else 1."""
    out.mkdir(parents=True, exist_ok=True)
    for chapter in chapters():  # an earlier run's copies only: nothing else in OUT is touched
        (out / chapter.name).unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="chapters-") as scratch:
        scratch = Path(scratch)
        site = scratch / "site"
        install(site)
        for name in ("DEEPLAB_EDU_DATA", "DEEPLAB_EDU_FAST", "DEEPLAB_EDU_VOC"):
            os.environ.pop(name, None)
        os.environ["PYTHONPATH"] = os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])
        os.environ.update(OMP_NUM_THREADS=THREADS, MKL_NUM_THREADS=THREADS)
        os.environ["IPYTHONDIR"] = str(figure_formats(scratch / "ipython"))
        began = time.perf_counter()
        # the teaching set, generated once by the installed package as a first chapter would,
        # then linked into every chapter's ./data (it takes seconds to make)
        seed = scratch / "seed"
        seed.mkdir()
        make_toy = "from deeplab_edu.data import voc_dir; voc_dir('toy')"
        subprocess.run([sys.executable, "-c", make_toy], cwd=seed, check=True)
        groups = jobs()
        folders = [scratch / f"job{number}" for number in range(len(groups))]
        for folder in folders:
            shutil.copytree(seed, folder, copy_function=os.link)
        with ProcessPoolExecutor(WORKERS, mp_context=get_context("spawn")) as pool:
            done = pool.map(_run_job, groups, folders, [out] * len(folders))
            results = [result for group in done for result in group]
        failures = [name for name, status, _ in results if status != "ok"]
        if not (folders[0] / "data" / "runs").is_dir():  # where an installed package puts it
            failures.append("the chapters did not use ./data: was the checkout imported?")
        print(
            f"[chapters] {len(results)} chapters in {time.perf_counter() - began:.0f} s, "
            f"{WORKERS} at a time; failed: {failures or 'none'}"
        )
        return 1 if failures else 0


def _flattened(outputs: list) -> dict[str, list]:
    """nbval's view of a cell's outputs: streams merged by name (``\\r`` and ``\\b`` applied),
    every other field and MIME type listed in order, the skipped keys left out."""
    flat = defaultdict(list)
    for output in coalesce_streams([nbformat.from_dict(o) for o in outputs]):
        if output.output_type == "stream":
            output = {"output_type": "stream", output.name: output.text}
        for key, value in output.items():
            if key == "data":
                for mime, data in value.items():
                    if mime not in SKIPPED_KEYS:
                        flat[mime].append(data)
            elif key not in SKIPPED_KEYS:
                flat[key].append(value)
    return dict(flat)


def differences(executed: nbformat.NotebookNode, committed: nbformat.NotebookNode) -> list[str]:
    """The checked cells whose outputs differ between a run and the committed chapter.

    A cell is checked when its source contains ``# NBVAL_CHECK_OUTPUT``; the outputs are
    compared as nbval does with ``--nbval-lax`` (:func:`_flattened`). Cells are matched by
    position, and the two notebooks must hold the same sources.

    Returns:
        One message per differing cell (empty if all agree).
    """
    if [c.source for c in executed.cells] != [c.source for c in committed.cells]:
        return ["the executed notebook's cells are not the committed chapter's"]
    found = []
    for number, (ran, kept) in enumerate(zip(executed.cells, committed.cells, strict=True)):
        if ran.cell_type != "code" or CHECK_MARK not in ran.source:
            continue
        got, expected = _flattened(ran.outputs), _flattened(kept.outputs)
        if got != expected:
            found.append(f"cell {number}: committed {expected!r}\n    ran       {got!r}")
    return found


def _names(source: str) -> tuple[set[str], set[str]]:
    """(names a cell defines, names it reads); IPython's ``%`` and ``!`` lines are left out."""
    code = "\n".join(  # a magic becomes `pass`, so that the block around it stays valid
        line[: len(line) - len(line.lstrip())] + "pass" if line.lstrip()[:1] in ("%", "!") else line
        for line in source.splitlines()
    )
    defined, used = set(), set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Name):
            (used if isinstance(node.ctx, ast.Load) else defined).add(node.id)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            defined.add(node.name)
        elif isinstance(node, ast.alias):
            defined.add((node.asname or node.name).split(".")[0])
        elif isinstance(node, ast.arg):
            defined.add(node.arg)
    return defined, used


def student_leaks(notebook: nbformat.NotebookNode) -> list[str]:
    """Kept cells that read a name only a solution cell (before them) defines: the student
    edition, which drops the solution cells, would fail there with a NameError.

    Returns:
        One message per such cell and name.
    """
    kept_names, solution_names, found = set(), set(), []
    for number, cell in enumerate(notebook.cells):
        if cell.cell_type != "code":
            continue
        defined, used = _names(cell.source)
        if is_solution(cell):
            solution_names |= defined
            continue
        kept_names |= defined
        for name in sorted(used & solution_names - kept_names):
            found.append(f"cell {number} reads {name!r}, which only a solution cell defines")
    return found


def check(out: Path) -> int:
    """Compare every executed chapter in ``out`` with ``book/``, check its student edition and
    that its prose quotes only numbers its outputs show (:mod:`tools.claims`); return 0 if all
    agree, else 1."""
    failures, compared = 0, 0
    for chapter in chapters():
        executed = out / chapter.name
        if not executed.is_file():
            print(
                f"[check] {chapter.name}: not executed ({executed} missing): run "
                "`python -m tools.chapters execute` first"
            )
            failures += 1
            continue
        committed = nbformat.read(chapter, as_version=4)
        problems = differences(nbformat.read(executed, as_version=4), committed)
        problems += [f"student edition: {p}" for p in student_leaks(committed)]
        checked = sum(c.cell_type == "code" and CHECK_MARK in c.source for c in committed.cells)
        compared += checked
        failures += bool(problems)
        print(
            f"[check] {chapter.name}: {checked} checked cells, "
            + ("agree" if not problems else "DIFFER")
        )
        for problem in problems:
            print(f"  {problem}")
    print(
        f"[check] {compared} checked cells in {len(chapters())} chapters; "
        f"{failures} chapters differ"
    )
    unshown = claims.unsupported(out)  # the prose's numbers against this run's outputs
    for problem in unshown:
        print(f"[check] prose: {problem}: no output of this run shows it (tools/claims.py)")
    print(f"[check] {len(unshown)} number(s) in the prose that no output shows")
    return 1 if failures or unshown else 0


def stage(out: Path, site: Path) -> int:
    """Write the book's source into ``site``: the student edition of the executed chapters of
    ``out`` (:func:`tools.student_edition.student_book`: the public site holds no solution)."""
    missing = [c.name for c in chapters() if not (out / c.name).is_file()]
    if missing:
        print(f"[stage] not executed: {missing}; run `python -m tools.chapters execute` first")
        return 1
    student_book(site, out)
    (site / ".cache").symlink_to(REPO / ".cache")  # MathJax, served with the pages
    return 0


def write_back(out: Path) -> int:
    """Copy the executed chapters of ``out`` over ``book/`` (``make execute``), each figure as
    PNG only (the SVG that ``make figures`` exports stays in ``out``)."""
    for chapter in chapters():
        notebook = nbformat.read(out / chapter.name, as_version=4)
        for cell in notebook.cells:
            for output in cell.get("outputs", []):
                if "image/png" in output.get("data", {}):
                    output["data"].pop("image/svg+xml", None)
        nbformat.write(notebook, chapter)
    print(f"[execute] {len(chapters())} chapters written back into book/")
    return 0


def main(argv: list[str]) -> int:
    """Dispatch ``execute OUT``, ``check OUT``, ``stage OUT SITE`` or ``write-back OUT``."""
    commands = {"execute": execute, "check": check, "stage": stage, "write-back": write_back}
    if not argv or argv[0] not in commands:
        print(__doc__)
        return 2
    return commands[argv[0]](*map(Path, argv[1:]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
