"""The GPU check's dry mode: every part of tools/gpu_check.py runs here on the CPU at toy sizes,
so that the check a GPU session runs once cannot rot between GPU sessions."""

from __future__ import annotations

import json

import pytest
import torch

from tools import gpu_check


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check")
    status = gpu_check.main(["--dry", "--out", str(out)])
    (path,) = out.glob("gpu-check-dry-*.json")
    return status, json.loads(path.read_text())


def test_every_part_runs_in_the_dry_mode(dry_run):
    status, report = dry_run
    assert status == 0, gpu_check.summary_lines(report)
    assert report["environment"]["dry"] is True and report["environment"]["commit"]
    parts = report["parts"]
    assert list(parts) == list(gpu_check.PARTS)
    assert {name for name, part in parts.items() if part["status"] != "ok"} == {"chapter"}
    assert "dry run" in parts["chapter"]["reason"]
    # the pytest part found the gpu-marked tests (collected, not run, in the dry mode)
    assert "test_cuda.py" in parts["tests"]["selections"][0]
    assert all("collected" in line for line in parts["tests"]["summaries"])


def test_the_figures_are_measured_not_written(dry_run):
    _, report = dry_run
    sizes = report["parts"]["crf_sizes"]["rows"]
    assert all(row["agreement_with_cpu"] == 1.0 and row["cpu_s"] > 0 for row in sizes)
    assert len({row["height"] for row in sizes}) == len(sizes)  # one row per size
    throughput = report["parts"]["throughput"]["rows"]
    assert {(r["dtype"], r["batch"]) for r in throughput} == {
        (d, b) for d in ("float32", "bfloat16") for b in (1, 2)
    }
    assert all(r["fps"] > 0 for r in throughput)
    layer = report["parts"]["crf_layer"]
    assert layer["grad_logits_max_relative_difference"] == 0.0  # the CPU against itself
    training = report["parts"]["training"]
    assert training["iterations"] == 3 and training["eval_images"] > 0


def test_a_failing_part_fails_the_check_and_the_others_still_run(monkeypatch, tmp_path):
    def broken(device, dry):
        raise RuntimeError("planted")

    monkeypatch.setitem(gpu_check.PARTS, "crf_batch", broken)
    status = gpu_check.main(["--dry", "--out", str(tmp_path), "--only", "crf_batch", "crf_layer"])
    report = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert status == 1
    assert report["parts"]["crf_batch"]["status"] == "failed"
    assert "planted" in report["parts"]["crf_batch"]["reason"]
    assert report["parts"]["crf_layer"]["status"] == "ok"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA machine runs the real check")
def test_without_cuda_the_real_check_refuses_to_pretend(tmp_path):
    with pytest.raises(SystemExit, match="no CUDA device here: run with --dry"):
        gpu_check.main(["--out", str(tmp_path)])
