"""The mode rule: fast everywhere unless full mode is asked for, and a full-mode chapter never
downloads or trains on its own; the real photos ship with the package."""

from __future__ import annotations

import shutil
from pathlib import Path

import nbformat
import pytest
import torch
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

import deeplab_edu.runs as runs
from deeplab_edu import runtime
from deeplab_edu.data import PHOTOS_DIR, PHOTOS_SPLIT, VOCSegmentation, voc_dir
from deeplab_edu.data.voc import IGNORE_INDEX, NUM_CLASSES
from deeplab_edu.train import TrainConfig

REPO = Path(__file__).resolve().parents[1]


def test_a_gpu_runtime_runs_fast_mode_unless_full_mode_is_asked_for(monkeypatch):
    monkeypatch.setenv("DEEPLAB_EDU_FAST", "")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a (mocked) Colab GPU
    assert TrainConfig.for_mode().mode == "fast"
    runtime.use_full_mode()
    assert TrainConfig.for_mode().mode == "full"


def test_full_mode_without_the_reproduction_run_stops_and_trains_nothing(monkeypatch, tmp_path):
    monkeypatch.setenv("DEEPLAB_EDU_DATA", str(tmp_path))
    monkeypatch.setattr(runs, "train", lambda *a, **k: pytest.fail("a chapter started training"))
    with pytest.raises(
        FileNotFoundError,
        match=r"train --full --variant DeepLab-LargeFOV.*Reproducing Table 1 on a GPU",
    ):
        runs.cached_run(TrainConfig.for_mode(False))
    assert list(tmp_path.iterdir()) == []  # nothing downloaded, no run folder made


def test_a_chapter_in_full_mode_stops_with_the_message(monkeypatch, tmp_path):
    monkeypatch.setenv("DEEPLAB_EDU_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("DEEPLAB_EDU_FAST", "0")
    chapter = shutil.copy(REPO / "book" / "results.ipynb", tmp_path / "results.ipynb")
    notebook = nbformat.read(chapter, as_version=4)
    client = NotebookClient(notebook, timeout=600, resources={"metadata": {"path": str(tmp_path)}})
    with pytest.raises(CellExecutionError, match="Reproducing Table 1 on a GPU"):
        client.execute()
    assert not (tmp_path / "data" / "runs").exists()


def test_the_real_photos_ship_with_the_package():
    photos = VOCSegmentation(voc_dir("photos"), PHOTOS_SPLIT)
    assert voc_dir("photos") == PHOTOS_DIR and len(photos) == 8
    readme = (PHOTOS_DIR / "README.md").read_text()
    assert "terms of use" in readme and "Everingham" in readme
    for image_id, (image, mask) in zip(photos.ids, photos, strict=True):
        assert image_id in readme
        assert image.dtype == torch.uint8 and image.shape[1:] == mask.shape
        labels = mask.unique()
        assert ((labels < NUM_CLASSES) | (labels == IGNORE_INDEX)).all() and len(labels) >= 2
