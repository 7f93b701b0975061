"""What a run folder holds, written so that a crash loses nothing: the checkpoint and the log.

- **Atomic writes.** A checkpoint is written through :func:`deeplab_edu.fetch.atomic_write`:
  a temporary file in the same folder, flushed and ``fsync``-ed, then renamed over the old one.
  A process killed during a save leaves the previous checkpoint intact.
- **Safe loads.** ``torch.load(..., weights_only=True)`` only rebuilds tensors and plain
  Python containers; a checkpoint downloaded from somewhere else cannot execute code. That is
  why everything we store is tensors, numbers, strings, lists and dicts (the training
  configuration is stored as a dict, not as a pickled dataclass).
- **A digest.** Each checkpoint stores the SHA-256 of its own contents (every tensor's bytes,
  every number and string), checked on every load: a file damaged on disk or in a copy is
  refused, never loaded with a few silently wrong weights.
- **The metrics log** ``metrics.jsonl`` gets one JSON line per iteration, appended as training
  goes; a resumed run first drops the lines after its checkpoint.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from deeplab_edu.fetch import atomic_write

# 2: with the SHA-256 of the contents; 3: the plain DeepLab with its released 2x2 poolings;
# 4: fc6-fc8 in a head module ("head.fc6.weight", ASPP's "head.branches.0.fc6.weight"; older
# files' "fc6.weight" and "fc6.0.weight" are renamed when loaded)
FORMAT_VERSION = 4
HEAD_FORMAT = 4
# the oldest format each network may come from (pooling has no weights, so an older file of a
# network whose poolings changed loads without a shape error, and would silently be misread)
OLDEST_FORMAT = {"DeepLab": 3}
OLDEST_READABLE = 2


def oldest_format(variant: str | None) -> int:
    """The oldest checkpoint format whose files of ``variant`` hold its current network."""
    return OLDEST_FORMAT.get(variant or "", OLDEST_READABLE)


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` atomically (:func:`~deeplab_edu.fetch.atomic_write`).

    Args:
        state: tensors, numbers, strings and containers of them (what ``weights_only`` loads).
        path: the checkpoint file; its folder is created.

    Returns:
        The path written.
    """
    with atomic_write(path) as handle:
        torch.save({"format": FORMAT_VERSION, "sha256": contents_digest(state), **state}, handle)
    return Path(path)


def contents_digest(value: Any, digest: Any = None) -> str:
    """SHA-256 of a checkpoint's contents: keys, tensors (dtype, shape, bytes) and plain values
    (also what identifies a network's weights, ``contents_digest(model.state_dict())``)."""
    digest = digest or hashlib.sha256()
    if isinstance(value, dict):
        for key in sorted(value, key=str):
            digest.update(f"<{key}>".encode())
            contents_digest(value[key], digest)
    elif isinstance(value, list | tuple):
        digest.update(f"[{len(value)}".encode())
        for item in value:
            contents_digest(item, digest)
    elif isinstance(value, torch.Tensor):
        tensor = value.detach().cpu()
        digest.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
        # the elements in index order, whatever the memory format (channels-last weights too)
        flat = tensor.contiguous().reshape(-1)
        digest.update(flat.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    else:
        digest.update(repr(value).encode())
    return digest.hexdigest()


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
    known = range(OLDEST_READABLE, FORMAT_VERSION + 1)
    if not isinstance(state, dict) or state.get("format") not in known:
        raise ValueError(
            f"{path}: expected a deeplab-edu checkpoint (a dict with format "
            f"{OLDEST_READABLE}..{FORMAT_VERSION}), got a {type(state).__name__} without "
            "such a format number"
        )
    config = state.get("config")
    variant = config.get("variant") if isinstance(config, dict) else None
    if state["format"] < oldest_format(variant):
        raise ValueError(
            f"{path} holds a {variant} trained before it had the released 2x2 poolings "
            f"(checkpoint format {state['format']}, expected {oldest_format(variant)} or "
            "later): its weights were learnt with other poolings; train it again"
        )
    contents = {k: v for k, v in state.items() if k not in ("format", "sha256")}
    if state.get("sha256") != contents_digest(contents):
        raise ValueError(
            f"{path} is damaged: its contents do not match the SHA-256 stored with them "
            "(a disk or copy error); use an earlier copy or train again"
        )
    if state["format"] < HEAD_FORMAT and isinstance(state.get("model"), dict):
        state["model"] = {_head_key(name): tensor for name, tensor in state["model"].items()}
    return state


def _head_key(name: str) -> str:
    """A weight's name in format 4 from its name in an older checkpoint: "fc6.weight" ->
    "head.fc6.weight", ASPP's "fc6.2.weight" -> "head.branches.2.fc6.weight"."""
    parts = name.split(".")
    if parts[0] not in ("fc6", "fc7", "fc8"):
        return name
    if len(parts) == 3:  # layer, branch, weight or bias
        return f"head.branches.{parts[1]}.{parts[0]}.{parts[2]}"
    return f"head.{name}"


METRICS_LOG = "metrics.jsonl"


def truncate_log(run_folder: str | Path, iteration: int) -> None:
    """Keep only the log lines up to ``iteration`` (lines after a resumed checkpoint are redone)."""
    path = Path(run_folder) / METRICS_LOG
    if path.exists():
        kept = [r for r in read_metrics(run_folder) if r["iteration"] <= iteration]
        with atomic_write(path, "w") as handle:
            handle.writelines(json.dumps(record) + "\n" for record in kept)


def read_metrics(run_folder: str | Path) -> list[dict]:
    """The ``metrics.jsonl`` records of a run (one per iteration); a torn last line is skipped.

    Raises:
        FileNotFoundError: if the run has no log (it has not been trained).
        ValueError: for a line that is not JSON before the last one.
    """
    path = Path(run_folder) / METRICS_LOG
    if not path.exists():
        raise FileNotFoundError(f"no metrics log at {path}; has the run been trained?")
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            if number == len(lines):  # a line torn by a crash while it was appended
                break
            raise ValueError(f"{path}, line {number}: not a JSON record ({error})") from error
    return records


def write_results(summary: dict, path: str | Path) -> Path:
    """Write a results JSON (evaluation, CRF search) atomically
    (:func:`~deeplab_edu.fetch.atomic_write`).

    Returns:
        The path written.
    """
    with atomic_write(path, "w") as handle:
        handle.write(json.dumps(summary, indent=2, allow_nan=True) + "\n")
    return Path(path)
