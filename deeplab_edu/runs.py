"""Trained runs on disk: loading a checkpoint into a network, and the run the chapters share.

Fast mode: the run lives in ``runtime.data_root() / "runs" / "<variant>-<key>"``, where ``key``
is a hash of the training configuration (and of the data set's split list). The first chapter
that needs the model trains it (minutes on a CPU); every later chapter, and every later build,
loads it. An interrupted training resumes where its last checkpoint left it.

Full mode: the run lives in ``runtime.data_root() / "runs" / "<variant>-full"`` and is made by
the reproduction chapter (or ``python -m deeplab_edu train --full --out`` that folder). A
chapter never trains it on its own: without it, :func:`cached_run` stops with one message that
says how to make it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from deeplab_edu import runtime
from deeplab_edu.checkpoint import FORMAT_VERSION, load_checkpoint
from deeplab_edu.data import voc_dir
from deeplab_edu.models import deeplab
from deeplab_edu.train import TrainConfig, train

try:  # file locks are POSIX-only; without them (Windows) the cache is not locked
    import fcntl
except ImportError:
    fcntl = None


def load_trained(
    path: str | Path, *, variant: str | None = None, device: torch.device | None = None
) -> tuple[nn.Module, TrainConfig]:
    """Build the network a checkpoint was trained as, and load its weights (no download).

    Args:
        path: a ``checkpoint.pt`` written by :func:`deeplab_edu.train.train`.
        variant: if given, the variant the caller expects.
        device: where to put the network (default: ``runtime.device()``).

    Returns:
        ``(model in eval mode, its TrainConfig)``.

    Raises:
        ValueError: if the checkpoint holds another variant than ``variant``, has no training
            configuration, or weights that do not fit the network it names.
    """
    state = load_checkpoint(path)
    if not isinstance(state.get("config"), dict) or "model" not in state:
        raise ValueError(
            f"{path} has no training configuration or weights: expected a checkpoint written by "
            "deeplab_edu.train (python -m deeplab_edu train)"
        )
    config = TrainConfig.from_dict(state["config"])
    if variant is not None and variant != config.variant:
        raise ValueError(
            f"{path} holds a {config.variant!r} checkpoint (width={config.width}), "
            f"not {variant!r}; pass --variant {config.variant!r} or another checkpoint"
        )
    model = deeplab(config.variant, width=config.width, msc=config.msc)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as error:  # tensors of other shapes than the configuration says
        raise ValueError(f"{path}: its weights do not fit a {config.variant!r} of width "
                         f"{config.width}: {str(error).splitlines()[0]}") from error  # fmt: skip
    return model.to(device or runtime.device()).eval(), config


def run_key(config: TrainConfig) -> str:
    """A short hash of the configuration, the training split's image list and the checkpoint
    format (a run of an older format is trained again, not misread)."""
    split_file = voc_dir(config.dataset) / "ImageSets" / "Segmentation" / f"{config.split}.txt"
    listing = split_file.read_text() if split_file.is_file() else ""
    text = json.dumps(config.to_dict(), sort_keys=True) + listing + str(FORMAT_VERSION)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def run_dir(config: TrainConfig) -> Path:
    """Where the run of ``config`` lives (see the module docstring)."""
    name = (
        f"{config.variant}-full" if config.mode == "full" else f"{config.variant}-{run_key(config)}"
    )
    return runtime.data_root() / "runs" / name


def is_complete(config: TrainConfig) -> bool:
    """Whether the cached run of ``config`` has finished all its iterations."""
    path = run_dir(config) / "checkpoint.pt"
    if not path.is_file():
        return False
    return int(load_checkpoint(path)["iteration"]) >= config.iterations


def cached_run(config: TrainConfig, *, progress: bool = True) -> tuple[nn.Module, Path]:
    """The trained network of ``config``: loaded if its run is complete; in fast mode trained
    (or resumed) now, concurrent callers waiting for each other (a lock file).

    Returns:
        ``(model in eval mode on runtime.device(), run folder)``.

    Raises:
        FileNotFoundError: in full mode, when the reproduction has not trained the network
            yet (the message says how to train it); nothing is downloaded or trained.
    """
    folder = run_dir(config)
    if config.mode == "full" and not is_complete(config):
        raise FileNotFoundError(
            f"full mode uses the {config.variant} network trained with the paper's recipe, "
            f"expected complete at {folder / 'checkpoint.pt'}. Train it with "
            f"`python -m deeplab_edu train --full --variant {config.variant} --out {folder}` "
            "(hours on a GPU, resumable; the chapter 'Reproducing Table 1 on a GPU' does this "
            "for DeepLab-LargeFOV), or go back to fast mode (restart without "
            "DEEPLAB_EDU_FAST=0)."
        )
    folder.mkdir(parents=True, exist_ok=True)
    with _locked(folder / ".lock"):
        if not is_complete(config):
            train(config, folder, resume=True, progress=progress)
    model, _ = load_trained(folder / "checkpoint.pt", variant=config.variant)
    return model, folder


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    if fcntl is None:  # Windows: no lock; two simultaneous first runs would both train
        yield
        return
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# the fast-mode runs the chapters share: LargeFOV (most chapters) and the equal-cost ASPP
# ("What came next"); `make model` trains them before the chapters run
SHARED_VARIANTS = (TrainConfig.variant, "DeepLab-ASPP-256")

if __name__ == "__main__":  # `python -m deeplab_edu.runs`: train (or load) the shared fast runs
    for name in SHARED_VARIANTS:
        config = TrainConfig.fast(variant=name)
        state = "ready" if is_complete(config) else "training it now (a few minutes on a CPU)"
        print(f"fast-mode {name}, {runtime.shown_path(run_dir(config))}: {state}", flush=True)
        cached_run(config, progress=False)
    print("the shared fast-mode models are ready", flush=True)
