"""``python -m deeplab_edu``: every command runs at tiny sizes and rejects mistakes clearly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from deeplab_edu.checkpoint import load_checkpoint
from deeplab_edu.cli import main
from deeplab_edu.data.toy import make_toy_voc
from deeplab_edu.models import VARIANTS

REPO = Path(__file__).resolve().parents[1]
TINY = ["--fast", "--width", "0.0625", "--crop", "33", "--batch-size", "2", "--no-progress"]


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory) -> Path:
    return make_toy_voc(tmp_path_factory.mktemp("toy"), n_train=4, n_val=3, size=40, seed=0)


@pytest.fixture(scope="module")
def run(toy_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run")
    args = ["train", *TINY, "--dataset", str(toy_dir), "--iterations", "2", "--out", str(out)]
    assert main(args) == 0
    return out


@pytest.mark.parametrize(
    "command", ["download", "make-toy-data", "train", "evaluate", "crf-search"]
)
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "usage: python -m deeplab_edu " + command in text
    if command == "train":  # defaults of both modes come from TrainConfig
        assert "paper: 6000; --fast:" in text and "paper: 0.001" in text


def test_module_entry_point_runs():
    result = subprocess.run(
        [sys.executable, "-m", "deeplab_edu", "--help"], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0 and "crf-search" in result.stdout


def test_unknown_variant_and_command_are_rejected(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--variant", "DeepLab-Huge", "--out", str(tmp_path)])
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    assert "invalid choice: 'DeepLab-Huge'" in error and all(v in error for v in VARIANTS)
    with pytest.raises(SystemExit):
        main(["fit"])
    assert "invalid choice: 'fit'" in capsys.readouterr().err


def test_make_toy_data(tmp_path, capsys):
    out = tmp_path / "toy"
    assert (
        main(["make-toy-data", "--out", str(out), "--n-train", "2", "--n-val", "1", "--size", "32"])
        == 0
    )
    assert len((out / "ImageSets" / "Segmentation" / "train.txt").read_text().split()) == 2
    assert main(["make-toy-data", "--out", str(out), "--n-train", "0"]) == 2
    assert "n_train must be an int in [1, 100000], got 0" in capsys.readouterr().err


def test_train_writes_a_run_and_rejects_bad_values(run, toy_dir, tmp_path, capsys):
    assert (run / "checkpoint.pt").is_file()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [1, 2]
    config = json.loads((run / "config.json").read_text())
    assert (config["width"], config["crop"], config["dataset"]) == (0.0625, 33, str(toy_dir))
    base = ["train", *TINY, "--dataset", str(toy_dir), "--out", str(tmp_path / "x")]
    assert main([*base, "--iterations", "0"]) == 2
    assert "iterations, batch_size and checkpoint_every must be >= 1" in capsys.readouterr().err
    assert main([*base, "--crop", "5"]) == 2
    assert "crop must be an int in [9, 2049], got 5" in capsys.readouterr().err
    assert (
        main(["train", *TINY, "--dataset", str(toy_dir), "--iterations", "2", "--out", str(run)])
        == 2
    )
    assert "pass resume=True (--resume)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*base, "--iterations", "many"])
    assert "invalid int value: 'many'" in capsys.readouterr().err


def test_train_accepts_the_aspp_variants(toy_dir, tmp_path):
    out = tmp_path / "aspp"
    assert (
        main(
            [
                "train",
                *TINY,
                "--dataset",
                str(toy_dir),
                "--iterations",
                "2",
                "--variant",
                "DeepLab-ASPP-256",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert json.loads((out / "config.json").read_text())["variant"] == "DeepLab-ASPP-256"
    assert "head.branches.3.fc8.weight" in load_checkpoint(out / "checkpoint.pt")["model"]


def test_missing_voc_says_how_to_get_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DEEPLAB_EDU_DATA", str(tmp_path))
    monkeypatch.delenv("DEEPLAB_EDU_VOC", raising=False)
    assert (
        main(
            ["train", *TINY, "--dataset", "voc", "--init", "random", "--out", str(tmp_path / "run")]
        )
        == 2
    )
    error = capsys.readouterr().err
    assert "PASCAL VOC 2012 not found" in error and "download voc" in error


def test_evaluate_writes_results_and_checks_the_variant(run, tmp_path, capsys):
    out = tmp_path / "results.json"
    checkpoint = str(run / "checkpoint.pt")
    assert (
        main(
            [
                "evaluate",
                "--fast",
                "--checkpoint",
                checkpoint,
                "--out",
                str(out),
                "--max-images",
                "2",
                "--no-progress",
                "--theta-alpha",
                "20",
            ]
        )
        == 0
    )
    summary = json.loads(out.read_text())
    assert summary["images"] == 2 and set(summary["miou"]) == {"dcnn", "crf"}
    assert summary["config"]["crf"]["theta_alpha"] == 20.0
    assert "mean IoU (%) on all 2 images" in capsys.readouterr().out
    assert (
        main(
            ["evaluate", "--checkpoint", checkpoint, "--out", str(out), "--variant", "DeepLab-7x7"]
        )
        == 2
    )
    assert "holds a 'DeepLab-LargeFOV' checkpoint" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", str(tmp_path / "none.pt"), "--out", str(out)]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", checkpoint, "--out", str(out), "--w1", "-1"]) == 2
    assert "w1 must be a non-negative, finite kernel weight" in capsys.readouterr().err


def test_crf_search_runs_and_resumes(run, tmp_path, capsys):
    out = tmp_path / "search.json"
    args = [
        "crf-search",
        "--fast",
        "--checkpoint",
        str(run / "checkpoint.pt"),
        "--out",
        str(out),
        "--w1",
        "5",
        "--theta-alpha",
        "10",
        "--theta-beta",
        "3",
        "5",
        "--max-recentres",
        "0",
        "--normalization",
        "symmetric",
        "--no-progress",
        "--num-images",
        "1",
    ]
    assert main(args) == 0
    saved = json.loads(out.read_text())
    trials = saved["trials"]
    assert [(t["w1"], t["theta_alpha"], t["theta_beta"]) for t in trials[:2]] == [
        (5, 10, 3),
        (5, 10, 5),
    ]
    assert {t["stage"] for t in trials} == {"coarse", "fine"} and len(trials) <= 2 + 26
    assert saved["best"]["normalization"] == "symmetric" and len(saved["images"]) == 1
    assert "best CRFParams(" in capsys.readouterr().out
    assert main(args) == 0  # resumed: nothing left to do, same trials
    assert json.loads(out.read_text())["trials"] == trials
    assert main([*args[:-1], "2"]) == 2
    assert "another configuration" in capsys.readouterr().err
    assert main([*args[:-1], "0"]) == 2
    assert "num_images and base.iterations must be >= 1" in capsys.readouterr().err


def test_msc_trains_as_a_second_stage_from_a_checkpoint(run, toy_dir, tmp_path, capsys):
    stage_two = ["train", *TINY, "--dataset", str(toy_dir), "--iterations", "2", "--msc"]
    assert main([*stage_two, "--out", str(tmp_path / "a")]) == 2
    assert "DeepLab-MSc is the paper's second stage" in capsys.readouterr().err
    init = str(run / "checkpoint.pt")
    assert main([*stage_two, "--init", init, "--out", str(tmp_path / "msc")]) == 0
    assert (tmp_path / "msc" / "checkpoint.pt").is_file()
    wider = ["train", *TINY, "--width", "0.125", "--msc", "--init", init]
    assert main([*wider, "--dataset", str(toy_dir), "--out", str(tmp_path / "b")]) == 2
    assert "width" in capsys.readouterr().err


def test_evaluate_takes_the_parameters_the_search_chose(run, tmp_path, capsys):
    checkpoint = str(run / "checkpoint.pt")
    search_json, results = tmp_path / "crf.json", tmp_path / "results.json"
    assert (
        main(
            [
                "crf-search",
                "--fast",
                "--checkpoint",
                checkpoint,
                "--out",
                str(search_json),
                "--w1",
                "5",
                "--theta-alpha",
                "10",
                "--theta-beta",
                "3",
                "--num-images",
                "1",
                "--max-recentres",
                "0",
                "--no-progress",
            ]
        )
        == 0
    )
    chosen = json.loads(search_json.read_text())
    capsys.readouterr()
    assert (
        main(
            [
                "evaluate",
                "--fast",
                "--checkpoint",
                checkpoint,
                "--crf-from",
                str(search_json),
                "--out",
                str(results),
                "--no-progress",
            ]
        )
        == 0
    )
    summary = json.loads(results.read_text())
    assert summary["config"]["crf"] == chosen["best"]
    assert summary["held_out"]["images"] == summary["images"] - 1
    assert "not used to tune the CRF" in capsys.readouterr().out
    assert (
        main(
            [
                "evaluate",
                "--fast",
                "--checkpoint",
                checkpoint,
                "--crf-from",
                checkpoint,
                "--out",
                str(results),
            ]
        )
        == 2
    )
    unfinished = tmp_path / "unfinished.json"
    unfinished.write_text(json.dumps({"config": {}, "trials": []}))
    assert (
        main(
            [
                "evaluate",
                "--fast",
                "--checkpoint",
                checkpoint,
                "--crf-from",
                str(unfinished),
                "--out",
                str(results),
            ]
        )
        == 2
    )
    assert "not a finished CRF search" in capsys.readouterr().err


def test_a_library_error_keeps_its_traceback(monkeypatch, capsys):
    import deeplab_edu.cli as cli

    def broken(root):
        return int("not a number")  # a ValueError raised outside the package: a bug

    monkeypatch.setattr(cli, "prepare_voc", broken)
    with pytest.raises(ValueError, match="invalid literal"):
        main(["download", "voc"])


def test_download_rejects_unknown_targets(capsys):
    with pytest.raises(SystemExit):
        main(["download", "imagenet"])
    assert "invalid choice: 'imagenet'" in capsys.readouterr().err


def test_download_dispatches_to_the_data_and_weights_code(monkeypatch, tmp_path, capsys):
    import deeplab_edu.cli as cli

    calls = []
    monkeypatch.setattr(cli, "prepare_voc", lambda root: calls.append(root) or root)
    monkeypatch.setattr(cli, "vgg16_imagenet_state_dict", lambda: calls.append("vgg16"))
    assert main(["download", "voc", "--root", str(tmp_path)]) == 0
    assert main(["download", "vgg16"]) == 0
    assert calls == [tmp_path, "vgg16"]
    assert main(["download", "all", "--root", str(tmp_path)]) == 2  # refused before any download
    assert "--root applies to voc only" in capsys.readouterr().err and len(calls) == 2

    def unreachable(root):
        raise ConnectionError("host unreachable; put VOCtrainval_11-May-2012.tar in data/")

    monkeypatch.setattr(cli, "prepare_voc", unreachable)
    assert main(["download", "voc"]) == 2
    assert "host unreachable" in capsys.readouterr().err


def test_evaluate_never_overwrites_its_inputs_or_foreign_files(run, tmp_path, capsys):
    checkpoint = run / "checkpoint.pt"
    before = checkpoint.read_bytes()

    def onto_its_input(command: str) -> int:  # --out names the --checkpoint it reads
        paths = ["--checkpoint", str(checkpoint), "--out", str(checkpoint)]
        return main([command, "--fast", *paths, "--no-progress"])

    assert onto_its_input("evaluate") == 2
    assert "this command's --checkpoint input" in capsys.readouterr().err
    assert checkpoint.read_bytes() == before
    notes = tmp_path / "notes.json"
    notes.write_text('{"my": "notes"}')
    args = [
        "evaluate",
        "--fast",
        "--checkpoint",
        str(checkpoint),
        "--out",
        str(notes),
        "--max-images",
        "1",
        "--no-crf",
        "--no-progress",
    ]
    assert main(args) == 2
    assert "notes.json exists and was not written by evaluate" in capsys.readouterr().err
    assert notes.read_text() == '{"my": "notes"}'
    assert main([*args, "--force"]) == 0 and "miou" in json.loads(notes.read_text())
    assert main(args) == 0  # its own results JSON is replaced without --force
    assert onto_its_input("crf-search") == 2
    assert "this command's --checkpoint input" in capsys.readouterr().err
    assert checkpoint.read_bytes() == before


def test_ctrl_c_is_one_line_saying_how_to_resume(run, tmp_path, monkeypatch, capsys):
    import deeplab_edu.cli as cli

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "train", interrupted)
    assert main(["train", "--fast", "--out", str(run), "--no-progress"]) == 130
    (line,) = capsys.readouterr().err.splitlines()
    assert "interrupted; the last checkpoint is" in line and "--resume" in line
    assert main(["train", "--fast", "--out", str(tmp_path / "new"), "--no-progress"]) == 130
    assert "no checkpoint had been written yet" in capsys.readouterr().err
