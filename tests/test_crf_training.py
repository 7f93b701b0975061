"""The end-to-end CRF recipes: learning the CRF lowers its loss and is seeded, joint fine-tuning
moves the network and the CRF within the clipped step, evaluation runs a trained layer."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from deeplab_edu.crf import CRFParams, MeanFieldCRF
from deeplab_edu.crf_training import LearnConfig, crf_loss, fine_tune_jointly, fit_crf
from deeplab_edu.evaluate import EvalConfig, evaluate
from deeplab_edu.models import deeplab
from tests.test_crf_layer import scene

SMALL = dict(crf_steps=4, crf_batch=2, joint_steps=2, joint_batch=2)


def samples(count: int = 3):
    """(image (H, W, 3) uint8, scores (C, H, W), target (H, W)) on different scenes."""
    out = []
    for seed in range(count):
        image, logits, mask = scene(15, 18, seed=seed)
        out.append((image[0], logits[0], mask[0]))
    return out


def layer():
    return MeanFieldCRF(3, CRFParams(w1=5.0, theta_alpha=6.0, theta_beta=20.0, iterations=4))


def images(count: int = 2):
    """A data set of (uint8 image (3, H, W), int64 target (H, W)) with 21 VOC labels."""
    out = []
    for seed in range(count):
        image, _, mask = scene(17, 17, seed=seed)
        out.append((image[0].permute(2, 0, 1).contiguous(), mask[0]))
    return out


def test_fit_crf_lowers_the_loss_and_is_seeded():
    config = LearnConfig.fast(**SMALL)
    data = samples()
    first, second = layer(), layer()
    losses = fit_crf(first, data, config, progress=False)
    assert len(losses) == config.crf_steps and losses[-1] < losses[0]
    assert fit_crf(second, data, config, progress=False) == losses  # the same seeded batches
    torch.testing.assert_close(first.compatibility, second.compatibility)
    assert not torch.equal(first.compatibility, layer().compatibility)  # it learned something


def test_crf_loss_is_the_cross_entropy_of_q_with_void_ignored():
    crf, (image, logits, target) = layer(), samples(1)[0]
    target = target.clone()
    target[:3] = 255
    q = crf(image[None], logits[None])[0]
    keep = target != 255
    expected = -torch.log(q.permute(1, 2, 0)[keep].gather(1, target[keep][:, None])).mean()
    torch.testing.assert_close(crf_loss(crf, image[None], logits[None], target[None]), expected)


def test_joint_fine_tuning_moves_network_and_crf_within_the_clipped_step():
    torch.manual_seed(0)
    model = deeplab("DeepLab-LargeFOV", width=1 / 16, num_classes=21)
    before = [p.detach().clone() for p in model.parameters()]
    crf = MeanFieldCRF(21, CRFParams(theta_alpha=6.0, theta_beta=20.0, iterations=3))
    clip, rate = 1e-3, 0.1
    config = LearnConfig.fast(**SMALL, max_grad_norm=clip)
    losses = fine_tune_jointly(model, crf, images(), config, network_lr=rate, progress=False)
    assert len(losses) == config.joint_steps and all(loss > 0 for loss in losses)
    moved = torch.sqrt(
        sum(((p - b) ** 2).sum() for p, b in zip(model.parameters(), before, strict=True))
    )
    # two SGD steps with momentum 0.9 on gradients of norm <= clip: |move| <= rate clip (1 + 1.9)
    assert 0 < moved <= rate * clip * 2.9 * (1 + 1e-4)
    assert not torch.equal(crf.compatibility, 1 - torch.eye(21))
    assert not model.training  # left in eval mode, ready to evaluate


def test_bad_configurations_say_what_was_expected():
    with pytest.raises(ValueError, match="crf_steps"):
        fit_crf(layer(), samples(), LearnConfig.fast(crf_steps=0))
    with pytest.raises(ValueError, match="at least one"):
        fit_crf(layer(), [], LearnConfig.fast())
    model = deeplab("DeepLab-LargeFOV", width=1 / 16)
    with pytest.raises(ValueError, match="network_lr must be > 0"):
        fine_tune_jointly(model, layer(), images(), LearnConfig.fast(), network_lr=0.0)
    with pytest.raises(ValueError, match="non-empty"):
        fine_tune_jointly(model, layer(), [], LearnConfig.fast(), network_lr=0.1)
    with pytest.raises(ValueError, match="learning rates and max_grad_norm"):
        LearnConfig.fast(crf_lr=-1.0).validate()
    with pytest.raises(ValueError, match="max_grad_norm=0"):
        LearnConfig.fast(max_grad_norm=0).validate()


def test_evaluate_with_a_potts_layer_equals_evaluate_with_its_parameters():
    torch.manual_seed(0)
    model = deeplab("DeepLab-LargeFOV", width=1 / 16).eval()
    with torch.no_grad():  # decisive scores: no near-ties for float rounding to flip
        model.head.fc8.weight.mul_(3000.0)
    crf = MeanFieldCRF(21, CRFParams(w1=5.0, theta_alpha=6.0, theta_beta=20.0, iterations=4))
    config = EvalConfig.fast(crf=crf.params)
    plain = evaluate(model, images(), config, progress=False).summary
    with_layer = evaluate(model, images(), config, crf_layer=crf, progress=False).summary
    assert plain["miou"]["crf"] != plain["miou"]["dcnn"]  # the CRF changed labels
    assert with_layer["miou"] == pytest.approx(plain["miou"])
    assert with_layer["config"]["crf"] == dataclasses.asdict(crf.params)
    with torch.no_grad():
        crf.log_weights.add_(1.0)  # a trained layer records its current weights
    changed = evaluate(model, images(), config, crf_layer=crf, progress=False).summary
    assert changed["config"]["crf"]["w1"] == pytest.approx(5.0 * torch.e)
