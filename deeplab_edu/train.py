"""Training DeepLab: the paper's recipe (paper sections 3.1 and 5), one loop for CPU, GPU and DDP.

The recipe, as :class:`TrainConfig` defaults:

- loss: per-pixel cross-entropy between the stride-8 scores and the ground truth subsampled by
  8, every position weighted equally, void (255) ignored. We average over the valid positions
  (Caffe's ``SoftmaxWithLoss`` normalises the same way); the paper says "sum", which only
  rescales the learning rate.
- SGD, momentum 0.9, weight decay 5e-4, learning rate 1e-3 with x10 for the new classifier
  (``fc8``, and the ``msc`` branches), multiplied by 0.1 every 2000 iterations, 6000 iterations.
  Like the released Caffe solver, biases get twice the learning rate and no weight decay (the
  paper does not say so; the prototxts do).
- mini-batch 20 (the paper's text). Reimplementations of the released LargeFOV setup use 30;
  we keep the paper's 20 and let ``--batch-size`` change it.
- random 321x321 crops and horizontal flips.

Reproducibility: every sample is drawn from (seed, iteration, position in the batch) alone, and
every iteration re-seeds the generators from (seed, iteration, rank) before the forward pass
(dropout). A run is therefore a pure function of its configuration, and ``resume`` continues
an interrupted run exactly: the checkpoint holds the weights, the optimiser's momentum and the
iteration; the data order and the random streams follow from the iteration number.

Several GPUs: launch with ``torchrun --nproc_per_node=N -m deeplab_edu train ...``; each
process takes ``batch_size / N`` images of the same global batch and DistributedDataParallel
averages the gradients, so the replicas stay identical.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from deeplab_edu import runtime
from deeplab_edu.checkpoint import load_checkpoint, save_checkpoint
from deeplab_edu.data import voc_dir
from deeplab_edu.data.voc import IGNORE_INDEX, NUM_CLASSES
from deeplab_edu.models.deeplab import MSC_PREFIX, NEW_LAYER_PREFIXES, OUTPUT_STRIDE


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
    dataset: str = "voc"  # "voc" (VOC 2012 + SBD), "toy" (generated) or a VOC-format folder
    split: str = "train_aug"
    iterations: int = 6000
    batch_size: int = 20  # paper: 20; reimplementations of the released setup: 30
    lr: float = 1e-3
    lr_new_multiplier: float = 10.0  # fc8 (and msc): x10
    lr_bias_multiplier: float = 2.0  # Caffe solver convention: biases at 2x, no weight decay
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_step: int = 2000  # multiply the learning rate by lr_gamma every lr_step iterations
    lr_gamma: float = 0.1
    crop: int = 321
    flip: bool = True
    scale: tuple[float, float] | None = None  # the paper does not use random scaling
    seed: int = 0
    checkpoint_every: int = 500
    num_workers: int = 2

    # Fast mode (values only): the backbone is randomly initialised (ImageNet weights exist
    # only at full width), so we train from scratch on the generated set; that needs a 10x
    # higher learning rate than fine-tuning, with the same x10 / x2 multipliers and schedule.
    FAST: ClassVar[dict] = dict(
        width=0.125, init="random", dataset="toy", split="train", iterations=2000,
        batch_size=10, lr=1e-2, lr_step=800, crop=97, checkpoint_every=250, num_workers=0,
    )  # fmt: skip

    def to_dict(self) -> dict:
        """Plain values only (safe to store in a ``weights_only`` checkpoint and in JSON)."""
        values = dataclasses.asdict(self)
        values["scale"] = list(self.scale) if self.scale is not None else None
        return values

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error.

        Raises:
            ValueError: naming the unknown keys.
        """
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig fields {unknown}; known: {sorted(known)}")
        values = dict(values)
        if values.get("scale") is not None:
            values["scale"] = tuple(values["scale"])
        return cls(**values)

    def validate(self) -> None:
        """Raise ValueError naming the first inconsistent value."""
        if self.iterations < 1 or self.batch_size < 1 or self.checkpoint_every < 1:
            raise ValueError(
                "iterations, batch_size and checkpoint_every must be >= 1, got "
                f"{self.iterations}, {self.batch_size}, {self.checkpoint_every}"
            )
        if self.crop < OUTPUT_STRIDE + 1:
            raise ValueError(f"crop must be at least {OUTPUT_STRIDE + 1} pixels, got {self.crop}")
        if not self.lr > 0 or self.lr_step < 1:
            raise ValueError(f"lr must be > 0 and lr_step >= 1, got {self.lr}, {self.lr_step}")
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


def param_groups(model: nn.Module, config: TrainConfig) -> list[dict]:
    """Split the trainable parameters into the four groups of the Caffe solver.

    Args:
        model: a DeepLab network; parameters named ``fc8.*`` / ``msc.*`` are the new layers.
        config: the learning-rate multipliers and weight decay.

    Returns:
        Groups for ``torch.optim.SGD``, each with a ``name`` and an ``lr_mult`` that
        :func:`set_learning_rate` multiplies with the scheduled rate: pretrained weights (x1,
        decay), pretrained biases (x2, no decay), new weights (x10, decay), new biases (x20,
        no decay). Empty groups are left out.
    """
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            key = (name.startswith(NEW_LAYER_PREFIXES), name.endswith("bias"))
            groups.setdefault(key, []).append(parameter)
    result = []
    for (new, bias), params in sorted(groups.items()):
        mult = (config.lr_new_multiplier if new else 1.0) * (
            config.lr_bias_multiplier if bias else 1.0
        )
        result.append(
            {
                "params": params,
                "name": f"{'new' if new else 'pretrained'} {'biases' if bias else 'weights'}",
                "lr_mult": mult,
                "weight_decay": 0.0 if bias else config.weight_decay,
            }
        )
    return result


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.SGD:
    """SGD with momentum over :func:`param_groups`, learning rates set for iteration 0."""
    optimizer = torch.optim.SGD(param_groups(model, config), lr=config.lr, momentum=config.momentum)
    set_learning_rate(optimizer, config, 0)
    return optimizer


def set_learning_rate(optimizer: torch.optim.Optimizer, config: TrainConfig, iteration: int):
    """Set every group's rate to the scheduled base rate times its ``lr_mult``."""
    base = learning_rate(config, iteration)
    for group in optimizer.param_groups:
        group["lr"] = base * group["lr_mult"]


def segmentation_loss(scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of stride-8 scores against the labels subsampled by 8, void ignored.

    Args:
        scores: ``(B, C, h, w)`` network output at stride 8.
        target: ``(B, H, W)`` int64 labels at full resolution (0..C-1, 255 = void).

    Returns:
        The mean loss over the valid positions (0 with a gradient if none is valid).

    Raises:
        ValueError: if the subsampled labels do not have the scores' size.
    """
    from deeplab_edu.data.transforms import subsample_labels

    labels = subsample_labels(target, stride=OUTPUT_STRIDE)  # (B, h, w)
    if labels.shape[-2:] != scores.shape[-2:]:
        raise ValueError(
            f"labels subsampled by {OUTPUT_STRIDE} have size {tuple(labels.shape[-2:])} but the "
            f"network output is {tuple(scores.shape[-2:])}; use crops of size 8k+1 "
            "(e.g. 321, 97, 65)"
        )
    if not (labels != IGNORE_INDEX).any():
        return scores.sum() * 0.0
    # $L = -\frac{1}{|V|}\sum_{i \in V} \log P_i(y_i)$, V = non-void positions
    return F.cross_entropy(scores, labels, ignore_index=IGNORE_INDEX)


def _derived_seed(*numbers: int) -> int:
    return int(np.random.SeedSequence([int(n) for n in numbers]).generate_state(1)[0])


class _Samples(torch.utils.data.Dataset):
    """Applies the training transform with randomness drawn from (seed, iteration, position)."""

    def __init__(self, dataset, transform, seed: int):
        self.dataset, self.transform, self.seed = dataset, transform, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int, int]):
        iteration, position, index = key
        runtime.seed_everything(_derived_seed(self.seed, iteration, position))
        image, target = self.dataset[index]
        return self.transform(image, target)


class _Batches(torch.utils.data.Sampler):
    """Yields, for iterations ``start..stop-1``, this rank's share of the global batch.

    The global sample stream is a new random permutation of the data set per epoch (seeded by
    (seed, epoch)); global batch ``t`` is samples ``t*B .. t*B+B-1`` of that stream.
    """

    def __init__(self, n, batch_size, seed, start, stop, rank=0, world_size=1):
        if batch_size % world_size:
            raise ValueError(
                f"batch_size {batch_size} must be divisible by the number of processes {world_size}"
            )
        self.n, self.batch, self.seed = n, batch_size, seed
        self.start, self.stop = start, stop
        self.share = range(rank * batch_size // world_size, (rank + 1) * batch_size // world_size)
        self._epoch, self._order = -1, None

    def _index(self, sample: int) -> int:
        epoch, offset = divmod(sample, self.n)
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(_derived_seed(self.seed, epoch))
            self._epoch, self._order = epoch, torch.randperm(self.n, generator=generator)
        return int(self._order[offset])

    def __len__(self) -> int:
        return self.stop - self.start

    def __iter__(self):
        for iteration in range(self.start, self.stop):
            yield [(iteration, p, self._index(iteration * self.batch + p)) for p in self.share]


def _distributed() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) from torchrun's variables; (0, 0, 1) without them."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")), world


def build_model(config: TrainConfig, *, vgg_state_dict: dict | None = None) -> nn.Module:
    """The network of ``config``, initialised as ``config.init`` says.

    Args:
        config: variant, width, msc and init.
        vgg_state_dict: a torchvision VGG-16 state dict to use instead of downloading
            IMAGENET1K_V1 (tests pass a randomly initialised one).

    Raises:
        ValueError: for an unknown variant, or ImageNet weights with width != 1.
    """
    from deeplab_edu.models import deeplab, load_vgg16, vgg16_imagenet_state_dict

    if config.init == "imagenet" and config.width != 1.0:
        raise ValueError(
            f"ImageNet VGG-16 weights need width=1.0, got width={config.width}; "
            "use init='random' for a narrow network"
        )
    model = deeplab(config.variant, num_classes=NUM_CLASSES, width=config.width, msc=config.msc)
    if config.init == "imagenet":
        load_vgg16(
            model, vgg_state_dict if vgg_state_dict is not None else vgg16_imagenet_state_dict()
        )
    elif config.init != "random":
        _load_stage_one(model, config)
    if config.msc:  # section 4.3: "we only adjust the newly added weights"
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(name.startswith(MSC_PREFIX))
    return model


def _load_stage_one(model: nn.Module, config: TrainConfig) -> None:
    """Initialise from a trained DeepLab checkpoint: every weight it has is loaded.

    For DeepLab-MSc the checkpoint may hold the stage-one network without the multi-scale head;
    the head then keeps its initialisation (branches He normal, their classifier N(0, 0.001)),
    so the network starts from the stage-one predictions.

    Raises:
        ValueError: for another variant or width, or weights that do not fit.
    """
    state = load_checkpoint(config.init)
    saved = state["config"]
    if (saved["variant"], saved["width"]) != (config.variant, config.width):
        raise ValueError(
            f"{config.init} holds a {saved['variant']!r} network of width {saved['width']}, "
            f"but this run trains {config.variant!r} of width {config.width}"
        )
    try:
        missing, unexpected = model.load_state_dict(state["model"], strict=False)
    except RuntimeError as error:  # a tensor of another shape (e.g. another number of classes)
        raise ValueError(f"{config.init} does not fit this network: {error}") from error
    allowed = MSC_PREFIX if config.msc and not saved.get("msc") else ()
    if unexpected or any(not name.startswith(allowed) for name in missing):
        raise ValueError(f"{config.init} does not fit: missing {missing}, unexpected {unexpected}")


def train(
    config: TrainConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    dataset=None,
    vgg_state_dict: dict | None = None,
    on_step: Callable[[int, float], None] | None = None,
    progress: bool = True,
) -> nn.Module:
    """Train ``config`` and write ``checkpoint.pt``, ``metrics.jsonl`` and ``config.json``.

    Args:
        config: the run.
        out_dir: the run folder.
        resume: continue from ``out_dir/checkpoint.pt`` if present (same iteration, optimiser
            state, schedule, data order and random streams); otherwise an existing checkpoint
            is an error, so that a run is never overwritten silently.
        dataset: a data set yielding ``(uint8 image (3,H,W), int64 target (H,W))``; default:
            ``config.split`` of ``config.dataset``.
        vgg_state_dict: see :func:`build_model`.
        on_step: called as ``on_step(iteration, loss)`` after each iteration (1-based).
        progress: show a progress bar (rank 0 only).

    Returns:
        The trained network (unwrapped from DDP), in eval mode, on the training device.

    Raises:
        FileExistsError: if a checkpoint exists and ``resume`` is False.
        ValueError: if the checkpoint to resume belongs to another configuration.
    """
    from deeplab_edu.data.transforms import TrainTransform

    config.validate()
    out_dir = Path(out_dir)
    rank, local_rank, world = _distributed()
    device = runtime.device()
    if world > 1:
        if device.type == "cuda":
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    path = out_dir / "checkpoint.pt"
    runtime.seed_everything(config.seed)
    model = build_model(config, vgg_state_dict=vgg_state_dict).to(device)
    optimizer = make_optimizer(model, config)
    start = 0
    if path.exists():
        if not resume:
            raise FileExistsError(f"{path} exists; pass resume=True (--resume) to continue it")
        state = load_checkpoint(path, map_location=device)
        if state["config"] != config.to_dict():
            changed = {
                k: (v, config.to_dict().get(k))
                for k, v in state["config"].items()
                if config.to_dict().get(k) != v
            }
            raise ValueError(f"{path} was trained with another configuration: {changed}")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start = int(state["iteration"])
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
        _truncate_log(out_dir / "metrics.jsonl", start)
    if dataset is None:
        dataset = training_set(config)
    batches = _Batches(len(dataset), config.batch_size, config.seed, start, config.iterations,
                       rank, world)  # fmt: skip
    samples = _Samples(dataset, TrainTransform(crop=config.crop, flip=config.flip,
                                               scale=config.scale), config.seed)  # fmt: skip
    loader = torch.utils.data.DataLoader(
        samples, batch_sampler=batches, num_workers=config.num_workers,
        pin_memory=device.type == "cuda", persistent_workers=False,
    )  # fmt: skip
    network = model
    if world > 1:
        ids = [device.index] if device.type == "cuda" else None
        network = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    network.train()
    bar = tqdm(total=config.iterations, initial=start, disable=not progress or rank != 0,
               desc=f"train {config.variant}", dynamic_ncols=True)  # fmt: skip
    began = time.perf_counter()
    with open(out_dir / "metrics.jsonl", "a", buffering=1) if rank == 0 else _Null() as log:
        for iteration, (images, targets) in enumerate(loader, start=start):
            images = images.to(device, non_blocking=True)  # (B, 3, H, W)
            targets = targets.to(device, non_blocking=True)  # (B, H, W)
            set_learning_rate(optimizer, config, iteration)
            runtime.seed_everything(_derived_seed(config.seed, iteration, rank, 1))  # dropout
            loss = segmentation_loss(network(images), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            value = _mean_over_ranks(loss.detach(), world)
            if not math.isfinite(value):
                raise FloatingPointError(
                    f"loss became {value} at iteration {iteration + 1}; lower the learning "
                    f"rate (lr={config.lr})"
                )
            done = iteration + 1
            lr = learning_rate(config, iteration)
            if rank == 0:
                record = {"iteration": done, "loss": round(value, 6), "lr": float(f"{lr:.6g}"),
                          "seconds": round(time.perf_counter() - began, 3)}  # fmt: skip
                log.write(json.dumps(record) + "\n")
                bar.set_postfix(loss=f"{value:.3f}", lr=f"{lr:.1e}")
                bar.update(1)
            if done % config.checkpoint_every == 0 or done == config.iterations:
                if rank == 0:
                    log.flush()
                    save_checkpoint(
                        {"iteration": done, "config": config.to_dict(),
                         "model": model.state_dict(), "optimizer": optimizer.state_dict()},
                        path,
                    )  # fmt: skip
                if world > 1:
                    dist.barrier()
            if on_step is not None:
                on_step(done, value)
    bar.close()
    return model.eval()


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _mean_over_ranks(value: torch.Tensor, world: int) -> float:
    if world > 1:
        value = value.clone()
        dist.all_reduce(value)
        value /= world
    return float(value)


def _truncate_log(path: Path, iteration: int) -> None:
    """Keep only log lines up to ``iteration`` (lines after a resumed checkpoint are redone)."""
    if not path.exists():
        return
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    kept = [line for line in lines if json.loads(line)["iteration"] <= iteration]
    path.write_text("".join(line + "\n" for line in kept))


def read_metrics(out_dir: str | Path) -> list[dict]:
    """The ``metrics.jsonl`` records of a run (one per iteration)."""
    path = Path(out_dir) / "metrics.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"no metrics log at {path}; has the run been trained?")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def training_set(config: TrainConfig):
    """The training split of ``config.dataset`` without transform.

    Raises:
        FileNotFoundError: (from :func:`deeplab_edu.data.voc_dir`) for an unknown data set name,
            or when VOC is missing, with how to get it.
    """
    from deeplab_edu.data.voc import VOCSegmentation

    return VOCSegmentation(voc_dir(config.dataset), config.split)
