"""Checkpoints that survive a crash and cannot run code when loaded.

Two guarantees, each a few lines:

- **Atomic writes.** A checkpoint is written to a temporary file in the same folder, flushed
  and ``fsync``-ed, then renamed over the old one with :func:`os.replace` (atomic on POSIX and
  Windows). A process killed during a save leaves the previous checkpoint intact; at worst a
  stray ``*.tmp`` file remains, which the next save overwrites.
- **Safe loads.** ``torch.load(..., weights_only=True)`` only rebuilds tensors and plain
  Python containers; a checkpoint downloaded from somewhere else cannot execute code. That is
  why everything we store is tensors, numbers, strings, lists and dicts (the training
  configuration is stored as a dict, not as a pickled dataclass).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

FORMAT_VERSION = 1


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` atomically (temporary file, fsync, rename).

    Args:
        state: tensors, numbers, strings and containers of them (what ``weights_only`` loads).
        path: the checkpoint file; its folder is created.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as handle:
        torch.save({"format": FORMAT_VERSION, **state}, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    if hasattr(os, "O_DIRECTORY"):  # make the rename itself durable (POSIX)
        directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    return path


def load_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint written by :func:`save_checkpoint` without unpickling code.

    Args:
        path: the checkpoint file.
        map_location: where to put the tensors.

    Returns:
        The stored dict (``"format"`` plus what was saved).

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: if the file is not a readable deeplab-edu checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # truncated zip, foreign pickle with code, ...
        raise ValueError(
            f"{path} is not a loadable checkpoint ({type(error).__name__}: {error}); "
            "checkpoints are loaded with weights_only=True, so files holding code are refused"
        ) from error
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        raise ValueError(
            f"{path}: expected a deeplab-edu checkpoint (a dict with format={FORMAT_VERSION}), "
            f"got a {type(state).__name__} without that format number"
        )
    return state
