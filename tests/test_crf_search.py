"""The coarse-to-fine CRF parameter search: grid, refinement, best point, resume, hold-out."""

from __future__ import annotations

import dataclasses
import itertools
import json

import pytest
import torch

import deeplab_edu.crf_search
from deeplab_edu.crf import CRFParams
from deeplab_edu.crf_search import SearchConfig, holdout, load_best, search, tuning_indices
from tests.test_evaluate import Oracle

TARGET = torch.zeros(16, 16, dtype=torch.int64)
TARGET[:, 8:] = 1  # right half is class 1; the stand-in network says 0 everywhere


OPTIMUM = {"at": (10.0, 60.0, 4.0)}


def quality(w1: float, theta_alpha: float, theta_beta: float) -> float:
    """How much of the right half the fake CRF fixes: best at OPTIMUM["at"]."""
    a, b, c = OPTIMUM["at"]
    return 1 / (1 + abs(w1 - a) + abs(theta_alpha - b) / 10 + abs(theta_beta - c))


@pytest.fixture
def fake_crf(monkeypatch):
    """A stand-in for dense_crf whose result improves as the parameters approach the optimum;
    it counts its calls and can be told to fail after some of them (an interruption)."""
    state = {"calls": 0, "fail_after": None}

    def dense_crf(image, probs, params):
        assert (params.w2, params.theta_gamma, params.iterations) == (3.0, 3.0, 10)
        assert params.normalization == "after" and image.shape == (16, 16, 3)
        if state["fail_after"] is not None and state["calls"] >= state["fail_after"]:
            raise KeyboardInterrupt
        state["calls"] += 1
        labels = torch.zeros(16, 16, dtype=torch.int64)
        fixed = round(quality(params.w1, params.theta_alpha, params.theta_beta) * 128)
        labels.view(-1)[torch.nonzero(TARGET.view(-1))[:fixed, 0]] = 1
        return torch.nn.functional.one_hot(labels, probs.shape[0]).permute(2, 0, 1).float()

    monkeypatch.setattr(deeplab_edu.crf_search, "dense_crf", dense_crf)
    monkeypatch.setitem(OPTIMUM, "at", (10.0, 60.0, 4.0))
    return state


def data(n: int = 1):
    return [(torch.full((3, 16, 16), 0, dtype=torch.uint8), TARGET)] * n


MODEL = Oracle([torch.zeros(16, 16, dtype=torch.int64)])
CONFIG = SearchConfig(
    w1=(5.0, 10.0), theta_alpha=(50.0, 80.0), theta_beta=(3.0, 6.0), num_images=1, pad_to=None
)


def points(trials, stage=None):
    return [
        (t["w1"], t["theta_alpha"], t["theta_beta"])
        for t in trials
        if stage is None or t["stage"] == stage
    ]


def test_coarse_grid_then_a_full_fine_grid_then_recentring(fake_crf):
    result = search(MODEL, data(), CONFIG, progress=False)
    assert len(points(result.trials, "coarse")) == 8
    # coarse best (10, 50, 3); the fine grid is every combination of each value and one half
    # coarse step (2.5, 15, 1.5) either side: 27 points, one of them already scored
    fine = points(result.trials, "fine")
    assert len(fine) == 26 and set(fine) | {(10, 50, 3)} == set(
        itertools.product((10, 7.5, 12.5), (50, 35, 65), (3, 1.5, 4.5))
    )
    # its best, (10, 65, 4.5), is on two edges: the grid moves there once and stops
    assert points(result.trials, "fine, recentred 1")
    assert (result.best.w1, result.best.theta_alpha, result.best.theta_beta) == (10, 65, 4.5)
    assert len(result.notes) == 1 and "theta_alpha=65 on the upper edge" in result.notes[0]
    assert fake_crf["calls"] == len(result.trials) == len(set(points(result.trials)))
    assert result.best_miou == max(t["miou"] for t in result.trials) > result.dcnn_miou
    assert (result.best.w2, result.best.theta_gamma, result.best.normalization) == (3, 3, "after")


def test_recentring_reaches_an_optimum_outside_the_starting_ranges(fake_crf):
    fake_crf_optimum = (4.0, 121.0, 5.0)  # the released LargeFOV values
    OPTIMUM["at"] = fake_crf_optimum
    config = dataclasses.replace(SearchConfig(num_images=1, pad_to=None), max_recentres=4)
    result = search(MODEL, data(), config, progress=False)
    assert max(config.theta_alpha) == 100 and result.best.theta_alpha == 120
    assert (result.best.w1, result.best.theta_beta) == (5, 5)
    assert len(result.notes) == 4 and all("recentred" in note for note in result.notes)
    short = search(MODEL, data(), dataclasses.replace(config, max_recentres=1), progress=False)
    assert short.best.theta_alpha == 110 and "still on the grid's edge" in short.notes[-1]


def test_an_interrupted_search_resumes_without_repeating_trials(fake_crf, tmp_path):
    state = tmp_path / "search.json"
    fake_crf["fail_after"] = 5
    with pytest.raises(KeyboardInterrupt):
        search(MODEL, data(), CONFIG, state_path=state, progress=False)
    assert len(json.loads(state.read_text())["trials"]) == 5
    fake_crf["fail_after"] = None
    resumed = search(MODEL, data(), CONFIG, state_path=state, progress=False)
    calls = fake_crf["calls"]
    assert calls == len(resumed.trials) > 8
    again = search(MODEL, data(), CONFIG, state_path=state, progress=False)
    assert fake_crf["calls"] == calls and again.best == resumed.best
    assert load_best(state) == (resumed.best, [0])
    with pytest.raises(ValueError, match="another configuration"):
        search(MODEL, data(), SearchConfig(num_images=1, pad_to=None), state_path=state)
    other = Oracle([torch.zeros(16, 16, dtype=torch.int64)])
    with torch.no_grad():
        other.anchor.fill_(1.0)  # other weights: its trials must not be mixed with MODEL's
    with pytest.raises(ValueError, match="another network's search"):
        search(other, data(), CONFIG, state_path=state, progress=False)
    assert fake_crf["calls"] == calls


def test_the_tuning_images_are_a_seeded_random_subset(fake_crf):
    result = search(MODEL, data(10), dataclasses.replace(CONFIG, num_images=4), progress=False)
    assert result.images == tuning_indices(10, 4, seed=0) != [0, 1, 2, 3]
    other = tuning_indices(10, 4, seed=1)
    assert other != result.images and tuning_indices(10, 4, seed=1) == other


def test_defaults_are_the_papers_ranges():
    config = SearchConfig()
    assert config.w1 == (5, 10) and config.theta_alpha == tuple(range(50, 101, 10))
    assert config.theta_beta == tuple(range(3, 11)) and config.num_images == 100
    assert (config.base.w2, config.base.theta_gamma, config.base.iterations) == (3, 3, 10)
    assert config.base.normalization == "after"  # the authors' dense-CRF code
    assert config.params(5.0, 50.0, 3.0) == CRFParams(w1=5.0, theta_alpha=50.0, theta_beta=3.0)
    fast = SearchConfig.fast()
    assert fast.theta_alpha[0] == config.theta_alpha[0] / 4
    assert fast.theta_alpha[-1] == config.theta_alpha[-1] / 4
    with pytest.raises(ValueError, match="theta_beta needs at least one positive value"):
        SearchConfig(theta_beta=()).validate()


def test_holdout_splits_without_overlap():
    tune, test = holdout(list(range(10)), 4)
    assert list(tune) == tuning_indices(10, 4) and len(test) == 6
    assert sorted([*tune, *test]) == list(range(10)) and list(test) == sorted(test)
    with pytest.raises(ValueError, match="between 1 and 9"):
        holdout(list(range(10)), 10)
