"""Bad input, hostile files and interrupted work: every case gets a clear error or is handled,
never a silent wrong result, a crash deep in a library or lost work. One test per probe of the
robustness review (each failed before its fix)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import deeplab_edu.data.toy as toy
from deeplab_edu.checkpoint import (
    FORMAT_VERSION,
    contents_digest,
    load_checkpoint,
    read_metrics,
    save_checkpoint,
)
from deeplab_edu.cli import main
from deeplab_edu.crf import dense_crf, simulate_unaries
from deeplab_edu.crf.rnn import MeanFieldCRF
from deeplab_edu.crf_search import SearchConfig
from deeplab_edu.data.toy import make_toy_voc
from deeplab_edu.data.voc import IGNORE_INDEX, VOCSegmentation, read_mask, write_mask
from deeplab_edu.metrics import trimap_band
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


@pytest.mark.parametrize(
    "change", [{"w1": float("inf")}, {"w2": float("inf")}, {"theta_beta": float("nan")}]
)
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


def test_a_plain_deeplab_checkpoint_from_before_the_2x2_poolings_is_refused(tmp_path):
    # format 2 files of the plain DeepLab hold weights learnt with 3x3 poolings: same shapes,
    # other network; format 2 files of every other variant still load
    for variant, refused in [("DeepLab", True), ("DeepLab-LargeFOV", False)]:
        contents = {"config": {"variant": variant}, "model": {"w": torch.zeros(2)}}
        path = tmp_path / f"{variant}.pt"
        torch.save({"format": 2, "sha256": contents_digest(contents), **contents}, path)
        if refused:
            with pytest.raises(ValueError, match="before it had the released 2x2 poolings"):
                load_checkpoint(path)
        else:
            assert load_checkpoint(path)["format"] == 2
    new = save_checkpoint({"config": {"variant": "DeepLab"}}, tmp_path / "new.pt")
    assert load_checkpoint(new)["format"] == FORMAT_VERSION


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
    assert (
        main(["train", *tiny, "--dataset", str(toy_dir), "--iterations", "1", "--out", str(run)])
        == 0
    )
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
        (
            [
                "crf-search",
                "--checkpoint",
                str(checkpoint),
                "--out",
                str(search_state),
                "--num-images",
                "1",
            ],
            "not a CRF search state",
        ),
        (
            [
                "train",
                *tiny,
                "--dataset",
                str(toy_dir),
                "--seed",
                "-1",
                "--out",
                str(tmp_path / "s"),
            ],
            "seed must be an int in [0, ",
        ),
        (
            [
                "evaluate",
                "--checkpoint",
                str(checkpoint),
                "--max-images",
                "0",
                "--out",
                str(tmp_path / "r.json"),
            ],
            "max_images",
        ),
        (
            [
                "train",
                *tiny,
                "--lr",
                "inf",
                "--dataset",
                str(toy_dir),
                "--out",
                str(tmp_path / "t"),
            ],
            "lr must be finite",
        ),
        # out-of-range numbers: typed ranges, not crashes inside torch or numpy
        (
            [
                "train",
                *tiny,
                "--num-workers",
                "-1",
                "--dataset",
                str(toy_dir),
                "--out",
                str(tmp_path / "u"),
            ],
            "num_workers must be an int in [0, 64], got -1",
        ),
        (
            [
                "train",
                *tiny,
                "--seed",
                str(2**70),
                "--dataset",
                str(toy_dir),
                "--out",
                str(tmp_path / "u"),
            ],
            "seed must be an int in [0, 9223372036854775807]",
        ),
        (
            [
                "train",
                *tiny,
                "--crop",
                str(10**9),
                "--dataset",
                str(toy_dir),
                "--out",
                str(tmp_path / "u"),
            ],
            "crop must be an int in [9, 2049]",
        ),
        (
            [
                "train",
                *tiny,
                "--batch-size",
                str(10**6),
                "--dataset",
                str(toy_dir),
                "--out",
                str(tmp_path / "u"),
            ],
            "batch_size must be an int in [1, 1024]",
        ),
        (
            [
                "crf-search",
                "--checkpoint",
                str(checkpoint),
                "--seed",
                "-1",
                "--out",
                str(tmp_path / "s2.json"),
            ],
            "seed must be an int in [0, ",
        ),
        (
            ["make-toy-data", "--out", str(tmp_path / "big"), "--size", str(10**9)],
            "size must be an int in [32, 4096]",
        ),
    ]
    # every JSON field the command line reads is checked, naming the file and the field
    for number, (content, message) in enumerate(
        (
            ({"best": 5}, "entry 'best': expected a mapping of CRFParams"),
            ({"best": {"w1": "x"}}, "entry 'best': field 'w1' must be a number"),
            ({"best": {"bogus": 1}}, "entry 'best': unknown CRFParams fields ['bogus']"),
            ({"best": {}, "images": "abc"}, "entry 'images': expected a list"),
        )
    ):
        best = tmp_path / f"best{number}.json"
        best.write_text(json.dumps(content))
        argv = [
            "evaluate",
            "--checkpoint",
            str(checkpoint),
            "--crf-from",
            str(best),
            "--out",
            str(tmp_path / "r.json"),
        ]
        cases.append((argv, f"{best}, {message}"))
    for field, value, kind in (
        ("width", "wide", "a number"),
        ("iterations", "x", "an int"),
        ("dataset", 5, "a string"),
        ("scale", [1], "a list of 2 numbers"),
    ):
        edited = {k: v for k, v in state.items() if k not in ("format", "sha256")}
        edited["config"] = {**state["config"], field: value}
        path = save_checkpoint(edited, tmp_path / f"edited-{field}.pt")
        cases.append(
            (
                ["evaluate", "--checkpoint", str(path), "--out", str(tmp_path / "r.json")],
                f"{path}, its training configuration: field {field!r} must be {kind}",
            )
        )
    # an error met in a DataLoader worker is the same one line as with 0 workers
    broken = tmp_path / "broken"
    shutil.copytree(toy_dir, broken)
    sorted((broken / "JPEGImages").iterdir())[0].write_bytes(b"not a JPEG")
    for workers in ("0", "2"):
        cases.append(
            (
                [
                    "train",
                    *tiny,
                    "--dataset",
                    str(broken),
                    "--num-workers",
                    workers,
                    "--iterations",
                    "2",
                    "--out",
                    str(tmp_path / f"w{workers}"),
                ],
                "toy_train_00000.jpg: not a readable image",
            )
        )
    for argv, message in cases:
        assert main(argv) == 2, argv
        error = capsys.readouterr().err
        assert message in error and "Traceback" not in error, (argv, error)
        assert len(error.strip().splitlines()) == 1, error
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
    longer = TrainConfig.fast(
        **{**TINY, "iterations": 2, "checkpoint_every": 5, "num_workers": 0}, dataset=str(toy_dir)
    )
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


def test_the_crf_layer_in_every_float_dtype_and_an_empty_batch():
    torch.manual_seed(0)
    image = torch.randint(0, 255, (1, 12, 10, 3), dtype=torch.uint8)
    logits = torch.randn(1, 4, 12, 10)
    for method in ("permutohedral", "naive"):
        crf = MeanFieldCRF(4, method=method)
        reference = crf(image, logits)
        for dtype, tolerance in (
            (torch.float64, 1e-4),
            (torch.float16, 0.05),
            (torch.bfloat16, 0.05),
        ):
            q = crf(image, logits.to(dtype))  # half precisions: computed in float32
            assert q.dtype == dtype, (method, dtype)
            assert (q.float() - reference).abs().max() < tolerance, (method, dtype)
        q = crf(image, logits.double().requires_grad_())
        q.sum().backward()  # float64 gradients through both paths
        empty = crf(image[:0], logits[:0])
        assert empty.shape == (0, 4, 12, 10)
    assert dense_crf(image[:0], torch.softmax(logits, 1)[:0]).shape == (0, 4, 12, 10)


def test_bfloat16_softmax_of_21_classes_counts_as_probabilities():
    torch.manual_seed(0)
    probs = torch.softmax(3 * torch.randn(21, 16, 16), dim=0).to(torch.bfloat16)
    image = torch.randint(0, 255, (16, 16, 3), dtype=torch.uint8)
    assert dense_crf(image, probs).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="must sum to 1"):  # scores are still refused
        dense_crf(image, (3 * torch.randn(21, 16, 16)).abs().to(torch.bfloat16))


def test_any_trimap_width_is_the_band_it_names():
    target = torch.randint(0, 3, (2, 7, 9))
    target[0, 3, 4] = IGNORE_INDEX
    target[1, 6, 0] = IGNORE_INDEX
    ys, xs = torch.meshgrid(torch.arange(7), torch.arange(9), indexing="ij")
    for width in (0, 2, 7, 8, 9, 10**12):  # up to widths a pooling window would overflow at
        expected = torch.zeros(2, 7, 9, dtype=torch.bool)
        for b, y, x in (target == IGNORE_INDEX).nonzero().tolist():
            expected[b] |= torch.maximum((ys - y).abs(), (xs - x).abs()) <= width
        assert torch.equal(trimap_band(target, width), expected), width


# -- leftovers of killed processes -----------------------------------------------------------------


def test_a_killed_writers_temporary_is_removed_by_the_next_writer(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a process ID that no longer exists
    checkpoint = tmp_path / "checkpoint.pt"
    left = checkpoint.with_name(f".checkpoint.pt.tmp-{dead.pid}")
    left.write_bytes(b"half of a checkpoint")  # killed while saving
    live = checkpoint.with_name(f".checkpoint.pt.tmp-{os.getppid()}")
    live.write_bytes(b"a live process is writing this")
    other = tmp_path / f".other.pt.tmp-{dead.pid}"
    other.write_bytes(b"another file's")
    save_checkpoint({"iteration": 1}, checkpoint)
    assert not left.exists()  # the dead writer's is gone; a live one's and other files' stay
    assert live.exists() and other.exists() and load_checkpoint(checkpoint)["iteration"] == 1
    # a training run sweeps its folder when it starts, before its first checkpoint
    run = tmp_path / "run"
    run.mkdir()
    stale = run / f".checkpoint.pt.tmp-{dead.pid}"
    stale.write_bytes(b"x")
    with pytest.raises(FileExistsError):  # (refused for another reason, after the sweep)
        (run / "config.json").write_text("{}")
        train(TrainConfig.fast(**TINY), run, progress=False)
    assert not stale.exists()
