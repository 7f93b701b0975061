"""The coarse-to-fine CRF parameter search: grid, refinement, best point, resume, hold-out."""

from __future__ import annotations

import json

import pytest
import torch

import deeplab_edu.crf
from deeplab_edu.crf_search import SearchConfig, holdout, search
from tests.test_evaluate import Oracle

TARGET = torch.zeros(16, 16, dtype=torch.int64)
TARGET[:, 8:] = 1  # right half is class 1; the stand-in network says 0 everywhere


def quality(w1: float, theta_alpha: float, theta_beta: float) -> float:
    """How much of the right half the fake CRF fixes: best at (10, 60, 4)."""
    return 1 / (1 + abs(w1 - 10) + abs(theta_alpha - 60) / 10 + abs(theta_beta - 4))


@pytest.fixture
def fake_crf(monkeypatch):
    """A stand-in for dense_crf whose result improves as the parameters approach (10, 60, 4);
    it counts its calls and can be told to fail after some of them (an interruption)."""
    state = {"calls": 0, "fail_after": None}

    def dense_crf(image, probs, *, w1, theta_alpha, theta_beta, w2, theta_gamma, iterations):
        assert (w2, theta_gamma, iterations) == (3.0, 3.0, 10) and image.shape == (16, 16, 3)
        if state["fail_after"] is not None and state["calls"] >= state["fail_after"]:
            raise KeyboardInterrupt
        state["calls"] += 1
        labels = torch.zeros(16, 16, dtype=torch.int64)
        fixed = round(quality(w1, theta_alpha, theta_beta) * 128)
        labels.view(-1)[torch.nonzero(TARGET.view(-1))[:fixed, 0]] = 1
        return torch.nn.functional.one_hot(labels, probs.shape[0]).permute(2, 0, 1).float()

    monkeypatch.setattr(deeplab_edu.crf, "dense_crf", dense_crf)
    return state


def data():
    return [(torch.full((3, 16, 16), 0, dtype=torch.uint8), TARGET)]


CONFIG = SearchConfig(w1=(5.0, 10.0), theta_alpha=(50.0, 80.0), theta_beta=(3.0, 6.0),
                      num_images=1, pad_to=None)  # fmt: skip


def test_coarse_grid_then_refinement_finds_the_better_point(fake_crf):
    result = search(Oracle([torch.zeros(16, 16, dtype=torch.int64)]), data(), CONFIG,
                    progress=False)  # fmt: skip
    coarse = [t for t in result.trials if t["stage"] == "coarse"]
    fine = [(t["w1"], t["theta_alpha"], t["theta_beta"]) for t in result.trials[8:]]
    assert len(coarse) == 8 and fake_crf["calls"] == 14
    # coarse best (10, 50, 3); half steps 2.5, 15, 1.5 along each axis in turn
    assert fine == [(7.5, 50, 3), (12.5, 50, 3), (10, 35, 3), (10, 65, 3), (10, 50, 1.5),
                    (10, 50, 4.5)]  # fmt: skip
    assert (result.best.w1, result.best.theta_alpha, result.best.theta_beta) == (10, 65, 3)
    assert result.best_miou == max(t["miou"] for t in result.trials) > result.dcnn_miou
    assert (result.best.w2, result.best.theta_gamma) == (3.0, 3.0)


def test_an_interrupted_search_resumes_without_repeating_trials(fake_crf, tmp_path):
    model = Oracle([torch.zeros(16, 16, dtype=torch.int64)])
    state = tmp_path / "search.json"
    fake_crf["fail_after"] = 5
    with pytest.raises(KeyboardInterrupt):
        search(model, data(), CONFIG, state_path=state, progress=False)
    assert len(json.loads(state.read_text())["trials"]) == 5
    fake_crf["fail_after"] = None
    resumed = search(model, data(), CONFIG, state_path=state, progress=False)
    assert fake_crf["calls"] == 14 and len(resumed.trials) == 14
    again = search(model, data(), CONFIG, state_path=state, progress=False)
    assert fake_crf["calls"] == 14 and again.best == resumed.best
    with pytest.raises(ValueError, match="another configuration"):
        search(model, data(), SearchConfig(num_images=1, pad_to=None), state_path=state)


def test_defaults_are_the_papers_ranges():
    config = SearchConfig()
    assert config.w1 == (5, 10) and config.theta_alpha == tuple(range(50, 101, 10))
    assert config.theta_beta == tuple(range(3, 11)) and config.num_images == 100
    assert (config.w2, config.theta_gamma, config.iterations) == (3, 3, 10)
    fast = SearchConfig.fast()
    assert fast.theta_alpha[0] == config.theta_alpha[0] / 4
    assert fast.theta_alpha[-1] == config.theta_alpha[-1] / 4
    with pytest.raises(ValueError, match="theta_beta needs at least one positive value"):
        SearchConfig(theta_beta=()).validate()


def test_holdout_splits_without_overlap():
    tune, test = holdout(list(range(10)), 4)
    assert list(tune) == [0, 1, 2, 3] and list(test) == [4, 5, 6, 7, 8, 9]
    with pytest.raises(ValueError, match="between 1 and 9"):
        holdout(list(range(10)), 10)
