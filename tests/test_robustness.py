"""Bad input, hostile files and interrupted work: every case gets a clear error or is handled,
never a silent wrong result, a crash deep in a library or lost work. One test per probe of the
robustness review (each failed before its fix)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import deeplab_edu.data.toy as toy
from deeplab_edu.checkpoint import load_checkpoint, read_metrics, save_checkpoint
from deeplab_edu.cli import main
from deeplab_edu.crf import dense_crf, simulate_unaries
from deeplab_edu.crf_search import SearchConfig
from deeplab_edu.data.toy import make_toy_voc
from deeplab_edu.data.voc import VOCSegmentation, read_mask, write_mask
from deeplab_edu.models import deeplab
from deeplab_edu.train import TrainConfig, train

TINY = dict(width=0.0625, crop=33, batch_size=2, iterations=2, checkpoint_every=1)


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory) -> Path:
    return make_toy_voc(tmp_path_factory.mktemp("toy") / "set", 4, 2, 40, 0)


@pytest.fixture(scope="module")
def scene():
    image = torch.randint(0, 255, (20, 24, 3), dtype=torch.uint8)
    mask = torch.zeros(20, 24, dtype=torch.int64)
    mask[5:15, 5:15] = 1
    return image, simulate_unaries(mask, num_classes=2, stride=4)


# -- silent wrong results ------------------------------------------------------------------------


@pytest.mark.parametrize("change", [{"w1": float("inf")}, {"w2": float("inf")},
                                    {"theta_beta": float("nan")}])  # fmt: skip
def test_non_finite_crf_parameters_are_refused(scene, change):
    with pytest.raises(ValueError, match="finite"):
        dense_crf(*scene, **change)
    with pytest.raises(ValueError, match="finite"):
        SearchConfig(w1=(5.0, float("inf"))).validate()


def test_a_diverging_run_saves_nothing_and_names_the_iteration(toy_dir, tmp_path):
    with pytest.raises(ValueError, match="lr must be finite"):
        TrainConfig.fast(**TINY, lr=float("inf")).validate()
    config = TrainConfig.fast(**{**TINY, "iterations": 6}, lr=1e30, dataset=str(toy_dir))
    with pytest.raises(FloatingPointError, match=r"at iteration (\d+)") as caught:
        train(config, tmp_path / "run", progress=False)
    diverged = int(re.search(r"at iteration (\d+)", str(caught.value)).group(1))
    saved = tmp_path / "run" / "checkpoint.pt"
    if saved.exists():  # only iterations before the divergence, every weight finite
        state = load_checkpoint(saved)
        assert state["iteration"] < diverged
        assert all(torch.isfinite(w).all() for w in state["model"].values())


def test_a_damaged_checkpoint_is_refused(tmp_path):
    weights = torch.arange(1000.0)
    path = save_checkpoint({"model": {"w": weights}, "iteration": 1}, tmp_path / "c.pt")
    data = bytearray(path.read_bytes())
    data[data.find(weights[500:501].numpy().tobytes())] ^= 1  # one flipped bit in a weight
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="damaged"):
        load_checkpoint(path)


# -- crashes and unbounded resources -------------------------------------------------------------


def test_the_lattice_refuses_bandwidths_too_small_for_its_coordinates(scene):
    for change in ({"theta_alpha": 1e-7}, {"theta_gamma": 1e-7}):
        with pytest.raises(ValueError, match="too wide a range.*larger bandwidths"):
            dense_crf(*scene, **change)


def test_make_toy_data_fills_in_the_sizes_not_given(tmp_path, capsys):
    out = tmp_path / "set"
    assert main(["make-toy-data", "--out", str(out), "--n-train", "2", "--n-val", "1"]) == 0
    assert len(VOCSegmentation(out, "train")) == 2 and len(VOCSegmentation(out, "val")) == 1
    assert VOCSegmentation(out, "val")[0][0].shape[-1] == toy.ToyConfig().size


def test_an_interrupted_generation_leaves_nothing_behind(tmp_path, monkeypatch):
    stale = tmp_path / ".set.tmp-999999999"  # from a process that no longer exists
    stale.mkdir()
    real, calls = toy.render_scene, []

    def interrupted(rng, size):
        calls.append(1)
        if len(calls) > 2:
            raise KeyboardInterrupt
        return real(rng, size)

    monkeypatch.setattr(toy, "render_scene", interrupted)
    with pytest.raises(KeyboardInterrupt):
        make_toy_voc(tmp_path / "set", 4, 2, 40, 0)
    assert list(tmp_path.iterdir()) == []  # no half-written set, no temporary, no stale one
    with pytest.raises(FileExistsError, match="not only a generated teaching set"):
        (tmp_path / "mine").mkdir()
        (tmp_path / "mine" / "notes.txt").write_text("keep me")
        make_toy_voc(tmp_path / "mine", 1, 1, 40, 0)


# -- the command line: one line for every foreseeable failure ------------------------------------


def test_foreseeable_failures_are_one_line(toy_dir, tmp_path, capsys, monkeypatch):
    tiny = ["--fast", "--width", "0.0625", "--crop", "33", "--batch-size", "2", "--no-progress"]
    run = tmp_path / "run"
    assert main(["train", *tiny, "--dataset", str(toy_dir), "--iterations", "1",
                 "--out", str(run)]) == 0  # fmt: skip
    capsys.readouterr()
    checkpoint = run / "checkpoint.pt"
    other = tmp_path / "other.pt"  # another network's weights under this configuration
    state = load_checkpoint(checkpoint)
    state["model"] = deeplab("DeepLab", width=0.0625).state_dict()
    save_checkpoint({k: v for k, v in state.items() if k not in ("format", "sha256")}, other)
    bare = save_checkpoint({"weights": torch.zeros(1)}, tmp_path / "bare.pt")
    search_state = tmp_path / "search.json"
    search_state.write_text("{ torn")
    cases = [
        (["evaluate", "--checkpoint", str(other), "--out", str(tmp_path / "r.json")], "fit"),
        (["evaluate", "--checkpoint", str(bare), "--out", str(tmp_path / "r.json")], "config"),
        (["crf-search", "--checkpoint", str(checkpoint), "--out", str(search_state),
          "--num-images", "1"], "not a CRF search state"),
        (["train", *tiny, "--dataset", str(toy_dir), "--seed", "-1", "--out", str(tmp_path / "s")],
         "seed must be a non-negative"),
        (["evaluate", "--checkpoint", str(checkpoint), "--max-images", "0",
          "--out", str(tmp_path / "r.json")], "max_images"),
        (["train", *tiny, "--lr", "inf", "--dataset", str(toy_dir), "--out", str(tmp_path / "t")],
         "lr must be finite"),
    ]  # fmt: skip
    for argv, message in cases:
        assert main(argv) == 2, argv
        error = capsys.readouterr().err
        assert message in error and "Traceback" not in error, (argv, error)
    monkeypatch.setenv("DEEPLAB_EDU_DATA", str(bare))  # a data root that is a file
    assert main(["make-toy-data"]) == 2
    assert "Traceback" not in capsys.readouterr().err


# -- unclear errors made clear -------------------------------------------------------------------


def test_a_torn_last_log_line_does_not_block_resume(toy_dir, tmp_path):
    config = TrainConfig.fast(**TINY, dataset=str(toy_dir))
    train(config, tmp_path, progress=False)
    with open(tmp_path / "metrics.jsonl", "a") as log:
        log.write('{"iteration": 3, "lo')  # a crash in the middle of a line
    assert [r["iteration"] for r in read_metrics(tmp_path)] == [1, 2]
    # settings that do not change the result may differ on resume
    longer = TrainConfig.fast(**{**TINY, "iterations": 2, "checkpoint_every": 5, "num_workers": 0},
                              dataset=str(toy_dir))  # fmt: skip
    train(longer, tmp_path, resume=True, progress=False)
    with pytest.raises(ValueError, match="another configuration.*'lr'"):
        train(TrainConfig.fast(**TINY, dataset=str(toy_dir), lr=0.5), tmp_path, resume=True)


def test_shapes_dtypes_and_class_counts_are_checked(scene):
    image, probs = scene
    with pytest.raises(ValueError, match=r"probs are a batch .* image is not a batch"):
        dense_crf(image, probs[None])
    assert dense_crf(image, probs.to(torch.bfloat16)).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="num_classes must be an int"):
        deeplab("DeepLab", num_classes=2.5, width=0.0625)


def test_hostile_list_files_and_masks(tmp_path, toy_dir, monkeypatch):
    lists = toy_dir / "ImageSets" / "Segmentation"
    ids = (lists / "val.txt").read_text().split()
    (lists / "bom.txt").write_text("\ufeff" + "\n".join(ids) + "\n", encoding="utf-8")
    assert VOCSegmentation(toy_dir, "bom").ids == ids
    for name, line in (("two", f"{ids[0]} 1"), ("up", "../../etc/passwd")):
        (lists / f"{name}.txt").write_text(line + "\n")
        with pytest.raises(ValueError, match="expected one image id"):
            VOCSegmentation(toy_dir, name)
    mask = tmp_path / "big.png"
    write_mask(mask, np.zeros((40, 40), dtype=np.uint8))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 1600 pixels > 2x the limit
    with pytest.raises(ValueError, match="not a readable PNG mask"):
        read_mask(mask)
