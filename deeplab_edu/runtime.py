"""The runtime switches every chapter and script reads: fast mode, device, data root, seed.

Nothing here runs at import time except reading environment variables lazily; seeding is
an explicit call (:func:`seed_everything`).

- Fast mode shrinks image sizes, widths and iteration counts so that every chapter runs on a
  laptop CPU in minutes; it never changes which code runs. It is the default everywhere, on a
  GPU too (where it simply runs faster). Full mode (the paper's data and sizes) is only ever
  asked for: ``DEEPLAB_EDU_FAST=0``, ``--full`` on the command line, or
  :func:`use_full_mode` in a notebook's first cell.
- Device: ``cuda`` when a CUDA device is available, else ``cpu``; chosen once per process.
- Data root (``DEEPLAB_EDU_DATA``): where VOC, the generated teaching set, weights and cached
  runs live. Unset, it is the ``data/`` folder of the source checkout when the package is
  imported from one (as ``make`` does), else ``./data`` in the current working directory
  (as on Colab, where the package is pip-installed).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import torch

__version__ = "0.2.0"  # the package's version (pyproject.toml reads it from here)
FAST_ENV = "DEEPLAB_EDU_FAST"
DATA_ENV = "DEEPLAB_EDU_DATA"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def fast_mode() -> bool:
    """Whether fast (CPU-sized) mode is on.

    Returns:
        ``DEEPLAB_EDU_FAST`` read as a boolean; ``True`` when it is unset, with or without a
        GPU: a chapter never starts the paper's downloads or hours of training on its own.

    Raises:
        ValueError: if the variable holds something other than 1/0/true/false/yes/no/on/off.
    """
    raw = os.environ.get(FAST_ENV)
    if raw is None or raw.strip() == "":
        return True
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{FAST_ENV} must be 1 or 0 (or true/false), got {raw!r}")


def use_full_mode() -> None:
    """Switch this process (a notebook's kernel) to full mode: the paper's data and sizes.

    Call it in a chapter's first cell, before anything else runs. Full-mode chapters read the
    network trained by the reproduction chapter; none of them downloads VOC or trains for hours
    on its own.
    """
    os.environ[FAST_ENV] = "0"


@functools.cache
def device() -> torch.device:
    """The device every chapter uses: ``cuda`` if available, else ``cpu`` (decided once)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _checkout_root() -> Path | None:
    root = Path(__file__).resolve().parents[1]
    return (
        root if (root / "pyproject.toml").is_file() and (root / "_config.yml").is_file() else None
    )


def data_root() -> Path:
    """The folder holding data sets, weights and cached runs (see the module docstring).

    Raises:
        NotADirectoryError: if that path exists and is a file.
    """
    raw = os.environ.get(DATA_ENV)
    if raw:
        root = Path(raw).expanduser().resolve()
    else:
        checkout = _checkout_root()
        root = checkout / "data" if checkout is not None else Path.cwd() / "data"
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(
            f"the data root {root} is a file, not a folder: set {DATA_ENV} to a folder"
        )
    return root


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and PyTorch (CPU and CUDA) for a reproducible run.

    Args:
        seed: a non-negative integer.

    Returns:
        A ``torch.Generator`` seeded with ``seed``, for code that wants its own stream.

    Raises:
        TypeError: if ``seed`` is not an int.
    """
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise TypeError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 (the legacy global stream readers may use)
    torch.manual_seed(seed)  # also seeds every CUDA device
    return torch.Generator().manual_seed(seed)


def now(device: torch.device | str = "cpu") -> float:
    """``time.perf_counter()`` after the work queued on ``device`` has finished (CUDA runs
    asynchronously: without the synchronisation a timer would measure only the launch)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


@dataclass
class ModeConfig:
    """Base of the run configurations (a dataclass whose defaults are the paper's).

    A subclass lists in ``FAST`` the values fast mode changes; :meth:`fast` applies them and
    :meth:`for_mode` picks fast or paper values. Only values differ between the two, never the
    code that runs. ``mode`` records which of the two a configuration was built as, so that
    results say what ran.
    """

    mode: str = "full"  # "full" (the paper's values) or "fast" (built by fast())

    FAST: ClassVar[dict[str, Any]] = {}

    @classmethod
    def fast(cls, **changes: Any) -> Self:
        """The laptop-CPU configuration: ``FAST`` over the paper's defaults, then ``changes``."""
        return cls(**{**cls.FAST, "mode": "fast", **changes})

    @classmethod
    def for_mode(cls, fast: bool | None = None, **changes: Any) -> Self:
        """:meth:`fast` if ``fast`` (default: :func:`fast_mode`), else the paper's defaults.

        This is the one place where a run's mode turns into values.
        """
        fast = fast_mode() if fast is None else fast
        return cls.fast(**changes) if fast else cls(**changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain values only (tuples as lists): safe for JSON and ``weights_only`` checkpoints."""
        values = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Self:
        """Inverse of :meth:`to_dict`; unknown keys are an error.

        Raises:
            ValueError: naming the unknown keys.
        """
        fields = {field.name: field for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields {unknown}; known: {sorted(fields)}")
        return cls(**{
            k: tuple(v) if isinstance(v, list) and "tuple" in str(fields[k].type) else v
            for k, v in values.items()
        })  # fmt: skip


def describe(dataset: str) -> str:
    """One line stating version, mode, device and data set; every chapter prints it first."""
    mode = "fast (CPU-sized)" if fast_mode() else "full (paper-sized)"
    return (
        f"deeplab-edu {__version__} | torch {torch.__version__} | mode: {mode} | "
        f"device: {device()} | data: {dataset} (data root: {shown_path(data_root())})"
    )


def shown_path(path: Path) -> str:
    """``path`` as printed in a chapter: relative to the working folder when it lies within two
    levels of it (``data``, ``../data``), so that outputs do not show where a machine keeps its
    files; absolute otherwise."""
    relative = os.path.relpath(path, Path.cwd())
    return relative if not relative.startswith(os.path.join("..", "..", "..")) else str(path)
