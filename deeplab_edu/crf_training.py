"""Training the CRF end to end: the CRF-as-RNN recipes beside the paper's piecewise one.

The paper trains piecewise: the network first, then a grid search of three CRF numbers on
held-out images (:mod:`deeplab_edu.crf_search`). Once the CRF is a differentiable layer
(:class:`~deeplab_edu.crf.MeanFieldCRF`, after Zheng et al., ICCV 2015) two more recipes open:

- **learn the CRF**: with the network fixed, its kernel weights and label compatibilities are
  fitted by gradient descent on the same held-out images the grid search used
  (:func:`fit_crf`);
- **train jointly**: the network and the CRF are fine-tuned together on the training images,
  the loss taken on the CRF's output, so the network learns to give the CRF what it needs
  (:func:`fine_tune_jointly`).

Both minimise the per-pixel cross-entropy of Q (void ignored), computed from the last
iteration's scores (:meth:`MeanFieldCRF.scores`). Both are seeded (the images drawn, the flips
and the network's dropout): the same configuration gives the same result.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from deeplab_edu import runtime
from deeplab_edu.crf.rnn import MeanFieldCRF
from deeplab_edu.data.sampling import Dataset, derived_seed
from deeplab_edu.data.transforms import EvalTransform, to_hwc
from deeplab_edu.data.voc import IGNORE_INDEX
from deeplab_edu.inference import network_outputs
from deeplab_edu.models.deeplab import DeepLab

Sample = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (H, W, 3) uint8, (C, H, W), (H, W)


@dataclass
class LearnConfig(runtime.ModeConfig):
    """Step counts and step sizes of the two learned recipes: the defaults are full mode's
    (never run here: the engineering appendix, "On a GPU"), fast mode's the ones the book measures.

    ``crf_*``: learning the CRF alone (Adam on its log-weights and compatibilities, one step
    per pass over ``crf_batch`` tuning images). ``joint_*``: fine-tuning network and CRF
    together (SGD with momentum for the network, at the rate :func:`fine_tune_jointly` is given;
    Adam for the CRF), ``joint_batch`` training images per step, flipped at random.
    """

    crf_steps: int = 100
    crf_lr: float = 0.005
    crf_batch: int = 10
    joint_steps: int = 1000
    joint_batch: int = 10
    joint_crf_lr: float = 0.001
    max_grad_norm: float = 1.0  # clip the network's gradient norm, as for recurrent networks
    momentum: float = 0.9
    seed: int = 0

    FAST: ClassVar[dict] = dict(crf_steps=40, crf_batch=8, joint_steps=60, joint_batch=4)

    def validate(self) -> None:
        """Raise ValueError naming the first bad value."""
        counts = (self.crf_steps, self.crf_batch, self.joint_steps, self.joint_batch)
        if min(counts) < 1:
            raise ValueError(
                f"steps and batch sizes must be >= 1, got crf_steps, crf_batch, "
                f"joint_steps, joint_batch = {counts}"
            )
        if not (self.crf_lr > 0 and self.joint_crf_lr > 0 and self.max_grad_norm > 0):
            raise ValueError(
                f"learning rates and max_grad_norm must be > 0, got crf_lr="
                f"{self.crf_lr}, joint_crf_lr={self.joint_crf_lr}, max_grad_norm="
                f"{self.max_grad_norm}"
            )


def crf_loss(
    crf: MeanFieldCRF, image: torch.Tensor, logits: torch.Tensor, target: torch.Tensor
) -> torch.Tensor:
    """Mean cross-entropy of the CRF's Q against ``target`` (void ignored).

    Args:
        crf: the layer.
        image: ``(B, H, W, 3)`` uint8.
        logits: ``(B, C, H, W)`` network scores at the image's resolution.
        target: ``(B, H, W)`` int64 labels, void = 255.
    """
    return F.cross_entropy(crf.scores(image, logits), target, ignore_index=IGNORE_INDEX)


def network_samples(model: DeepLab, dataset: Dataset, *, pad_to: int | None = None) -> list[Sample]:
    """Run the (fixed) network once per image: ``(image (H, W, 3) uint8, log-probabilities
    (C, H, W), target (H, W))``, all on the network's device, for :func:`fit_crf`."""
    device = next(model.parameters()).device
    outputs = network_outputs(model, dataset, pad_to=pad_to)
    return [(image.to(device), probs.log(), target.to(device)) for image, probs, target in outputs]


def fit_crf(
    crf: MeanFieldCRF,
    samples: Sequence[Sample],
    config: LearnConfig | None = None,
    *,
    progress: bool = True,
) -> list[float]:
    """Recipe 2: fit the CRF's weights and compatibilities to ``samples``, the network fixed.

    Each step averages the loss over ``config.crf_batch`` samples (all of them when there are
    no more; otherwise a seeded draw) and takes one Adam step.

    Returns:
        The loss of every step (before that step's update).

    Raises:
        ValueError: for no samples or a bad configuration.
    """
    config = config or LearnConfig.for_mode()
    config.validate()
    if not samples:
        raise ValueError("fit_crf needs at least one (image, logits, target) sample")
    optimizer = torch.optim.Adam(crf.parameters(), lr=config.crf_lr)
    batch = min(config.crf_batch, len(samples))
    losses = []
    for step in tqdm(range(config.crf_steps), desc="fit CRF", disable=not progress):
        generator = torch.Generator().manual_seed(derived_seed(config.seed, step))
        chosen = torch.randperm(len(samples), generator=generator)[:batch].tolist()
        optimizer.zero_grad()
        terms = [
            crf_loss(crf, samples[i][0][None], samples[i][1][None], samples[i][2][None])
            for i in chosen
        ]
        loss = terms[0]
        for term in terms[1:]:  # summed in order, as sum() would
            loss = loss + term
        loss = loss / batch
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def fine_tune_jointly(
    model: DeepLab,
    crf: MeanFieldCRF,
    dataset: Dataset,
    config: LearnConfig | None = None,
    *,
    network_lr: float,
    progress: bool = True,
) -> list[float]:
    """Recipe 3: fine-tune ``model`` and ``crf`` together on ``dataset`` (training images).

    ``network_lr`` is the network's step size; the chapter passes the last rate of the
    network's own training schedule (``learning_rate(config, config.iterations - 1)``), so
    fine-tuning goes on where training stopped.

    Each step draws ``config.joint_batch`` images (seeded), flips each with probability 1/2,
    runs the network in training mode (dropout on) at the image's full size, upsamples its
    scores (:func:`~deeplab_edu.models.upsample_scores`), and takes the CRF's loss; the
    network gets SGD with momentum, the CRF Adam. Both are changed in place.

    Returns:
        The loss of every step.

    Raises:
        ValueError: for an empty data set or a bad configuration.
    """
    config = config or LearnConfig.for_mode()
    config.validate()
    if len(dataset) == 0:
        raise ValueError("fine_tune_jointly needs a non-empty training set")
    if not network_lr > 0:
        raise ValueError(f"network_lr must be > 0, got {network_lr}")
    device = next(model.parameters()).device
    network = torch.optim.SGD(model.parameters(), lr=network_lr, momentum=config.momentum)
    layer = torch.optim.Adam(crf.parameters(), lr=config.joint_crf_lr)
    normalise = EvalTransform(None)
    losses = []
    model.train()
    for step in tqdm(range(config.joint_steps), desc="fine-tune jointly", disable=not progress):
        generator = torch.Generator().manual_seed(derived_seed(config.seed, step))
        chosen = torch.randint(len(dataset), (config.joint_batch,), generator=generator)
        flips = torch.rand(config.joint_batch, generator=generator) < 0.5
        runtime.seed_everything(derived_seed(config.seed, step, 1))  # dropout
        network.zero_grad()
        layer.zero_grad()
        total = 0.0
        for index, flip in zip(chosen.tolist(), flips.tolist(), strict=True):
            image, target = dataset[index]  # (3, H, W) uint8, (H, W) int64
            if flip:
                image, target = image.flip(-1), target.flip(-1)
            x, _ = normalise(image, target)  # (3, H, W) normalised
            scores = model.predict(x[None].to(device))  # (1, C, H, W), upsampled
            rgb = to_hwc(image)[None].to(device)  # (1, H, W, 3)
            loss = crf_loss(crf, rgb, scores, target[None].to(device)) / config.joint_batch
            loss.backward()  # one image's graph at a time: memory of one, not of the batch
            total += loss.item()
        nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        network.step()
        layer.step()
        losses.append(total)
    model.eval()
    return losses
