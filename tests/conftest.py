"""Shared fixtures. Tiers: tiny seeded unit tests run everywhere; tests on the real VOC sample
and on pydensecrf skip with a reason when those are absent, except in CI, which sets
DEEPLAB_EDU_VOC_SAMPLE=required and DEEPLAB_EDU_REFERENCE=required so that they must run;
GPU tests skip without CUDA."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
# the real VOC photos beside the checkout (never copied into it); another copy: set this variable
VOC_SAMPLE_DIR_ENV = "DEEPLAB_EDU_VOC_SAMPLE_DIR"
VOC_SAMPLE = Path(os.environ.get(VOC_SAMPLE_DIR_ENV) or REPO.parent / "shared" / "voc-sample")


def _required(variable: str) -> bool:
    return os.environ.get(variable, "").strip().lower() == "required"


@pytest.fixture(scope="session")
def voc_sample() -> Path:
    """The 12 real VOC 2012 images in ../shared/voc-sample, or ``$DEEPLAB_EDU_VOC_SAMPLE_DIR``."""
    if (VOC_SAMPLE / "JPEGImages").is_dir():
        return VOC_SAMPLE
    if _required("DEEPLAB_EDU_VOC_SAMPLE"):
        pytest.fail(f"DEEPLAB_EDU_VOC_SAMPLE=required but {VOC_SAMPLE} is missing")
    pytest.skip(f"real VOC sample not found at {VOC_SAMPLE}")


@pytest.fixture(scope="session")
def pydensecrf():
    """The reference CRF module, or a skip (a failure when DEEPLAB_EDU_REFERENCE=required)."""
    if importlib.util.find_spec("pydensecrf") is None:
        if _required("DEEPLAB_EDU_REFERENCE"):
            pytest.fail("DEEPLAB_EDU_REFERENCE=required but pydensecrf is not installed")
        pytest.skip("pydensecrf (pip install pydensecrf2) is not installed")
    import pydensecrf.densecrf

    return pydensecrf.densecrf


@pytest.fixture
def cuda_device(request: pytest.FixtureRequest) -> torch.device:
    """The GPU, for tests marked ``gpu`` (the mark is what `make gpu-check` selects them by)."""
    if request.node.get_closest_marker("gpu") is None:
        pytest.fail(f"{request.node.name} takes cuda_device: mark it @pytest.mark.gpu")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine")
    return torch.device("cuda")
