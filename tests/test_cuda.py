"""The CUDA paths, audited: what a reader on a GPU (Colab) meets that the CPU tests cannot show.

Every test here needs a CUDA device and skips with a reason without one; `make gpu-check`
(tools/gpu_check.py) runs them on a GPU machine, with the other gpu-marked tests.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pytest
import torch

from deeplab_edu.checkpoint import load_checkpoint, save_checkpoint
from deeplab_edu.crf import dense_crf, simulate_unaries
from deeplab_edu.crf.naive import NAIVE_MAX_PIXELS
from deeplab_edu.data import PHOTOS_SPLIT, voc_dir
from deeplab_edu.data.voc import VOCSegmentation
from deeplab_edu.metrics import ConfusionMatrix, TrimapCounts
from deeplab_edu.models import deeplab
from deeplab_edu.runs import SHIPPED_DIR, load_trained
from deeplab_edu.viz.crf import plot_lattice_2d, plot_pixel_kernels
from deeplab_edu.viz.data import (
    overlay,
    plot_label_maps,
    plot_training_crops,
    plot_trimap_bands,
    plot_void_band,
)
from deeplab_edu.viz.network import plot_upsampling

pytestmark = pytest.mark.gpu
CARD_BYTES = 15 * 2**30  # Colab's T4: the smallest card a reader is likely to have


@pytest.fixture(scope="module")
def photo():
    return VOCSegmentation(voc_dir("photos"), PHOTOS_SPLIT)[0]  # (3, H, W) uint8, (H, W)


def test_the_plots_take_cuda_tensors(cuda_device, photo):
    image, target = (t.to(cuda_device) for t in photo)
    height, width = target.shape
    scores = torch.randn(21, (height - 1) // 8 + 1, (width - 1) // 8 + 1, device=cuda_device)
    figures = [
        plot_label_maps(image, {"truth": target, "network": target.flip(1)}),
        plot_void_band(image, target),
        plot_trimap_bands(image, target),
        plot_training_crops([(image, target)]),
        plot_upsampling(image, scores, target, int(target[target < 21].max())),
        plot_pixel_kernels(image.permute(1, 2, 0), (40, 60), 80, 13, 3),
        plot_lattice_2d(torch.rand(6, 2, device=cuda_device) * 3),
    ]
    assert overlay(image, target).shape == (height, width, 3)
    for figure in figures:
        plt.close(figure)


def test_metrics_count_on_cuda_as_on_the_cpu(cuda_device, photo):
    _, target = photo
    pred = torch.randint(0, 21, target.shape)
    on_cpu, on_gpu = TrimapCounts((2, 10)), TrimapCounts((2, 10))
    on_cpu.update(pred, target)
    on_gpu.update(pred.to(cuda_device), target.to(cuda_device))
    assert repr(on_gpu.curves()) == repr(on_cpu.curves())  # NaN for absent classes: as text
    matrix = ConfusionMatrix()
    matrix.update(pred.to(cuda_device), target.to(cuda_device))
    assert isinstance(matrix.iou()[0].item(), float)


def test_checkpoints_move_between_devices(cuda_device, tmp_path):
    """Saved from CUDA, loaded on a machine without one (the default map_location is the CPU);
    the shipped networks, saved on a CPU, load onto CUDA."""
    model = deeplab("DeepLab-LargeFOV", width=0.0625).to(cuda_device)
    save_checkpoint({"model": model.state_dict()}, tmp_path / "checkpoint.pt")
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert all(t.device.type == "cpu" for t in state["model"].values())
    for name, tensor in model.state_dict().items():
        assert torch.equal(state["model"][name], tensor.cpu()), name
    network, _ = load_trained(SHIPPED_DIR / "DeepLab-LargeFOV.pt", device=cuda_device)
    assert next(network.parameters()).device.type == cuda_device.type


def test_the_naive_crf_fits_a_small_card_at_its_size_limit(cuda_device):
    """The exact CRF at its largest accepted image: chunked rows keep it far below a 15 GB card."""
    side = int(NAIVE_MAX_PIXELS**0.5)
    image = torch.randint(0, 256, (side, side, 3), dtype=torch.uint8, device=cuda_device)
    mask = torch.zeros(side, side, dtype=torch.long)
    mask[side // 4 : side // 2, side // 3 :] = 7
    probs = simulate_unaries(mask, 21).to(cuda_device)
    torch.cuda.reset_peak_memory_stats(cuda_device)
    before = torch.cuda.memory_allocated(cuda_device)
    q = dense_crf(image, probs, method="naive", iterations=2)
    peak = torch.cuda.max_memory_allocated(cuda_device) - before
    assert q.device.type == "cuda" and peak < CARD_BYTES / 8, f"{peak / 2**30:.2f} GiB"


def test_the_crf_on_cuda_repeats_itself(cuda_device, photo):
    """Two runs on the GPU give the same labels (the lattice's scatter-adds are atomic, so the
    last bits may differ between runs; the labels must not)."""
    image, target = photo
    probs = simulate_unaries(target, 21).to(cuda_device)
    rgb = image.permute(1, 2, 0).contiguous().to(cuda_device)
    first, second = dense_crf(rgb, probs), dense_crf(rgb, probs)
    assert torch.equal(first.argmax(0), second.argmax(0))
    assert torch.allclose(first, second, atol=1e-5)
