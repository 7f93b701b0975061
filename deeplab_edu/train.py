"""Training DeepLab: the paper's recipe (paper sections 3.1 and 5), one loop for CPU, GPU and DDP.

The recipe, as :class:`TrainConfig` defaults:

- loss: per-pixel cross-entropy between the stride-8 scores and the ground truth subsampled by
  8, void (255) ignored, averaged over the valid positions as Caffe's ``SoftmaxWithLoss`` does
  (the paper says "sum", which only rescales the learning rate);
- SGD, momentum 0.9, weight decay 5e-4, learning rate 1e-3, x10 for the new classifier
  ``fc8``, x0.1 every 2000 iterations, 6000 iterations; biases at x2 without weight decay
  (the released Caffe solver; the paper does not say). DeepLab-MSc's second stage trains the
  branches and ``fc8`` at x1, the rest frozen (the released MSc configuration);
- mini-batch 20 (the paper; reimplementations of the released setup use 30: ``--batch-size``);
  random crops (321x321, the plain DeepLab 306x306: the released ones) and horizontal flips.

A run is a pure function of its configuration (:mod:`deeplab_edu.data.sampling`; dropout is
re-seeded every iteration), so ``resume`` continues an interrupted run exactly. Several GPUs:
``torchrun --nproc_per_node=N -m deeplab_edu train ...`` splits each global batch between them.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from deeplab_edu import runtime
from deeplab_edu.checkpoint import (
    HEAD_FORMAT,
    METRICS_LOG,
    load_checkpoint,
    save_checkpoint,
    truncate_log,
)
from deeplab_edu.data import open_dataset
from deeplab_edu.data.sampling import Batches, Dataset, Samples, derived_seed
from deeplab_edu.data.transforms import TrainTransform, subsample_labels
from deeplab_edu.data.voc import IGNORE_INDEX, NUM_CLASSES, dataset_classes
from deeplab_edu.models import deeplab
from deeplab_edu.models.deeplab import DeepLab, is_new_layer, variant
from deeplab_edu.models.field import OUTPUT_STRIDE
from deeplab_edu.models.pretrained import initialise
from deeplab_edu.outputs import refuse_foreign, run_lock, sweep_temporaries

# settings that do not change the result, and so may differ when a run is resumed
RESUMABLE_CHANGES = ("num_workers", "checkpoint_every")
# bounds on what a run may ask for (beyond them a tensor's size overflows or memory runs out
# long before the first step): the paper's batch is 20 and its crop 321
MAX_BATCH, MAX_CROP, MAX_WORKERS = 1024, 2049, 64


@dataclass
class TrainConfig(runtime.ModeConfig):
    """Everything that defines a training run; defaults are the paper's (full mode).

    Fast mode (:meth:`fast`) changes values only: the generated data set, small crops, a narrow
    randomly initialised network, fewer iterations and a higher learning rate.
    """

    variant: str = "DeepLab-LargeFOV"
    width: float = 1.0  # channel multiplier (1.0 = VGG-16's widths)
    msc: bool = False  # DeepLab-MSc: a second stage on a trained DeepLab (init = its checkpoint)
    init: str = "imagenet"  # "imagenet" (VGG-16 IMAGENET1K_V1), "random", or a checkpoint path
    # "voc" (VOC 2012 + SBD), "toy" (generated) or a folder of your own (deeplab_edu.data.folder)
    dataset: str = "voc"
    split: str | None = None  # None: "train_aug" for "voc", "train" for any other data set
    iterations: int = 6000
    batch_size: int = 20  # paper: 20; reimplementations of the released setup: 30
    lr: float = 1e-3
    lr_new_multiplier: float = 10.0  # fc8: x10 (DeepLab-MSc's second stage: every rate x1)
    lr_bias_multiplier: float = 2.0  # Caffe solver convention: biases at 2x, no weight decay
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_step: int = 2000  # multiply the learning rate by lr_gamma every lr_step iterations
    lr_gamma: float = 0.1
    crop: int | None = None  # None: the variant's released crop (321; 306 for plain DeepLab)
    flip: bool = True
    scale: tuple[float, float] | None = None  # the paper does not use random scaling
    seed: int = 0
    checkpoint_every: int = 500
    num_workers: int = 2

    # Fast mode (values only): the backbone is randomly initialised (ImageNet weights exist
    # only at full width), so we train from scratch on the generated set; that needs a 10x
    # higher learning rate than fine-tuning, with the same x10 / x2 multipliers and schedule.
    FAST: ClassVar[dict] = dict(
        width=0.125,
        init="random",
        dataset="toy",
        split="train",
        iterations=2000,
        batch_size=10,
        lr=1e-2,
        lr_step=800,
        crop=97,
        checkpoint_every=250,
        num_workers=0,
    )

    def __post_init__(self) -> None:
        if self.crop is None:
            self.crop = variant(self.variant).crop
        if self.split is None:
            self.split = "train_aug" if self.dataset == "voc" else "train"

    def validate(self) -> None:
        """Raise ValueError naming the first inconsistent value."""
        if self.iterations < 1 or self.batch_size < 1 or self.checkpoint_every < 1:
            raise ValueError(
                "iterations, batch_size and checkpoint_every must be >= 1, got "
                f"{self.iterations}, {self.batch_size}, {self.checkpoint_every}"
            )
        runtime.checked_int("seed", self.seed, 0, runtime.MAX_SEED)
        runtime.checked_int("num_workers", self.num_workers, 0, MAX_WORKERS)
        runtime.checked_int("batch_size", self.batch_size, 1, MAX_BATCH)
        runtime.checked_int("crop", self.crop, OUTPUT_STRIDE + 1, MAX_CROP)
        if not (math.isfinite(self.lr) and self.lr > 0) or self.lr_step < 1:
            raise ValueError(
                f"lr must be finite and > 0 and lr_step >= 1, got {self.lr}, {self.lr_step}"
            )
        if self.init not in ("imagenet", "random") and not Path(self.init).is_file():
            raise ValueError(
                f"init must be 'imagenet', 'random' or an existing checkpoint file, "
                f"got {self.init!r}"
            )
        if self.msc and self.init in ("imagenet", "random"):
            raise ValueError(
                "DeepLab-MSc is the paper's second stage (section 4.3): it adds the multi-scale "
                "branches to a DeepLab already trained on the data and trains only them; pass "
                f"init=<that run's checkpoint.pt> (--init), got init={self.init!r}"
            )


def learning_rate(config: TrainConfig, iteration: int) -> float:
    """The base learning rate at ``iteration`` (0-based): the paper's step schedule.

    Returns:
        ``lr * lr_gamma ** (iteration // lr_step)``.
    """
    # $\eta_t = \eta_0 \cdot 0.1^{\lfloor t / 2000 \rfloor}$
    return config.lr * config.lr_gamma ** (iteration // config.lr_step)


def param_groups(model: DeepLab, config: TrainConfig) -> list[dict]:
    """Split the trainable parameters into the four groups of the Caffe solver.

    Args:
        model: a DeepLab network; its fc8s and ``msc.*`` are the new layers (:func:`is_new_layer`).
        config: the learning-rate multipliers and weight decay.

    Returns:
        Groups for ``torch.optim.SGD``, each with a ``name`` and an ``lr_mult`` that
        :func:`set_learning_rate` multiplies with the scheduled rate: pretrained weights (x1,
        decay), pretrained biases (x2, no decay), new weights (x10, decay), new biases (x20,
        no decay); in DeepLab-MSc's second stage every trainable weight is x1 and bias x2, as
        released. Empty groups are left out.
    """
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            key = (is_new_layer(name), name.endswith("bias"))
            groups.setdefault(key, []).append(parameter)
    # (DeepLab-MSc's second stage trains its new layers at x1, as released)
    new_mult = 1.0 if config.msc else config.lr_new_multiplier
    bias_mult = config.lr_bias_multiplier
    return [
        {
            "params": params,
            "name": f"{('pretrained', 'new')[new]} {('weights', 'biases')[bias]}",
            "lr_mult": (new_mult if new else 1.0) * (bias_mult if bias else 1.0),
            "weight_decay": 0.0 if bias else config.weight_decay,
        }
        for (new, bias), params in sorted(groups.items())
    ]


def make_optimizer(model: DeepLab, config: TrainConfig) -> torch.optim.SGD:
    """SGD with momentum over :func:`param_groups`, learning rates set for iteration 0."""
    optimizer = torch.optim.SGD(param_groups(model, config), lr=config.lr, momentum=config.momentum)
    set_learning_rate(optimizer, config, 0)
    return optimizer


def set_learning_rate(
    optimizer: torch.optim.Optimizer, config: TrainConfig, iteration: int
) -> None:
    """Set every group's rate to the scheduled base rate times its ``lr_mult``."""
    base = learning_rate(config, iteration)
    for group in optimizer.param_groups:
        group["lr"] = base * group["lr_mult"]


def segmentation_loss(scores: torch.Tensor, target: torch.Tensor, offset: int = 0) -> torch.Tensor:
    """Cross-entropy of stride-8 scores against the labels subsampled by 8, void ignored.

    Args:
        scores: ``(B, C, h, w)`` network output at stride 8.
        target: ``(B, H, W)`` int64 labels at full resolution (0..C-1, 255 = void).
        offset: the pixel whose label cell 0 learns (the network's
            :attr:`~deeplab_edu.models.DeepLab.label_offset`; :func:`subsample_labels`).

    Returns:
        The mean loss over the valid positions (0 with a gradient if none is valid).

    Raises:
        ValueError: if the subsampled labels do not have the scores' size.
    """
    labels = subsample_labels(target, stride=OUTPUT_STRIDE, offset=offset)  # (B, h, w)
    if labels.shape[-2:] != scores.shape[-2:]:
        raise ValueError(
            f"labels subsampled by {OUTPUT_STRIDE} from pixel {offset} have size "
            f"{tuple(labels.shape[-2:])} but the scores are {tuple(scores.shape[-2:])}; "
            "expected the scores a stride-8 DeepLab gives for these labels"
        )
    if not (labels != IGNORE_INDEX).any():
        return scores.sum() * 0.0
    # $L = -\frac{1}{|V|}\sum_{i \in V} \log P_i(y_i)$, V = non-void positions
    return F.cross_entropy(scores, labels, ignore_index=IGNORE_INDEX)


def build_model(
    config: TrainConfig, *, vgg_state_dict: dict | None = None, num_classes: int = NUM_CLASSES
) -> DeepLab:
    """The network of ``config``, initialised as ``config.init`` says
    (:func:`~deeplab_edu.models.pretrained.initialise`). For DeepLab-MSc's second stage the
    network up to fc7 is frozen and the multi-scale branches and fc8 train, as in the released
    configuration (section 4.3 says "we only adjust the newly added weights"; the release also
    adapts fc8, which now adds its scores to the branches').
    """
    model = deeplab(config.variant, num_classes=num_classes, width=config.width, msc=config.msc)
    initialise(model, config.init, vgg_state_dict=vgg_state_dict)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(not config.msc or is_new_layer(name))
    return model


def train(
    config: TrainConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    dataset: Dataset | None = None,
    vgg_state_dict: dict | None = None,
    on_step: Callable[[int, float], None] | None = None,
    progress: bool = True,
) -> DeepLab:
    """Train ``config`` and write ``checkpoint.pt``, ``metrics.jsonl`` and ``config.json``.

    Args:
        config: the run.
        out_dir: the run folder.
        resume: continue from ``out_dir/checkpoint.pt`` if present (same iteration, optimiser
            state, schedule, data order and random streams); otherwise an existing checkpoint
            is an error, so that a run is never overwritten silently.
        dataset: a data set yielding ``(uint8 image (3,H,W), int64 target (H,W))``; default:
            ``config.split`` of ``config.dataset`` (:func:`~deeplab_edu.data.open_dataset`, which
            says how to get VOC when it is missing).
        vgg_state_dict: see :func:`build_model`.
        on_step: called as ``on_step(iteration, loss)`` after each iteration (1-based).
        progress: show a progress bar (rank 0 only).

    Returns:
        The trained network (unwrapped from DDP), in eval mode, on the training device.

    Raises:
        FileExistsError: if a checkpoint exists and ``resume`` is False.
        ValueError: if the checkpoint to resume belongs to another configuration.
        FloatingPointError: if the loss or the weights stop being finite (nothing is saved).
        BlockingIOError: if another training run is using ``out_dir``.
    """
    config.validate()
    out_dir, (rank, world, device) = Path(out_dir), _distributed_setup()
    # one run per folder at a time (rank 0 holds it for every process of a torchrun)
    with run_lock(out_dir) if rank == 0 else contextlib.nullcontext():
        path = out_dir / "checkpoint.pt"
        sweep_temporaries(path)  # a checkpoint half-written by a killed run
        runtime.seed_everything(config.seed)
        if dataset is None:  # the training split of config.dataset, untransformed
            dataset = open_dataset(config.dataset, str(config.split))
        classes = list(dataset_classes(dataset))
        model = build_model(config, vgg_state_dict=vgg_state_dict, num_classes=len(classes))
        model = model.to(device)
        optimizer = make_optimizer(model, config)
        start = _resume(path, model, optimizer, config, device) if path.exists() and resume else 0
        if path.exists() and not resume:
            raise FileExistsError(f"{path} exists; pass resume=True (--resume) to continue it")
        if not path.exists():
            _refuse_foreign_files(out_dir, config)
        if rank == 0:
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
            truncate_log(out_dir, start)
        batches = Batches(
            len(dataset), config.batch_size, config.seed, start, config.iterations, rank, world
        )
        transform = TrainTransform(crop=int(config.crop or 0), flip=config.flip, scale=config.scale)
        loader = torch.utils.data.DataLoader(
            Samples(dataset, transform, config.seed),
            batch_sampler=batches,
            num_workers=config.num_workers,
            pin_memory=device.type == "cuda",
        )
        network: nn.Module = model
        if world > 1:
            ids = [device.index] if device.type == "cuda" else None
            network = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        network.train()
        bar = tqdm(
            total=config.iterations,
            initial=start,
            disable=not progress or rank != 0,
            desc=f"train {config.variant}",
            dynamic_ncols=True,
        )
        began = time.perf_counter()
        log_file = out_dir / METRICS_LOG
        with open(log_file, "a", buffering=1) if rank == 0 else contextlib.nullcontext() as log:
            for iteration, (images, targets) in enumerate(loader, start=start):
                images = images.to(device, non_blocking=True)  # (B, 3, H, W)
                targets = targets.to(device, non_blocking=True)  # (B, H, W)
                set_learning_rate(optimizer, config, iteration)
                runtime.seed_everything(derived_seed(config.seed, iteration, rank, 1))  # dropout
                loss = segmentation_loss(network(images), targets, model.label_offset)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                value, done = _mean_over_ranks(loss.detach(), world), iteration + 1
                _check_finite(model, value, done, config)
                lr = learning_rate(config, iteration)
                if log is not None:  # rank 0
                    record = {
                        "iteration": done,
                        "loss": round(value, 6),
                        "lr": float(f"{lr:.6g}"),
                        "seconds": round(time.perf_counter() - began, 3),
                    }
                    log.write(json.dumps(record) + "\n")
                    bar.set_postfix(loss=f"{value:.3f}", lr=f"{lr:.1e}")
                    bar.update(1)
                if done % config.checkpoint_every == 0 or done == config.iterations:
                    if log is not None:  # rank 0
                        log.flush()
                        save_checkpoint(
                            {
                                "iteration": done,
                                "config": config.to_dict(),
                                "classes": classes,
                                "model": model.state_dict(),
                                "optimizer": optimizer.state_dict(),
                            },
                            path,
                        )
                    if world > 1:
                        dist.barrier()
                if on_step is not None:
                    on_step(done, value)
        bar.close()
        return model.eval()


def _distributed_setup() -> tuple[int, int, torch.device]:
    """(rank, world size, device) from torchrun's variables, joining the process group when
    there are several processes; (0, 1, runtime.device()) without them."""
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    world, device = int(os.environ.get("WORLD_SIZE", "1")), runtime.device()
    if world > 1:
        if device.type == "cuda":
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def _resume(
    path: Path,
    model: DeepLab,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    device: torch.device,
) -> int:
    """Load weights and optimiser state of the checkpoint at ``path``; return its iteration.
    A finished run may be stored without optimiser state (the shipped networks are).

    Raises:
        ValueError: if the checkpoint was trained with another configuration (naming the
            differences), or holds no optimiser state before its last iteration.
    """
    state = load_checkpoint(path, map_location=device)
    wanted = config.to_dict()
    changed = {
        k: (v, wanted.get(k))
        for k, v in state["config"].items()
        if wanted.get(k) != v and k not in RESUMABLE_CHANGES
    }
    if changed:
        raise ValueError(
            f"{path} was trained with another configuration: {changed} (saved, asked); resume "
            "with the same values, or train into another folder"
        )
    if state["format"] < HEAD_FORMAT and (model.msc is not None or len(model.heads()) > 1):
        raise ValueError(
            f"{path} was written before the head became a module (checkpoint format "
            f"{state['format']}): its weights load (evaluate it, or --init it), but its optimiser "
            f"state lists {model.variant}'s parameters in another order, so it cannot be resumed; "
            "train into another folder"
        )
    model.load_state_dict(state["model"])
    iteration = int(state["iteration"])
    if "optimizer" in state:
        optimizer.load_state_dict(state["optimizer"])
    elif iteration < config.iterations:  # a finished run's weights (shipped) need none
        raise ValueError(
            f"{path} holds weights only (no optimiser state) at iteration {iteration} of "
            f"{config.iterations}: it cannot be resumed; train into another folder"
        )
    return iteration


def _refuse_foreign_files(out_dir: Path, config: TrainConfig) -> None:
    """A folder without a checkpoint may hold only this run's own start (its ``config.json``,
    equal to ``config``: the run's manifest, and its log): never overwrite another run's files.

    Raises:
        FileExistsError: naming the file and what to do.
    """
    saved = out_dir / "config.json"
    try:
        own = saved.is_file() and json.loads(saved.read_text()) == config.to_dict()
    except (OSError, UnicodeDecodeError, ValueError):
        own = False
    writer = "this run (it is another run's or configuration's, and there is no checkpoint.pt)"
    for name in ("config.json", METRICS_LOG):
        refuse_foreign(out_dir / name, owned=own, writer=writer, force=None)


def _check_finite(model: DeepLab, loss: float, iteration: int, config: TrainConfig) -> None:
    """Stop before a diverged network can be saved: the loss, and every weight after the step.

    Raises:
        FloatingPointError: naming the iteration.
    """
    if not math.isfinite(loss) or not all(torch.isfinite(p).all() for p in model.parameters()):
        what = f"the loss became {loss}" if not math.isfinite(loss) else "the weights diverged"
        raise FloatingPointError(
            f"{what} at iteration {iteration}; lower the learning rate (lr={config.lr}). "
            "Nothing from this iteration was saved"
        )


def _mean_over_ranks(value: torch.Tensor, world: int) -> float:
    if world > 1:
        value = value.clone()
        dist.all_reduce(value)
        value /= world
    return float(value)
