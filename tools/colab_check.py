"""Run every chapter the way a Colab reader meets it: only the package installed, no checkout.

Usage: ``python -m tools.colab_check`` (run by ``make test``).

The package is built into a wheel and installed into a folder of its own, which comes first on
the kernel's ``PYTHONPATH``, so ``import deeplab_edu`` finds the installed copy (with its package
data, the real photos), not the checkout. The chapters are copied into an empty folder and
executed there in table-of-contents order, in their student edition (without the cells tagged
``solution``, see ``tools/student_edition.py``), in the default mode (fast), with no data root set:
the package must find or make everything it needs under ``./data``, as on Colab. A chapter fails
the check if any cell raises; the check also fails if the data landed anywhere but ``./data``
(which would mean the checkout's package was imported).

What this does not reproduce: Colab's own Python (3.12) and preinstalled packages; the chapters'
``%pip install`` lines, which run only on Colab (here the installed wheel stands in for them).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from tools.student_edition import chapters, student_notebook

REPO = Path(__file__).resolve().parents[1]


def install(target: Path) -> None:
    """Build the wheel and install it (without dependencies: the environment has them)."""
    source, wheels = target.parent / "source", target.parent / "wheels"
    # built from a copy of the package, so that no build/ folder lands in the checkout
    shutil.copytree(REPO / "deeplab_edu", source / "deeplab_edu",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    run = [sys.executable, "-m", "pip", "-q"]
    subprocess.run([*run, "wheel", "--no-deps", "-w", str(wheels), str(source)], check=True)
    (wheel,) = wheels.glob("deeplab_edu-*.whl")
    subprocess.run([*run, "install", "--no-deps", "--target", str(target), str(wheel)], check=True)


def main() -> int:
    """Execute every chapter from an empty folder; return 0 if all ran, 1 otherwise."""
    with tempfile.TemporaryDirectory(prefix="colab-check-") as scratch:
        scratch = Path(scratch)
        site, folder = scratch / "site", scratch / "content"
        folder.mkdir()
        install(site)
        for name in ("DEEPLAB_EDU_DATA", "DEEPLAB_EDU_FAST", "DEEPLAB_EDU_VOC"):
            os.environ.pop(name, None)
        os.environ["PYTHONPATH"] = os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])
        failures = []
        for chapter in chapters():
            # the student edition: every chapter must also run without its solutions
            notebook = student_notebook(nbformat.read(chapter, as_version=4))
            began = time.perf_counter()
            try:
                resources = {"metadata": {"path": str(folder)}}
                NotebookClient(notebook, timeout=3600, resources=resources).execute()
                status = "ok"
            except Exception as error:  # a cell raised: report the chapter and go on
                failures.append(chapter.name)
                status = f"FAILED: {str(error).strip().splitlines()[-1][:300]}"
            print(f"[colab] {chapter.name}: {status} ({time.perf_counter() - began:.0f} s)")
        if not (folder / "data" / "toy-voc").is_dir():  # where an installed package puts it
            failures.append("the chapters did not use ./data: was the checkout imported?")
        for failure in failures:
            print(f"[colab] failed: {failure}")
        return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
