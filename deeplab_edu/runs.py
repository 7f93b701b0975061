"""Trained runs on disk: loading a checkpoint into a network, and the runs the chapters share.

Fast mode: a run lives in ``runtime.data_root() / "runs" / "<variant>-<key>"``, where ``key``
is a hash of the training configuration (and of the data set's split list). The two networks
the chapters share (:data:`SHARED_VARIANTS`) **ship with the package** (``deeplab_edu/trained``:
weights, configuration, run key, training log and SHA-256), so the first chapter that needs one
copies it into its run folder in about a second instead of training for minutes. Any other
fast-mode configuration is trained the first time it is asked for (minutes on a CPU) and loaded
afterwards; an interrupted training resumes where its last checkpoint left it. The training
chapter trains its own LargeFOV and compares it with the shipped one; ``tests/test_shipped.py``
re-trains ASPP-256; ``python -m deeplab_edu.runs --refresh`` (``make model``) makes both anew.

Full mode: the run lives in ``runtime.data_root() / "runs" / "<variant>-full"`` and is made by
the reproduction chapter (or ``python -m deeplab_edu train --full --out`` that folder). A
chapter never trains it on its own: without it, :func:`cached_run` stops with one message that
says how to make it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from deeplab_edu import runtime
from deeplab_edu.checkpoint import METRICS_LOG, load_checkpoint, oldest_format, save_checkpoint
from deeplab_edu.data import CLASSES, open_dataset, voc_dir
from deeplab_edu.evaluate import EvalConfig, evaluate
from deeplab_edu.fetch import atomic_write, file_digest
from deeplab_edu.models import deeplab
from deeplab_edu.models.deeplab import DeepLab
from deeplab_edu.outputs import locked
from deeplab_edu.train import TrainConfig, train


def load_trained(
    path: str | Path, *, variant: str | None = None, device: torch.device | None = None
) -> tuple[DeepLab, TrainConfig]:
    """Build the network a checkpoint was trained as, and load its weights (no download).

    Args:
        path: a ``checkpoint.pt`` written by :func:`deeplab_edu.train.train`.
        variant: if given, the variant the caller expects.
        device: where to put the network (default: ``runtime.device()``).

    Returns:
        ``(model in eval mode, its TrainConfig)``.

    Raises:
        ValueError: if the checkpoint holds another variant than ``variant``, has no training
            configuration, non-finite weights, or weights that do not fit the network it names.
    """
    state = load_checkpoint(path)
    if not isinstance(state.get("config"), dict) or "model" not in state:
        raise ValueError(
            f"{path} has no training configuration or weights: expected a checkpoint written by "
            "deeplab_edu.train (python -m deeplab_edu train)"
        )
    config = TrainConfig.from_dict(state["config"], f"{path}, its training configuration")
    if variant is not None and variant != config.variant:
        raise ValueError(
            f"{path} holds a {config.variant!r} checkpoint (width={config.width}), "
            f"not {variant!r}; pass --variant {config.variant!r} or another checkpoint"
        )
    bad = [
        name
        for name, tensor in state["model"].items()
        if tensor.is_floating_point() and not torch.isfinite(tensor).all()
    ]
    if bad:
        raise ValueError(
            f"{path}: weights {bad[:3]} hold NaN or infinite values (a diverged or damaged "
            "run); nothing was evaluated: use an earlier checkpoint or train again"
        )
    classes = state.get("classes", list(CLASSES))  # older checkpoints: VOC's
    if not (
        isinstance(classes, list)
        and len(classes) >= 2
        and all(isinstance(name, str) for name in classes)
    ):
        raise ValueError(
            f"{path}: expected its class names as a list of 2 or more strings, got {classes!r}"
        )
    model = deeplab(config.variant, num_classes=len(classes), width=config.width, msc=config.msc)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as error:  # tensors of other shapes than the configuration says
        raise ValueError(
            f"{path}: its weights do not fit a {config.variant!r} of width "
            f"{config.width}: {str(error).splitlines()[0]}"
        ) from error
    return model.to(device or runtime.device()).eval(), config


def run_key(config: TrainConfig) -> str:
    """A short hash of the configuration, the training split's image list and the oldest
    checkpoint format that holds this network (a run of an older one is trained again, not
    misread; :func:`~deeplab_edu.checkpoint.oldest_format`)."""
    split_file = voc_dir(config.dataset) / "ImageSets" / "Segmentation" / f"{config.split}.txt"
    listing = split_file.read_text() if split_file.is_file() else ""
    text = (
        json.dumps(config.to_dict(), sort_keys=True) + listing + str(oldest_format(config.variant))
    )
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


def cached_run(config: TrainConfig, *, progress: bool = True) -> tuple[DeepLab, Path]:
    """The trained network of ``config``: loaded if its run is complete; in fast mode copied
    from the package when it ships this very run (:func:`install_shipped`), else trained (or
    resumed) now, concurrent callers waiting for each other (a lock file).

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
    with locked(folder / ".lock"):  # concurrent first callers wait for each other
        if not is_complete(config) and not install_shipped(config, folder):
            train(config, folder, resume=True, progress=progress)
    model, _ = load_trained(folder / "checkpoint.pt", variant=config.variant)
    return model, folder


# the fast-mode runs the chapters share: LargeFOV (most chapters) and the equal-cost ASPP
# ("What came next"); both ship with the package, in SHIPPED_DIR
SHARED_VARIANTS = (TrainConfig.variant, "DeepLab-ASPP-256")
SHIPPED_DIR = Path(__file__).resolve().parent / "trained"
# How far a re-training of a shipped network may land from its shipped val mean IoU (without
# the CRF). The thread count, the CPU and the GPU change float round-off, which training
# amplifies: measured with 1 and 2 threads on one machine, LargeFOV moved by 1.6 points (77.9%
# and 76.3%) and ASPP-256 by 0.2 (74.6% and 74.4%); channels-last weights moved LargeFOV by 0.7.
# A change that costs the network 3 points or more is caught.
MIOU_TOLERANCE = 0.03
REFRESH = "make model (python -m deeplab_edu.runs --refresh), then commit deeplab_edu/trained"


def shipped_info(variant: str) -> dict | None:
    """What the package ships for ``variant``: its ``<variant>.json`` (run key, configuration,
    SHA-256 of the weights and of the log, val mean IoU, how it was trained), or None."""
    path = SHIPPED_DIR / f"{variant}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def shipped_mismatch(config: TrainConfig) -> str | None:
    """Why the package's run of ``config.variant`` is not the run of ``config``, or None if it is.

    The run key covers every training value and the training split's list; a configuration
    changed in the code without refreshing the shipped files is named here, with how to
    refresh them.
    """
    info = shipped_info(config.variant)
    if info is None:
        return f"the package ships no fast-mode {config.variant} ({SHIPPED_DIR} has no json)"
    if info["run_key"] == run_key(config):
        return None
    changed = {
        k: (v, info["config"].get(k))
        for k, v in config.to_dict().items()
        if info["config"].get(k) != v
    }
    what = f"values (asked, shipped): {changed}" if changed else "the training split's list"
    return (
        f"the shipped {config.variant} was trained with another configuration: run key "
        f"{info['run_key']}, asked {run_key(config)}; {what}. Refresh it: {REFRESH}"
    )


def install_shipped(config: TrainConfig, folder: Path) -> bool:
    """Copy the shipped run of ``config`` into ``folder`` (checkpoint, log, configuration).

    Returns:
        True if the package ships exactly this run (same run key) and it was copied; False
        otherwise (the caller then trains it).

    Raises:
        ValueError: if a shipped file does not match its SHA-256 (a damaged install).
    """
    if config.mode != "fast" or shipped_mismatch(config) is not None:
        return False
    info = shipped_info(config.variant)
    if info is None:  # (shipped_mismatch said so already)
        return False
    for name, digest in (
        (info["checkpoint"], info["sha256"]),
        (info["metrics"], info["metrics_sha256"]),
    ):
        if file_digest(SHIPPED_DIR / name, "sha256") != digest:
            raise ValueError(
                f"{SHIPPED_DIR / name} does not match its SHA-256 in {config.variant}.json: the "
                "installed package is damaged; reinstall deeplab-edu"
            )
    for source, target in ((info["metrics"], METRICS_LOG), (info["checkpoint"], "checkpoint.pt")):
        with atomic_write(folder / target) as handle:  # the checkpoint last: it marks completion
            handle.write((SHIPPED_DIR / source).read_bytes())
    with atomic_write(folder / "config.json", "w") as handle:
        handle.write(json.dumps(info["config"], indent=2) + "\n")
    return True


def val_miou(model: DeepLab, config: TrainConfig) -> float:
    """Mean IoU of ``model`` on the val split of ``config.dataset``, without the CRF."""
    val_set = open_dataset(config.dataset, "val")
    summary = evaluate(model, val_set, EvalConfig.for_mode(crf=None), progress=False).summary
    return float(summary["miou"]["dcnn"])


def train_fresh(
    config: TrainConfig, folder: Path, *, progress: bool = False
) -> tuple[DeepLab, float]:
    """Train ``config`` from scratch into the empty ``folder``; return the network (on the CPU)
    and its val mean IoU without the CRF (:func:`val_miou`)."""
    model = train(config, folder, progress=progress).cpu()
    return model, val_miou(model, config)


def refresh(variants: tuple[str, ...] = SHARED_VARIANTS) -> None:
    """Train the shipped runs anew (fast mode) and write them into :data:`SHIPPED_DIR`.

    Run it after any change to training, the teaching set or the networks (``make model``); the
    fast tests fail until it has been run, naming this command.
    """
    SHIPPED_DIR.mkdir(exist_ok=True)
    runtime.data_root().mkdir(parents=True, exist_ok=True)
    for variant in variants:
        config = TrainConfig.fast(variant=variant)
        print(f"training fast-mode {variant} from scratch (a few minutes on a CPU)", flush=True)
        with tempfile.TemporaryDirectory(dir=runtime.data_root()) as scratch:
            folder = Path(scratch)
            model, miou = train_fresh(config, folder)
            records = json.loads((folder / METRICS_LOG).read_text().splitlines()[-1])
            checkpoint = save_checkpoint(
                {
                    "iteration": config.iterations,
                    "config": config.to_dict(),
                    "model": model.state_dict(),
                },  # no optimiser state: nothing resumes it
                folder / "shipped.pt",
            )
            info: dict[str, Any] = {
                "variant": variant,
                "run_key": run_key(config),
                "config": config.to_dict(),
                "checkpoint": f"{variant}.pt",
                "sha256": file_digest(checkpoint, "sha256"),
                "metrics": f"{variant}.{METRICS_LOG}",
                "metrics_sha256": file_digest(folder / METRICS_LOG, "sha256"),
                "val_miou": round(miou, 6),
                "trained_with": {
                    "torch": torch.__version__,
                    "threads": torch.get_num_threads(),
                    "device": str(runtime.device()),
                    "machine": platform.machine(),
                    "seconds": records["seconds"],
                },
            }
            shutil.copyfile(folder / METRICS_LOG, SHIPPED_DIR / info["metrics"])
            shutil.copyfile(checkpoint, SHIPPED_DIR / info["checkpoint"])
        with atomic_write(SHIPPED_DIR / f"{variant}.json", "w") as handle:
            handle.write(json.dumps(info, indent=2) + "\n")
        print(
            f"  val mean IoU {100 * miou:.1f}% in {records['seconds']:.0f} s; written to "
            f"{SHIPPED_DIR / info['checkpoint']}",
            flush=True,
        )


def main(argv: list[str] | None = None) -> int:
    """``python -m deeplab_edu.runs [--refresh]``: say whether the shipped runs are current, or
    train them anew."""
    parser = argparse.ArgumentParser(prog="python -m deeplab_edu.runs", description=main.__doc__)
    parser.add_argument(
        "--refresh", action="store_true", help="train the shipped networks anew and write them"
    )
    if parser.parse_args(argv).refresh:
        refresh()
        return 0
    stale = [shipped_mismatch(TrainConfig.fast(variant=name)) for name in SHARED_VARIANTS]
    for message in filter(None, stale):
        print(message)
    if any(stale):
        return 1
    print("the shipped fast-mode networks are current")
    return 0


if __name__ == "__main__":
    sys.exit(main())
