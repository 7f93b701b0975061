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
  imported from one and the current working directory is inside it (as ``make`` does), else
  ``./data`` in the current working directory (as on Colab, where the package is
  pip-installed, and for a student whose chapters are in a folder of their own on a machine
  where the package was installed from a checkout).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import random
import time
import types
import typing
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
MAX_SEED = 2**63 - 1  # the largest seed every generator takes (torch's is a signed 64-bit int)


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
        checkout, here = _checkout_root(), Path.cwd().resolve()
        inside = checkout is not None and here.is_relative_to(checkout)
        root = checkout / "data" if checkout is not None and inside else here / "data"
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
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED:
        raise TypeError(f"seed must be an int in [0, 2**63 - 1], got {seed!r}")
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
    def from_dict(cls, values: dict[str, Any], source: str = "the values") -> Self:
        """Inverse of :meth:`to_dict`, every field's type checked (:func:`checked_fields`).

        Raises:
            ValueError: naming ``source`` and the unknown or mistyped field.
        """
        return cls(**checked_fields(cls, values, source))


def checked_int(name: str, value: Any, low: int, high: int | None = None) -> int:
    """``value`` if it is an int in ``[low, high]`` (no upper bound if ``high`` is None).

    Raises:
        ValueError: naming ``name``, the range and the value.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        if value >= low and (high is None or value <= high):
            return value
    bound = f">= {low}" if high is None else f"in [{low}, {high}]"
    raise ValueError(f"{name} must be an int {bound}, got {value!r}")


def checked_fields(cls: type, values: Any, source: str) -> dict[str, Any]:
    """The keyword arguments of the dataclass ``cls`` that ``values`` (read from a file: JSON,
    a checkpoint) holds, each checked against its field's annotation; JSON lists become tuples.

    Args:
        cls: a dataclass whose fields are plain types (bool, int, float, str, None, tuples and
            unions of them).
        values: what was read.
        source: the file (and entry) it was read from, for the messages.

    Raises:
        ValueError: if ``values`` is not a dict, has a key that is not a field, or a value of
            another type than its field's (naming ``source``, the field, the type and the value).
    """
    if not isinstance(values, dict):
        raise ValueError(
            f"{source}: expected a mapping of {cls.__name__} fields, got "
            f"{type(values).__name__} {values!r:.80}"
        )
    hints = typing.get_type_hints(cls)
    names = [field.name for field in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names), key=str)
    if unknown:
        raise ValueError(f"{source}: unknown {cls.__name__} fields {unknown}; known: {names}")
    for name, value in values.items():
        if not _fits(value, hints[name]):
            raise ValueError(
                f"{source}: field {name!r} must be {_spelled(hints[name])}, got {value!r:.80}"
            )
    return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}


def _fits(value: Any, hint: Any) -> bool:
    """Whether a value read from JSON is of the annotated type (an int is a float too)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in args)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_fits(item, args[0]) for item in value)
        return len(value) == len(args) and all(map(_fits, value, args))
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is type(None):
        return value is None
    return isinstance(value, hint)


def _spelled(hint: Any) -> str:
    """A type annotation in words: ``int | None`` -> ``an int or null``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_spelled(arg) for arg in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_spelled(args[0]).split(' ', 1)[1]}s"
        return f"a list of {len(args)} numbers" if float in args else f"a list of {len(args)}"
    words = {
        bool: "true or false",
        int: "an int",
        float: "a number",
        str: "a string",
        type(None): "null",
    }
    return words.get(hint, f"a {getattr(hint, '__name__', hint)}")


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
