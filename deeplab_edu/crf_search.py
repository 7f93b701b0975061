"""Choosing the CRF parameters: the paper's coarse-to-fine cross-validation (Section 5).

The DCNN and the CRF are trained piecewise: with the network fixed, w2 = 3 and theta_gamma = 3
are fixed too, and (w1, theta_alpha, theta_beta) are chosen by the mean IoU they give on held-out
images (the paper: 100 val images), starting from w1 in [5, 10], theta_alpha in 50:10:100 and
theta_beta in 3:1:10, then refining around the best point.

As the authors' released MATLAB scripts run it (the paper gives only the starting ranges):

1. **tuning images**: ``num_images`` images of the val set drawn at random with a fixed seed
   (VOC's sorted list would make the first 100 all from 2007);
2. **coarse**: every combination of the starting values (w1 in {5, 10}: the interval's ends);
3. **fine**: a full 3 x 3 x 3 grid centred on the coarse optimum, with half the coarse steps
   (the authors' fine grid, w1 3:2:5 x theta_alpha 80:5:100 x theta_beta {3, 5, 7}, is of this
   kind);
4. **recentring**: if the best point lies on an edge of that grid, the grid moves there and the
   search goes on (at most ``max_recentres`` times), so an optimum outside the first ranges,
   such as the released theta_alpha = 121, can be reached. Each move is reported.

The network runs once per image (its probabilities are kept); each trial is one CRF per image.
Every trial is appended to a JSON file as soon as it is scored, so an interrupted search
resumes where it stopped; the finished file also holds the best parameters, which
``evaluate --crf-from`` reads.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, cast

import torch
from tqdm import tqdm

from deeplab_edu import runtime
from deeplab_edu.checkpoint import contents_digest, write_results
from deeplab_edu.crf import dense_crf
from deeplab_edu.crf.kernels import CRFParams
from deeplab_edu.data.sampling import Dataset
from deeplab_edu.data.voc import dataset_classes
from deeplab_edu.inference import network_outputs
from deeplab_edu.metrics import ConfusionMatrix
from deeplab_edu.models.deeplab import DeepLab


@dataclass
class SearchConfig(runtime.ModeConfig):
    """The search; defaults are the paper's ranges (full mode, VOC images of about 500 px).

    Fast mode scales the spatial bandwidth theta_alpha with the image side (the generated
    images are about a quarter of a VOC image's side) and uses fewer images.
    """

    # the grids of the three searched parameters
    w1: tuple[float, ...] = (5.0, 10.0)
    theta_alpha: tuple[float, ...] = (50.0, 60.0, 70.0, 80.0, 90.0, 100.0)
    theta_beta: tuple[float, ...] = (3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0)
    # the CRF whose w2, theta_gamma, iterations and normalisation every trial keeps (the paper's
    # w2 = theta_gamma = 3, 10 iterations; the authors' "after" normalisation): CRFParams'
    base: CRFParams = field(default_factory=CRFParams)
    num_images: int = 100
    seed: int = 0  # which val images tune the CRF (drawn at random, seeded)
    max_recentres: int = 4
    pad_to: int | None = 513

    # fast mode: theta_alpha scaled by 1/4 (the range 50..100 becomes 12.5..25, its two ends),
    # theta_beta every 3 units of 3..9, 8 images, native size
    FAST: ClassVar[dict] = dict(
        theta_alpha=(12.5, 25.0),
        theta_beta=(3.0, 6.0, 9.0),
        num_images=8,
        pad_to=None,
    )

    def validate(self) -> None:
        """Raise ValueError naming the first bad value."""
        for name in ("w1", "theta_alpha", "theta_beta"):
            values = getattr(self, name)
            if not values or min(values) <= 0:
                raise ValueError(f"{name} needs at least one positive value, got {values}")
            if not all(math.isfinite(v) for v in values):
                raise ValueError(f"{name} values must be finite, got {values}")
        if not isinstance(self.base, CRFParams):
            raise ValueError(f"base must be a CRFParams, got {type(self.base).__name__}")
        if self.num_images < 1 or self.base.iterations < 1 or self.max_recentres < 0:
            raise ValueError(
                "num_images and base.iterations must be >= 1 and max_recentres >= 0, got "
                f"{self.num_images}, {self.base.iterations}, {self.max_recentres}"
            )
        runtime.checked_int("seed", self.seed, 0, runtime.MAX_SEED)

    def params(self, w1: float, theta_alpha: float, theta_beta: float) -> CRFParams:
        """The CRF of one trial: the searched values in ``base``."""
        return dataclasses.replace(self.base, w1=w1, theta_alpha=theta_alpha, theta_beta=theta_beta)


@dataclass
class SearchResult:
    """All scored trials (dicts with w1, theta_alpha, theta_beta, stage, miou), the best
    parameters, the mean IoU without the CRF on the same images, the indices of the tuning
    images in the data set, and what the search had to say (grid moves, edges)."""

    trials: list[dict]
    best: CRFParams
    best_miou: float
    dcnn_miou: float
    images: list[int]
    notes: list[str]


def state_file(run_folder: str | Path, config: SearchConfig) -> Path:
    """Where a run's search with ``config`` keeps its trials (a file per configuration)."""
    key = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode()).hexdigest()
    return Path(run_folder) / f"crf_search-{key[:12]}.json"


def tuning_indices(count: int, num_tune: int, seed: int = 0) -> list[int]:
    """The images that tune the CRF: ``num_tune`` of ``count`` drawn at random (seeded), sorted.

    Raises:
        ValueError: unless ``1 <= num_tune <= count``.
    """
    if not 0 < num_tune <= count:
        raise ValueError(
            f"num_tune must be between 1 and {count} for {count} images, got {num_tune}"
        )
    generator = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(count, generator=generator)[:num_tune].tolist())


def holdout(
    dataset: Dataset, num_tune: int, *, seed: int = 0
) -> tuple[torch.utils.data.Subset, torch.utils.data.Subset]:
    """Split a data set into the images used to choose the CRF and the images to report on.

    Returns:
        ``(tune, test)`` as ``Subset``s: :func:`tuning_indices` and the rest, in order.

    Raises:
        ValueError: if ``num_tune`` does not leave at least one image on each side.
    """
    if not 0 < num_tune < len(dataset):
        raise ValueError(
            f"num_tune must be between 1 and {len(dataset) - 1} for {len(dataset)} images, "
            f"got {num_tune}"
        )
    tune = tuning_indices(len(dataset), num_tune, seed)
    chosen = set(tune)
    test = [index for index in range(len(dataset)) if index not in chosen]
    whole = cast(torch.utils.data.Dataset, dataset)  # any indexable data set, as Subset reads it
    return torch.utils.data.Subset(whole, tune), torch.utils.data.Subset(whole, test)


Point = tuple[float, float, float]  # (w1, theta_alpha, theta_beta)
AXES = ("w1", "theta_alpha", "theta_beta")


def _step(values: tuple[float, ...]) -> float:
    if len(values) == 1:
        return values[0] / 2
    return (max(values) - min(values)) / (len(values) - 1)


def _fine_grid(centre: Point, steps: Point) -> list[Point]:
    """The 3 x 3 x 3 grid around ``centre`` (positive values only), centre first."""
    axes = [
        [round(c + k * s, 6) for k in (0, -1, 1) if c + k * s > 0]
        for c, s in zip(centre, steps, strict=True)
    ]
    return [(w1, alpha, beta) for w1, alpha, beta in itertools.product(*axes)]


def _edges(best: Point, centre: Point, steps: Point) -> list[str]:
    """The axes along which ``best`` sits on an edge of the grid around ``centre``."""
    return [
        f"{name}={b:g} on the {'upper' if b > c else 'lower'} edge"
        for name, b, c, s in zip(AXES, best, centre, steps, strict=True)
        if abs(b - c) > s / 2
    ]


def search(
    model: DeepLab,
    dataset: Dataset,
    config: SearchConfig | None = None,
    *,
    state_path: str | Path | None = None,
    progress: bool = True,
) -> SearchResult:
    """Cross-validate (w1, theta_alpha, theta_beta) on ``config.num_images`` images of
    ``dataset`` drawn at random (:func:`tuning_indices`; all of them if it has no more).

    Args:
        model: the trained network (fixed).
        dataset: held-out images, ``(uint8 (3, H, W), int64 (H, W))`` pairs.
        config: see :class:`SearchConfig`; default :meth:`SearchConfig.for_mode`.
        state_path: a JSON file of the trials so far; resumed from when it exists and was
            written for the same search configuration. At the end it also holds ``best``
            (a :class:`CRFParams` as a dict), ``images`` and ``notes``.
        progress: show a progress bar.

    Returns:
        A :class:`SearchResult`.

    Raises:
        ValueError: if ``state_path`` holds a search with another configuration or of
            another network.
    """
    config = config or SearchConfig.for_mode()
    config.validate()
    images = tuning_indices(len(dataset), min(config.num_images, len(dataset)), config.seed)
    device = next(model.parameters()).device
    network = contents_digest(model.state_dict())  # the trials belong to these weights
    trials: list[dict] = []
    state: dict[str, Any] = {"config": config.to_dict(), "images": images, "network": network}
    state["trials"] = trials
    if state_path is not None and Path(state_path).is_file():
        try:
            saved = json.loads(Path(state_path).read_text())
            saved["trials"] = [t for t in saved["trials"] if isinstance(t, dict)]
        except (ValueError, KeyError, TypeError) as error:  # torn or not a search file
            raise ValueError(
                f"{state_path} is not a CRF search state ({type(error).__name__}: {error}); "
                "delete it to start the search again"
            ) from error
        if (saved.get("config"), saved.get("images")) != (state["config"], images):
            raise ValueError(f"{state_path} holds a search with another configuration")
        if saved.get("network", network) != network:  # (files older than the field: trusted)
            raise ValueError(
                f"{state_path} holds the trials of another network's search (other weights); "
                "its results would mix the two: use another --out, or delete it to search anew"
            )
        trials = state["trials"] = saved["trials"]
    done = {(t["w1"], t["theta_alpha"], t["theta_beta"]): t for t in trials}
    # the network runs once per image; every trial reuses its probabilities (float16, CPU)
    outputs = network_outputs(model, dataset, images, pad_to=config.pad_to)
    cache = [(image, probs.half().cpu(), target) for image, probs, target in outputs]
    num_classes = len(dataset_classes(dataset))  # a folder of your own: its own
    baseline = ConfusionMatrix(num_classes)
    for _, probs, target in cache:
        baseline.update(probs.float().argmax(0), target)

    def score(point: Point, stage: str) -> dict:
        if point in done:
            return done[point]
        params = config.params(*point)
        matrix = ConfusionMatrix(num_classes)
        for image, probs, target in cache:
            q = dense_crf(image, probs.to(device).float(), params)
            matrix.update(q.argmax(0).cpu(), target)
        trial = {**dict(zip(AXES, point, strict=True)), "stage": stage, "miou": matrix.miou()}
        trials.append(trial)
        done[point] = trial
        if state_path is not None:
            write_results(state, state_path)
        return trial

    bar = tqdm(desc="CRF search", disable=not progress, dynamic_ncols=True)
    visited: list[dict] = []  # this search's trials in order (ties go to the earliest)

    def run(points: list[Point], stage: str) -> dict:
        # the bar counts CRF runs: a point met again (grids overlap, or resumed) costs nothing
        bar.total = (bar.total or 0) + sum(point not in done for point in points)
        for point in points:
            new = point not in done
            visited.append(score(point, stage))
            bar.update(new)
        return max(visited, key=lambda t: t["miou"])

    def as_point(trial: dict) -> Point:
        return (trial["w1"], trial["theta_alpha"], trial["theta_beta"])  # AXES

    best = run(list(itertools.product(config.w1, config.theta_alpha, config.theta_beta)), "coarse")
    steps: Point = (
        _step(config.w1) / 2,
        _step(config.theta_alpha) / 2,
        _step(config.theta_beta) / 2,
    )
    notes = []
    for move in range(config.max_recentres + 1):
        centre = as_point(best)
        best = run(_fine_grid(centre, steps), "fine" if move == 0 else f"fine, recentred {move}")
        edges = _edges(as_point(best), centre, steps)
        if not edges:
            break
        if move == config.max_recentres:
            notes.append(
                f"the best point is still on the grid's edge ({', '.join(edges)}) "
                f"after {move} recentrings: widen the ranges or raise max_recentres"
            )
        else:
            notes.append(f"fine grid {move + 1}: {', '.join(edges)}; recentred there")
    bar.close()
    params = config.params(*as_point(best))
    state |= {"best": params.to_dict(), "best_miou": best["miou"], "dcnn_miou": baseline.miou()}
    state["notes"] = notes
    if state_path is not None:
        write_results(state, state_path)
    return SearchResult(list(trials), params, best["miou"], baseline.miou(), images, notes)


def load_best(path: str | Path) -> tuple[CRFParams, list[int]]:
    """The parameters a finished search chose, and its tuning images, from its JSON file.

    Raises:
        ValueError: if the file is not a finished search (no ``best``), or an entry is not what
            :func:`search` writes (naming the file and the entry).
    """
    try:
        saved = json.loads(Path(path).read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not the JSON file of a CRF search ({error})") from error
    if not isinstance(saved, dict) or "best" not in saved:
        raise ValueError(
            f"{path} is not a finished CRF search (no 'best' entry): run crf-search to the end"
        )
    best = CRFParams(**runtime.checked_fields(CRFParams, saved["best"], f"{path}, entry 'best'"))
    images = saved.get("images", [])
    if not isinstance(images, list) or not all(_is_index(i) for i in images):
        raise ValueError(
            f"{path}, entry 'images': expected a list of image indices (ints >= 0), "
            f"got {images!r:.80}"
        )
    return best, images


def _is_index(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
