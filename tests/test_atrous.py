"""The hole algorithm from scratch: equality with torch's dilated convolution (values and
gradients), the receptive-field calculator against the paper's numbers, shift-and-stitch."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deeplab_edu.models import DeepLab, atrous_conv1d, atrous_conv2d, deeplab, im2col_atrous
from deeplab_edu.models.deeplab import VGG16_FULLY_CONVOLUTIONAL, variant
from deeplab_edu.models.field import (
    Layer,
    first_centre,
    output_size,
    output_stride,
    paper_field_of_view,
    receptive_field,
    receptive_field_steps,
)
from deeplab_edu.models.stitch import make_atrous, shift_and_stitch

GRID = list(
    itertools.product(
        [(1, 1, 1, 9, 9), (2, 3, 4, 13, 11), (3, 5, 2, 20, 17)],  # B, C_in, C_out, H, W
        [1, 3],  # kernel
        [1, 2, 4],  # rate
        [0, 1, 4],  # padding
        [1, 2],  # stride
    )
)


@pytest.mark.parametrize(("shape", "kernel", "rate", "padding", "stride"), GRID)
def test_atrous_conv2d_equals_dilated_conv2d(shape, kernel, rate, padding, stride):
    batch, c_in, c_out, height, width = shape
    if height + 2 * padding < rate * (kernel - 1) + 1:
        pytest.skip("input smaller than the dilated kernel")
    generator = torch.Generator().manual_seed(hash((shape, kernel, rate, padding)) % 2**31)
    x = torch.randn(batch, c_in, height, width, generator=generator, dtype=torch.float64)
    w = torch.randn(c_out, c_in, kernel, kernel, generator=generator, dtype=torch.float64)
    b = torch.randn(c_out, generator=generator, dtype=torch.float64)
    ours_in = [t.clone().requires_grad_() for t in (x, w, b)]
    ref_in = [t.clone().requires_grad_() for t in (x, w, b)]
    ours = atrous_conv2d(*ours_in, rate=rate, padding=padding, stride=stride)
    ref = F.conv2d(*ref_in, stride=stride, padding=padding, dilation=rate)
    torch.testing.assert_close(ours, ref)
    upstream = torch.randn(ref.shape, generator=generator, dtype=torch.float64)
    (ours * upstream).sum().backward()
    (ref * upstream).sum().backward()
    for mine, theirs in zip(ours_in, ref_in, strict=True):
        torch.testing.assert_close(mine.grad, theirs.grad)


@pytest.mark.parametrize(
    ("kernel", "rate", "padding"), [(3, 1, 1), (3, 2, 2), (4, 4, 6), (2, 3, 0)]
)
def test_atrous_conv1d_equals_dilated_conv1d(kernel, rate, padding):
    torch.manual_seed(0)
    x, w, b = torch.randn(2, 3, 31), torch.randn(4, 3, kernel), torch.randn(4)
    ours = atrous_conv1d(x, w, b, rate=rate, padding=padding)
    torch.testing.assert_close(ours, F.conv1d(x, w, b, padding=padding, dilation=rate))


def test_im2col_reads_the_pixels_the_holes_point_at():
    x = torch.arange(49.0).reshape(1, 1, 7, 7)
    columns = im2col_atrous(x, 3, rate=3, padding=0)  # one output, taps at rows/cols 0, 3, 6
    assert columns.shape == (1, 9, 1)
    assert columns.flatten().tolist() == [0, 3, 6, 21, 24, 27, 42, 45, 48]


def test_atrous_conv_errors_say_what_was_expected():
    with pytest.raises(ValueError, match="channels"):
        atrous_conv2d(torch.zeros(1, 3, 8, 8), torch.zeros(2, 4, 3, 3), rate=1, padding=0)
    with pytest.raises(ValueError, match="rate"):
        atrous_conv2d(torch.zeros(1, 3, 8, 8), torch.zeros(2, 3, 3, 3), rate=0, padding=0)
    with pytest.raises(ValueError, match="smaller than"):
        atrous_conv2d(torch.zeros(1, 3, 4, 4), torch.zeros(2, 3, 3, 3), rate=4, padding=0)


def test_receptive_field_of_vgg16_matches_the_paper():
    with torch.device("meta"):
        vgg = DeepLab(VGG16_FULLY_CONVOLUTIONAL, num_classes=1000, width=1.0, msc=False)
    steps = {step.name: step for step in receptive_field_steps(vgg.layers())}
    assert steps["pool5"].receptive_field == 212 and steps["pool5"].stride == 32
    assert steps["fc6"].receptive_field == 404  # "404x404 pixels", section 3.1
    assert output_size(vgg.layers(), 224) == 1


def test_deeplab_has_the_released_2x2_poolings_and_the_papers_308_field():
    # The released plain DeepLab: 2x2 pool1-pool4 (pool4 at stride 1), a 3x3 pool5; the
    # paper's 308x308. With LargeFOV's 3x3 poolings the same network would see 323.
    with torch.device("meta"):
        model = deeplab("DeepLab")
        three = DeepLab(
            replace(variant("DeepLab"), pools=variant("DeepLab-LargeFOV").pools),
            num_classes=21,
            width=1.0,
            msc=False,
        )
    pools = [layer for layer in model.layers() if layer.kind == "max"]
    assert [(p.kernel, p.stride, p.padding) for p in pools] == [
        (2, 2, 1),
        (2, 2, 1),
        (2, 2, 1),
        (2, 1, 0),
        (3, 1, 1),
    ]
    assert receptive_field(model.layers()) == 308 and receptive_field(three.layers()) == 323
    assert output_stride(model.layers()) == 8 and output_size(model.layers(), 306) == 39
    assert (model.label_offset, three.label_offset) == (1, 0)
    assert first_centre(model.layers()) == 0.5 and first_centre(three.layers()) == 0
    assert variant("DeepLab").crop == 306 and variant("DeepLab-LargeFOV").crop == 321


@pytest.mark.parametrize(
    ("kernel", "rate", "expected"), [(7, 4, 224), (4, 4, 128), (4, 8, 224), (3, 12, 224)]
)
def test_paper_field_of_view_reproduces_table_2(kernel, rate, expected):
    assert paper_field_of_view(kernel, rate) == expected


def test_layer_validation():
    with pytest.raises(ValueError, match="kind"):
        Layer("pool", 2)
    with pytest.raises(ValueError, match="dilation"):
        Layer("conv", 3, dilation=0)
    with pytest.raises(ValueError, match="too small"):
        output_size([Layer("conv", 3, name="conv1")], 2)


def _small_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3),
        nn.ReLU(),
        nn.MaxPool2d(2, 2),
        nn.Conv2d(6, 8, 3),
        nn.ReLU(),
        nn.MaxPool2d(2, 2),
        nn.Conv2d(8, 8, 3),
        nn.ReLU(),
        nn.MaxPool2d(2, 2),
        nn.Conv2d(8, 5, 3),
    )


@pytest.mark.parametrize("factor", [1, 2, 4])
def test_shift_and_stitch_equals_the_atrous_network(factor):
    net = _small_net()  # output stride 8, no padding
    x = torch.randn(2, 3, 75, 66)
    with torch.no_grad():
        stitched = shift_and_stitch(net, x, stride=8, factor=factor)
        dense = make_atrous(net, 8 // factor)(x)
    assert dense.shape == stitched.shape
    torch.testing.assert_close(dense, stitched)
    if factor > 1:  # genuinely denser than the strided network
        assert stitched.shape[-2] > net(x).shape[-2]


def test_make_atrous_sets_the_papers_rates():
    dense = make_atrous(_small_net(), 2)
    convs = [m for m in dense if isinstance(m, nn.Conv2d)]
    pools = [m for m in dense if isinstance(m, nn.MaxPool2d)]
    assert [c.dilation[0] for c in convs] == [1, 1, 2, 4]
    assert [p.stride for p in pools] == [2, 1, 1]
    with pytest.raises(ValueError, match="never multiply"):
        make_atrous(_small_net(), 3)
    with pytest.raises(ValueError, match="multiple"):
        shift_and_stitch(_small_net(), torch.zeros(1, 3, 40, 40), stride=8, factor=3)


def test_multiply_adds_of_vgg16_and_of_one_convolution():
    from deeplab_edu.models import vgg16_fully_convolutional
    from deeplab_edu.models.cost import multiply_adds

    conv = nn.Sequential(nn.Conv2d(3, 4, 3, padding=2, dilation=2))
    assert multiply_adds(conv, 10, 12) == 10 * 12 * 4 * 3 * 9  # holes cost nothing extra
    with torch.device("meta"):
        vgg = vgg16_fully_convolutional()
    assert round(multiply_adds(vgg, 224, 224) / 1e9, 2) == 15.47  # VGG-16's well-known 15.5 G


def test_matmul_speed_is_a_positive_rate():
    from deeplab_edu.models.cost import matmul_gflops

    speed = matmul_gflops(torch.device("cpu"), repeats=1, n=64)  # the benchmarks' reference
    assert 0 < speed < float("inf")


@pytest.mark.gpu
def test_atrous_conv2d_on_cuda(cuda_device):
    x = torch.randn(2, 3, 17, 19, device=cuda_device)
    w = torch.randn(4, 3, 3, 3, device=cuda_device)
    ours = atrous_conv2d(x, w, rate=3, padding=3)
    torch.testing.assert_close(ours, F.conv2d(x, w, padding=3, dilation=3), rtol=1e-3, atol=1e-3)
    model = deeplab("DeepLab-LargeFOV", width=1 / 16, msc=True).to(cuda_device)
    assert model.predict(torch.randn(1, 3, 41, 41, device=cuda_device)).shape == (1, 21, 41, 41)


def test_the_hole_algorithm_turns_vgg16_into_deeplab_rates():
    from deeplab_edu.models import vgg16_fully_convolutional

    torch.manual_seed(0)
    vgg = vgg16_fully_convolutional(width=1 / 16).eval()
    x = torch.randn(1, 3, 256, 256)  # fc6 needs a 7x7 pool5: 224 pixels or more
    sequential = vgg.as_sequential()
    with torch.no_grad():
        torch.testing.assert_close(sequential(x), vgg(x))
    dense = make_atrous(sequential, 8)
    convs = [m for m in dense if isinstance(m, nn.Conv2d)]
    assert [c.dilation[0] for c in convs[10:14]] == [2, 2, 2, 4]  # conv5_1..3, fc6
    assert [m.stride for m in dense if isinstance(m, nn.MaxPool2d)] == [2, 2, 2, 1, 1]
    with pytest.raises(ValueError, match="multi-scale"):
        deeplab("DeepLab-LargeFOV", width=1 / 16, msc=True).as_sequential()
