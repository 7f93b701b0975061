"""The fast-mode networks shipped with the package are what their recorded configuration trains.

Fast tier: the shipped files match the code's configuration (a changed hyper-parameter fails
here, naming the command that refreshes them), their SHA-256, and load into the right network.
Slow tier: each is re-trained from scratch and must land within ``runs.MIOU_TOLERANCE`` of its
shipped val mean IoU (what two thread counts, CPUs or a GPU change is measured beside it).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import nbformat
import pytest
import torch

from deeplab_edu import runs
from deeplab_edu.checkpoint import load_checkpoint, read_metrics, save_checkpoint
from deeplab_edu.data.toy import ensure_toy_voc
from deeplab_edu.fetch import file_digest
from deeplab_edu.train import TrainConfig, train
from tests.conftest import REPO


@pytest.fixture
def data_root(monkeypatch, tmp_path: Path) -> Path:
    """An empty data root holding only the teaching set (made once, in the default root)."""
    toy = ensure_toy_voc()
    (tmp_path / "toy-voc").symlink_to(toy, target_is_directory=True)
    monkeypatch.setenv("DEEPLAB_EDU_DATA", str(tmp_path))
    return tmp_path


@pytest.mark.parametrize("variant", runs.SHARED_VARIANTS)
def test_shipped_run_is_current(variant: str) -> None:
    message = runs.shipped_mismatch(TrainConfig.fast(variant=variant))
    assert message is None, message
    info = runs.shipped_info(variant)
    assert file_digest(runs.SHIPPED_DIR / info["checkpoint"], "sha256") == info["sha256"]
    state = load_checkpoint(runs.SHIPPED_DIR / info["checkpoint"])
    assert state["config"] == info["config"] and state["iteration"] == info["config"]["iterations"]


def test_a_changed_hyper_parameter_asks_for_a_refresh() -> None:
    changed = dataclasses.replace(TrainConfig.fast(), lr=0.02)
    message = runs.shipped_mismatch(changed)
    assert message is not None and "'lr': (0.02, 0.01)" in message
    assert "python -m deeplab_edu.runs --refresh" in message and "make model" in message


def test_cached_run_installs_the_shipped_network(monkeypatch, data_root: Path) -> None:
    config = TrainConfig.fast()

    def no_training(*args, **kwargs):
        raise AssertionError("cached_run trained a network that ships with the package")

    monkeypatch.setattr(runs, "train", no_training)
    model, folder = runs.cached_run(config, progress=False)
    assert runs.is_complete(config) and json.loads((folder / "config.json").read_text()) == (
        config.to_dict()
    )
    shipped = load_checkpoint(runs.SHIPPED_DIR / runs.shipped_info(config.variant)["checkpoint"])
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor.cpu(), shipped["model"][name]), name
    assert len((folder / "metrics.jsonl").read_text().splitlines()) == config.iterations
    # another configuration is not shipped: it is trained (here: refused by the stub)
    with pytest.raises(AssertionError, match="trained a network"):
        runs.cached_run(dataclasses.replace(config, iterations=3), progress=False)


def test_a_weights_only_checkpoint_resumes_only_when_finished(data_root: Path) -> None:
    config = TrainConfig.fast()
    folder = data_root / "run"
    folder.mkdir()
    assert runs.install_shipped(config, folder)
    model = train(config, folder, resume=True, progress=False)  # finished: nothing to train
    assert len(read_metrics(folder)) == config.iterations
    state = load_checkpoint(folder / "checkpoint.pt")
    assert "optimizer" not in state
    assert all(torch.equal(v, state["model"][k]) for k, v in model.cpu().state_dict().items())
    longer = dataclasses.replace(config, iterations=config.iterations + 1)
    state["config"] = longer.to_dict()
    save_checkpoint(
        {k: v for k, v in state.items() if k not in ("format", "sha256")}, folder / "checkpoint.pt"
    )
    with pytest.raises(ValueError, match="weights only .* cannot be resumed"):
        train(longer, folder, resume=True, progress=False)


def test_a_damaged_shipped_file_is_refused(monkeypatch, tmp_path: Path, data_root: Path) -> None:
    shipped = tmp_path / "trained"
    shipped.mkdir()
    for path in runs.SHIPPED_DIR.iterdir():
        (shipped / path.name).write_bytes(path.read_bytes())
    info = runs.shipped_info(runs.SHARED_VARIANTS[0])
    data = bytearray((shipped / info["checkpoint"]).read_bytes())
    data[-100] ^= 1
    (shipped / info["checkpoint"]).write_bytes(bytes(data))
    monkeypatch.setattr(runs, "SHIPPED_DIR", shipped)
    with pytest.raises(ValueError, match="does not match its SHA-256.*reinstall"):
        runs.cached_run(TrainConfig.fast(), progress=False)


# The training chapter re-trains LargeFOV from scratch and compares it with the shipped network
# in a checked cell (`make test` executes it once); this test re-trains the others, so that each
# shipped network is re-trained once per test run.
RETRAINED_BY_THE_TRAINING_CHAPTER = "DeepLab-LargeFOV"


def test_the_training_chapter_retrains_largefov_and_checks_it() -> None:
    cells = nbformat.read(REPO / "book" / "training.ipynb", as_version=4).cells
    checks = [
        c for c in cells if "# NBVAL_CHECK_OUTPUT" in c.source and "MIOU_TOLERANCE" in c.source
    ]
    assert len(checks) == 1 and "of the shipped network: True" in checks[0].outputs[0]["text"]
    assert any("model = train(config, folder" in c.source for c in cells)
    assert TrainConfig.fast().variant == RETRAINED_BY_THE_TRAINING_CHAPTER


@pytest.mark.slow
@pytest.mark.parametrize(
    "variant", [v for v in runs.SHARED_VARIANTS if v != RETRAINED_BY_THE_TRAINING_CHAPTER]
)
def test_shipped_network_is_what_its_configuration_trains(variant: str, tmp_path: Path) -> None:
    config = TrainConfig.fast(variant=variant)
    info = runs.shipped_info(variant)
    model, miou = runs.train_fresh(config, tmp_path / "run")
    shipped, shipped_config = runs.load_trained(runs.SHIPPED_DIR / info["checkpoint"])
    assert shipped_config == config
    assert {k: v.shape for k, v in model.state_dict().items()} == {
        k: v.shape for k, v in shipped.state_dict().items()
    }
    assert abs(miou - info["val_miou"]) <= runs.MIOU_TOLERANCE, (
        f"{variant} re-trained: val mean IoU {100 * miou:.2f}%, shipped "
        f"{100 * info['val_miou']:.2f}% (tolerance {100 * runs.MIOU_TOLERANCE:.1f} points); if "
        f"training changed on purpose, refresh the shipped files: {runs.REFRESH}"
    )


def test_a_checkpoint_with_non_finite_weights_is_refused(tmp_path: Path) -> None:
    state = load_checkpoint(
        runs.SHIPPED_DIR / runs.shipped_info(runs.SHARED_VARIANTS[0])["checkpoint"]
    )
    state = {k: v for k, v in state.items() if k not in ("format", "sha256")}
    fc8 = state["model"]["head.fc8.weight"]  # (the shipped file's "fc8.weight", renamed)
    state["model"]["head.fc8.weight"] = torch.full_like(fc8, float("nan"))
    save_checkpoint(state, tmp_path / "diverged.pt")
    with pytest.raises(ValueError, match=r"\['head.fc8.weight'\] hold NaN or infinite values"):
        runs.load_trained(tmp_path / "diverged.pt")
