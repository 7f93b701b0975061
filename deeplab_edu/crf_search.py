"""Choosing the CRF parameters: the paper's coarse-to-fine cross-validation (Section 5).

The DCNN and the CRF are trained piecewise: with the network fixed, w2 = 3 and theta_gamma = 3
are fixed too, and (w1, theta_alpha, theta_beta) are chosen by the mean IoU they give on held-out
images (the paper: 100 val images), starting from w1 in [5, 10], theta_alpha in 50:10:100 and
theta_beta in 3:1:10, then refining around the best point.

Our reading of the coarse-to-fine search (the paper gives only the starting ranges):

1. **coarse**: every combination of the starting values (w1 in {5, 10}: the interval's ends);
2. **fine**: from the best point so far, each parameter in turn moved half a coarse step up
   and down with the others fixed (6 points), repeated ``refine_rounds`` times with the step
   halved again. (A full 3 x 3 x 3 neighbourhood would cost 26 trials per round instead.)

The network runs once per image (its probabilities are kept); each trial is one CRF per image.
Every trial is appended to a JSON file as soon as it is scored, so an interrupted search
resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn
from tqdm import tqdm

from deeplab_edu import runtime
from deeplab_edu.crf.kernels import CRFParams
from deeplab_edu.data.voc import NUM_CLASSES
from deeplab_edu.evaluate import predict_probs, write_results
from deeplab_edu.metrics import ConfusionMatrix


@dataclass
class SearchConfig(runtime.ModeConfig):
    """The search; defaults are the paper's ranges (full mode, VOC images of about 500 px).

    Fast mode scales the spatial bandwidth theta_alpha with the image side (the generated
    images are about a quarter of a VOC image's side) and uses fewer images.
    """

    w1: tuple[float, ...] = (5.0, 10.0)
    theta_alpha: tuple[float, ...] = (50.0, 60.0, 70.0, 80.0, 90.0, 100.0)
    theta_beta: tuple[float, ...] = (3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0)
    w2: float = 3.0
    theta_gamma: float = 3.0
    num_images: int = 100
    iterations: int = 10
    refine_rounds: int = 1
    pad_to: int | None = 513

    # fast mode: theta_alpha scaled by 1/4 (the range 50..100 becomes 12.5..25, its two ends),
    # theta_beta every 3 units of 3..9, 8 images, native size
    FAST: ClassVar[dict] = dict(
        theta_alpha=(12.5, 25.0), theta_beta=(3.0, 6.0, 9.0), num_images=8, pad_to=None,
    )  # fmt: skip

    def validate(self) -> None:
        """Raise ValueError naming the first bad value."""
        for name in ("w1", "theta_alpha", "theta_beta"):
            values = getattr(self, name)
            if not values or min(values) <= 0:
                raise ValueError(f"{name} needs at least one positive value, got {values}")
        if self.num_images < 1 or self.iterations < 1 or self.refine_rounds < 0:
            raise ValueError(
                "num_images and iterations must be >= 1 and refine_rounds >= 0, got "
                f"{self.num_images}, {self.iterations}, {self.refine_rounds}"
            )

    def to_dict(self) -> dict:
        values = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


@dataclass
class SearchResult:
    """All scored trials (dicts with w1, theta_alpha, theta_beta, stage, miou), the best
    parameters, and the mean IoU without the CRF on the same images."""

    trials: list[dict]
    best: CRFParams
    best_miou: float
    dcnn_miou: float


def state_file(run_folder: str | Path, config: SearchConfig) -> Path:
    """Where a run's search with ``config`` keeps its trials (a file per configuration)."""
    key = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode()).hexdigest()
    return Path(run_folder) / f"crf_search-{key[:12]}.json"


def holdout(dataset, num_tune: int):
    """Split a data set into the images used to choose the CRF and the images to report on.

    Returns:
        ``(tune, test)``: the first ``num_tune`` images and the rest, as ``Subset``s.

    Raises:
        ValueError: if ``num_tune`` does not leave at least one image on each side.
    """
    if not 0 < num_tune < len(dataset):
        raise ValueError(
            f"num_tune must be between 1 and {len(dataset) - 1} for {len(dataset)} images, "
            f"got {num_tune}"
        )
    subset = torch.utils.data.Subset
    return subset(dataset, range(num_tune)), subset(dataset, range(num_tune, len(dataset)))


def _grid(config: SearchConfig) -> list[tuple[float, float, float]]:
    return list(itertools.product(config.w1, config.theta_alpha, config.theta_beta))


def _neighbours(best: tuple[float, float, float], steps: tuple[float, float, float]):
    """The points one ``step`` away from ``best`` along each axis (positive values only)."""
    points = []
    for axis, step in enumerate(steps):
        for sign in (-1, 1):
            point = list(best)
            point[axis] = best[axis] + sign * step
            if point[axis] > 0:
                points.append(tuple(point))
    return points


def _step(values: tuple[float, ...]) -> float:
    if len(values) == 1:
        return values[0] / 2
    return (max(values) - min(values)) / (len(values) - 1)


def search(
    model: nn.Module,
    dataset,
    config: SearchConfig | None = None,
    *,
    state_path: str | Path | None = None,
    progress: bool = True,
) -> SearchResult:
    """Cross-validate (w1, theta_alpha, theta_beta) on the first ``config.num_images`` images.

    Args:
        model: the trained network (fixed).
        dataset: held-out images, ``(uint8 (3, H, W), int64 (H, W))`` pairs.
        config: see :class:`SearchConfig`; default :meth:`SearchConfig.for_mode`.
        state_path: a JSON file of the trials so far; resumed from when it exists and was
            written for the same search configuration.
        progress: show a progress bar.

    Returns:
        A :class:`SearchResult`.

    Raises:
        ValueError: if ``state_path`` holds a search with another configuration.
    """
    from deeplab_edu.crf import dense_crf

    config = config or SearchConfig.for_mode()
    config.validate()
    count = min(config.num_images, len(dataset))
    device = next(model.parameters()).device
    state = {"config": config.to_dict(), "trials": []}
    if state_path is not None and Path(state_path).is_file():
        saved = json.loads(Path(state_path).read_text())
        if saved["config"] != state["config"]:
            raise ValueError(f"{state_path} holds a search with another configuration")
        state = saved
    done = {(t["w1"], t["theta_alpha"], t["theta_beta"]): t for t in state["trials"]}
    cache = []  # (uint8 image (H, W, 3), probs (C, H, W) float16 on the CPU, target (H, W))
    model.eval()
    for index in range(count):
        image, target = dataset[index]
        probs = predict_probs(model, image, pad_to=config.pad_to, device=device)
        cache.append((image.permute(1, 2, 0).contiguous(), probs.half().cpu(), target))
    baseline = ConfusionMatrix(NUM_CLASSES)
    for _, probs, target in cache:
        baseline.update(probs.float().argmax(0), target)

    def score(point: tuple[float, float, float], stage: str) -> dict:
        if point in done:
            return done[point]
        w1, theta_alpha, theta_beta = point
        params = CRFParams(w1=w1, theta_alpha=theta_alpha, theta_beta=theta_beta,
                           w2=config.w2, theta_gamma=config.theta_gamma)  # fmt: skip
        matrix = ConfusionMatrix(NUM_CLASSES)
        for image, probs, target in cache:
            q = dense_crf(image, probs.to(device).float(), **dataclasses.asdict(params),
                          iterations=config.iterations)  # fmt: skip
            matrix.update(q.argmax(0).cpu(), target)
        trial = {"w1": w1, "theta_alpha": theta_alpha, "theta_beta": theta_beta,
                 "stage": stage, "miou": matrix.miou()}  # fmt: skip
        state["trials"].append(trial)
        done[point] = trial
        if state_path is not None:
            write_results(state, state_path)
        return trial

    points = _grid(config)
    steps = (_step(config.w1), _step(config.theta_alpha), _step(config.theta_beta))
    bar = tqdm(total=len(points), desc="CRF search", disable=not progress, dynamic_ncols=True)
    visited = []  # this search's trials in order (ties go to the earliest: deterministic)
    for point in points:
        visited.append(score(point, "coarse"))
        bar.update(1)
    for round_ in range(config.refine_rounds):
        steps = tuple(s / 2 for s in steps)
        best = max(visited, key=lambda t: t["miou"])
        fine = _neighbours((best["w1"], best["theta_alpha"], best["theta_beta"]), steps)
        bar.total += len(fine)
        for point in fine:
            visited.append(score(point, f"fine {round_ + 1}"))
            bar.update(1)
    bar.close()
    best = max(visited, key=lambda t: t["miou"])
    params = CRFParams(w1=best["w1"], theta_alpha=best["theta_alpha"],
                       theta_beta=best["theta_beta"], w2=config.w2,
                       theta_gamma=config.theta_gamma)  # fmt: skip
    return SearchResult(list(state["trials"]), params, best["miou"], baseline.miou())
