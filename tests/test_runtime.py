"""Fast mode, device and data root resolve as documented in deeplab_edu.runtime."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import deeplab_edu
from deeplab_edu import runtime


@pytest.mark.parametrize("value", ["1", "true", "YES", " on "])
def test_fast_mode_on(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("DEEPLAB_EDU_FAST", value)
    assert runtime.fast_mode() is True


@pytest.mark.parametrize("value", ["0", "false", "No", "off"])
def test_fast_mode_off(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("DEEPLAB_EDU_FAST", value)
    assert runtime.fast_mode() is False


@pytest.mark.parametrize("cuda", [True, False])
def test_fast_mode_is_the_default_with_or_without_a_gpu(monkeypatch, cuda: bool) -> None:
    monkeypatch.setenv("DEEPLAB_EDU_FAST", "")  # unset (and restored after the test)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert runtime.fast_mode() is True
    runtime.use_full_mode()  # the documented call in a notebook's first cell
    assert runtime.fast_mode() is False


def test_fast_mode_rejects_garbage(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEEPLAB_EDU_FAST", "maybe")
    with pytest.raises(ValueError, match="DEEPLAB_EDU_FAST must be 1 or 0.*'maybe'"):
        runtime.fast_mode()


def test_device_is_cuda_exactly_when_available() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert runtime.device().type == expected
    assert runtime.device() is runtime.device()  # decided once


def test_data_root_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DEEPLAB_EDU_DATA", str(tmp_path / "somewhere"))
    assert runtime.data_root() == tmp_path / "somewhere"


def test_data_root_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("DEEPLAB_EDU_DATA", raising=False)
    repo = Path(runtime.__file__).resolve().parents[1]
    monkeypatch.chdir(repo / "book")
    assert runtime.data_root() == repo / "data"  # in a source checkout: its data/ folder
    # a student's own folder, the package installed from a checkout (editable): data beside
    # the student's chapters, not in the shared checkout
    student = tmp_path / "alice" / "chapters"
    student.mkdir(parents=True)
    monkeypatch.chdir(student)
    assert runtime.data_root() == student / "data"
    monkeypatch.setattr(runtime, "_checkout_root", lambda: None)  # pip-installed (Colab)
    monkeypatch.chdir(tmp_path)
    assert runtime.data_root() == tmp_path / "data"


def test_seed_everything_is_explicit_and_reproducible() -> None:
    import random

    import numpy as np

    def draw() -> tuple:
        generator = runtime.seed_everything(3)
        legacy = np.random.rand()  # noqa: NPY002 (seed_everything seeds the global stream too)
        return random.random(), legacy, torch.rand(2), torch.rand(2, generator=generator)

    first, second = draw(), draw()
    assert first[:2] == second[:2]
    assert torch.equal(first[2], second[2]) and torch.equal(first[3], second[3])
    with pytest.raises(TypeError, match=r"seed must be an int in \[0, 2\*\*63 - 1\]"):
        runtime.seed_everything(-1)


def test_describe_states_version_mode_device_and_data(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEEPLAB_EDU_FAST", "1")
    line = runtime.describe("generated teaching set")
    assert deeplab_edu.__version__ in line
    assert "mode: fast" in line and f"device: {runtime.device()}" in line
    assert "generated teaching set" in line


def test_mode_config_changes_values_only(monkeypatch: pytest.MonkeyPatch) -> None:
    from dataclasses import dataclass

    @dataclass
    class Config(runtime.ModeConfig):
        FAST = {"size": 64}
        size: int = 321
        seed: int = 0

    assert Config().size == 321 and Config.fast().size == 64
    assert (Config().mode, Config.fast().mode) == ("full", "fast")  # results record what ran
    assert Config.fast(size=9, seed=1) == Config(size=9, seed=1, mode="fast")  # changes win
    monkeypatch.setenv("DEEPLAB_EDU_FAST", "1")
    assert Config.for_mode(seed=2) == Config(size=64, seed=2, mode="fast")
    assert Config.for_mode(False) == Config()  # an explicit choice beats the environment
    monkeypatch.setenv("DEEPLAB_EDU_FAST", "0")
    assert Config.for_mode() == Config() and Config.for_mode(True) == Config.fast()
    assert Config.from_dict(Config.fast().to_dict()) == Config.fast()
    with pytest.raises(ValueError, match=r"unknown Config fields \['colour'\]"):
        Config.from_dict({"colour": 1})
