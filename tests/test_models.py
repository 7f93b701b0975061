"""The DeepLab family: Table 2's parameter counts, output sizes and stride, the conversion from
torchvision's VGG-16 (exact where it can be), decimation, the multi-scale head, v2's ASPP (and
our equal-cost ASPP-256), weight files."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from deeplab_edu.fetch import ChecksumError, file_digest, verify
from deeplab_edu.models import (
    ASPP,
    PAPER_VARIANTS,
    VARIANTS,
    VGG16_CFG,
    Head,
    Layer,
    Variant,
    deeplab,
    is_new_layer,
    load_vgg16,
    output_size,
    output_stride,
    receptive_field,
    upsample_scores,
    vgg16_fully_convolutional,
    vgg16_imagenet_state_dict,
)
from deeplab_edu.models.cost import multiply_adds
from deeplab_edu.models.field import paper_field_of_view, score_cells
from deeplab_edu.models.vgg import (
    channel_indices,
    decimation_taps,
    torchvision_keys,
)

TABLE2_PARAMS = {  # millions, as printed in Table 2 (with the 21-class classifier)
    "DeepLab-7x7": 134.3,
    "DeepLab": 65.1,
    "DeepLab-4x4": 65.1,
    "DeepLab-LargeFOV": 20.5,
}
ASPP_CHANNELS = {"DeepLab-ASPP": 1024, "DeepLab-ASPP-256": 256}  # fc6 and fc7, per branch
ASPP_RATES = [6, 12, 18, 24]  # v2's ASPP-L
SMALL = 1 / 16  # width for forward passes on a shared CPU


@pytest.fixture(scope="module")
def vgg_state() -> dict[str, torch.Tensor]:
    """A state dict of torchvision's vgg16(weights=None), seeded (no download)."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    return torchvision.models.vgg16(weights=None).state_dict()


def _meta(name: str, **kwargs) -> torch.nn.Module:
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        return deeplab(name, **kwargs)


@pytest.mark.parametrize("name", PAPER_VARIANTS)
def test_parameter_counts_match_table_2(name):
    assert set(PAPER_VARIANTS) == set(TABLE2_PARAMS) and set(PAPER_VARIANTS) < set(VARIANTS)
    params = sum(p.numel() for p in _meta(name).parameters())
    assert round(params / 1e6, 1) == TABLE2_PARAMS[name]


@pytest.mark.parametrize("name", VARIANTS)
def test_output_stride_is_8_and_aligned_sizes(name):
    model = _meta(name)
    assert output_stride(model.layers()) == 8
    assert output_size(model.layers(), 306) == 39  # the paper's 306 -> 39x39
    cells = {size: output_size(model.layers(), size) for size in (321, 513, 128, 57, 49)}
    # one cell per pixel 8 i + label_offset (LargeFOV's 321 -> 41, 513 -> 65; DeepLab's 321 -> 40)
    assert cells == {size: score_cells(size, model.label_offset) for size in cells}


@pytest.mark.parametrize(
    ("name", "size", "expected"),
    [
        ("DeepLab", 306, 39),
        ("DeepLab-LargeFOV", 321, 41),
        ("DeepLab-LargeFOV", 513, 65),
        ("DeepLab-ASPP", 321, 41),
        ("DeepLab-ASPP-256", 513, 65),
        ("DeepLab-ASPP-256", 306, 39),
    ],
)
def test_forward_output_sizes(name, size, expected):
    torch.manual_seed(0)
    model = deeplab(name, width=SMALL).eval()
    with torch.no_grad():
        scores = model(torch.randn(1, 3, size, size))
    assert scores.shape == (1, 21, expected, expected)


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("msc", [False, True])
def test_forward_backward_small(name, msc):
    torch.manual_seed(0)
    if msc and name == "DeepLab":  # 2x2 poolings: the branches' cells would not line up
        with pytest.raises(ValueError, match="needs 3x3 poolings"):
            deeplab(name, width=SMALL, msc=msc, num_classes=5)
        return
    model = deeplab(name, width=SMALL, msc=msc, num_classes=5)
    x = torch.randn(2, 3, 57, 49)
    scores = model(x)
    offset = model.label_offset
    assert scores.shape == (2, 5, score_cells(57, offset), score_cells(49, offset))
    assert model.predict(x).shape == (2, 5, 57, 49)
    scores.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert (model.msc is not None) == msc


def test_new_layers_are_the_fc8s_and_msc(vgg_state):
    model = deeplab("DeepLab-LargeFOV", width=SMALL, msc=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    load_vgg16(model, vgg_state)
    for key, value in model.state_dict().items():
        new = is_new_layer(key)
        if key.endswith(".weight"):  # (torchvision's VGG biases start at 0 like ours)
            assert torch.equal(value, before[key]) == new, key
    assert model.head.fc8.out_channels == 21 and model.msc.out_channels == 5 * 8
    assert model.head.fc8.weight.std().item() == pytest.approx(0.01, rel=0.1)
    assert is_new_layer("head.branches.3.fc8.bias") and not is_new_layer("head.fc7.weight")


def test_width_scales_every_channel_but_the_classes():
    model = _meta("DeepLab-LargeFOV", width=0.25)
    assert model.features.conv1_1.out_channels == 16
    assert model.features.conv5_3.out_channels == 128
    assert model.head.fc6.out_channels == model.head.fc7.out_channels == 256
    assert model.head.fc8.out_channels == 21
    assert len(model.layers()) == len(_meta("DeepLab-LargeFOV").layers())


@pytest.mark.slow  # seconds: `make unit` leaves it out
def test_fully_convolutional_vgg16_reproduces_torchvision_logits(vgg_state):
    torchvision = pytest.importorskip("torchvision")
    reference = torchvision.models.vgg16(weights=None).eval()
    reference.load_state_dict(vgg_state)
    with torch.device("meta"):
        model = vgg16_fully_convolutional()
    model = load_vgg16(model.to_empty(device="cpu"), vgg_state).eval()
    torch.manual_seed(1)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        expected, scores = reference(x), model(x)
    assert scores.shape == (1, 1000, 1, 1)
    torch.testing.assert_close(scores.flatten(1), expected, rtol=1e-4, atol=1e-5)
    assert receptive_field(model.layers()) == 404  # the paper's "404x404" (section 3.1)


def test_decimation_taps():
    assert decimation_taps(7) == list(range(7))
    assert decimation_taps(4) == [0, 2, 4, 6]
    assert decimation_taps(3) == [0, 3, 6]
    with pytest.raises(ValueError, match="cannot decimate"):
        decimation_taps(5)
    assert channel_indices(4096, 1024).tolist() == list(range(0, 4096, 4))


@pytest.mark.parametrize("name", PAPER_VARIANTS)
def test_decimated_fc6_is_the_original_on_the_kept_taps(name, vgg_state):
    model = load_vgg16(deeplab(name, width=SMALL), vgg_state)
    fc6 = vgg_state[torchvision_keys()["fc6"] + ".weight"].reshape(4096, 512, 7, 7)
    head = model.head
    keep6 = channel_indices(4096, head.fc6.out_channels)
    keep5 = channel_indices(512, model.features.conv5_3.out_channels)
    taps = decimation_taps(head.fc6.kernel_size[0])
    expected = fc6[keep6][:, keep5][:, :, taps][:, :, :, taps]
    assert torch.equal(head.fc6.weight, expected)
    # a (k - 1)-spaced decimated kernel at rate 4 (7 - 1) / (k - 1) samples exactly the kept
    # taps of the 7x7 kernel at rate 4 (DeepLab-4x4, LargeFOV; DeepLab-7x7 trivially)
    if name != "DeepLab":
        masked = torch.zeros_like(expected.new_zeros(expected.shape[:2] + (7, 7)))
        grid = torch.tensor(taps)
        masked[:, :, grid[:, None], grid[None, :]] = expected
        x = torch.randn(1, expected.shape[1], 30, 30)
        full = F.conv2d(x, masked, padding=12, dilation=4)
        rate = head.fc6.dilation[0]
        assert rate == 4 * 6 // (len(taps) - 1)
        ours = F.conv2d(x, head.fc6.weight, padding=head.fc6.padding, dilation=rate)
        torch.testing.assert_close(ours, full)


@pytest.mark.parametrize("name", ASPP_CHANNELS)
def test_every_aspp_branch_starts_from_vgg16s_fc6_and_fc7(name, vgg_state):
    model = deeplab(name, width=SMALL)
    before = [head.fc8.weight.clone() for head in model.heads()]
    load_vgg16(model, vgg_state)
    channels = model.heads()[0].fc6.out_channels
    keep6 = channel_indices(4096, channels)
    keep5 = channel_indices(512, model.features.conv5_3.out_channels)
    taps = decimation_taps(3)
    fc6 = vgg_state["classifier.0.weight"].reshape(4096, 512, 7, 7)
    expected6 = fc6[keep6][:, keep5][:, :, taps][:, :, :, taps]  # (C6, C5, 3, 3)
    expected7 = vgg_state["classifier.3.weight"][keep6][:, keep6]  # (C7, C6)
    masked = expected6.new_zeros(expected6.shape[:2] + (7, 7))
    grid = torch.tensor(taps)
    masked[:, :, grid[:, None], grid[None, :]] = expected6
    x = torch.randn(1, expected6.shape[1], 30, 30)
    heads = model.heads()
    assert [head.fc6.dilation[0] for head in heads] == ASPP_RATES
    for head, fc8_before, rate in zip(heads, before, ASPP_RATES, strict=True):
        conv6, conv7, conv8 = head.fc6, head.fc7, head.fc8
        assert torch.equal(conv6.weight, expected6)
        assert torch.equal(conv6.bias, vgg_state["classifier.0.bias"][keep6])
        assert torch.equal(conv7.weight[:, :, 0, 0], expected7)
        # 3 taps at rate r sample the 7x7 kernel at rate r / 3 on its kept taps (as LargeFOV)
        full = F.conv2d(x, masked, padding=rate, dilation=rate // 3)
        ours = F.conv2d(x, conv6.weight, padding=conv6.padding, dilation=conv6.dilation)
        torch.testing.assert_close(ours, full)
        assert torch.equal(conv8.weight, fc8_before)  # fc8 stays new in every branch
        assert conv8.weight.std().item() == pytest.approx(0.01, rel=0.1)
    assert not torch.equal(heads[0].fc8.weight, heads[1].fc8.weight)  # drawn independently


def test_largefov_decimates_fc7_channels_on_both_sides(vgg_state):
    model = load_vgg16(deeplab("DeepLab-LargeFOV"), vgg_state)
    fc7 = vgg_state["classifier.3.weight"]
    assert torch.equal(model.head.fc7.weight[:, :, 0, 0], fc7[::4, ::4])
    assert torch.equal(model.head.fc6.bias, vgg_state["classifier.0.bias"][::4])
    assert torch.equal(model.features.conv3_2.weight, vgg_state["features.12.weight"])


def test_the_head_is_a_module_and_aspp_one_head_per_branch():
    head = [f"head.{layer}.{p}" for layer in ("fc6", "fc7", "fc8") for p in ("weight", "bias")]
    for name in TABLE2_PARAMS:
        keys = list(_meta(name).state_dict())
        assert [k for k in keys if not k.startswith("features.")] == head, name
        assert isinstance(_meta(name).head, Head)
    aspp = _meta("DeepLab-ASPP")
    assert isinstance(aspp.head, ASPP) and aspp.heads() == list(aspp.head.branches)
    assert [k for k in aspp.state_dict() if not k.startswith("features.")] == [
        f"head.branches.{branch}.{layer}.{p}"
        for branch in range(4)
        for layer in ("fc6", "fc7", "fc8")
        for p in ("weight", "bias")
    ]
    assert list(_meta("DeepLab-ASPP").features.named_children())[-1][0] == "pool5"  # no pool5a


@pytest.mark.parametrize("name", ASPP_CHANNELS)
def test_aspp_parameter_count_is_the_backbone_plus_four_branches(name):
    convs = [c for c in VGG16_CFG if c != "M"]
    pairs = zip([3, *convs[:-1]], convs, strict=True)  # (C_in, C_out) of each 3x3 convolution
    backbone = sum((c_in * 9 + 1) * c_out for c_in, c_out in pairs)
    assert backbone == 14_714_688  # VGG-16's 13 convolutions
    c = ASPP_CHANNELS[name]
    branch = (512 * 9 + 1) * c + (c + 1) * c + (c + 1) * 21  # fc6 3x3, fc7, fc8 with biases
    assert sum(p.numel() for p in _meta(name).parameters()) == backbone + 4 * branch


def test_aspp_sums_four_branches_at_rates_6_to_24():
    torch.manual_seed(0)
    model = deeplab("DeepLab-ASPP", width=SMALL, num_classes=5).eval()
    heads = model.heads()
    rates = [(head.fc6.dilation[0], head.fc6.padding[0]) for head in heads]
    assert rates == [(r, r) for r in ASPP_RATES]  # each keeps the size
    assert all(h.fc6.out_channels == h.fc7.out_channels == 64 for h in heads)  # 1024 / 16
    x = torch.randn(1, 3, 41, 41)
    with torch.no_grad():
        features = model.features(x)  # (1, 32, 6, 6)
        branches = [h.fc8(F.relu(h.fc7(F.relu(h.fc6(features))))) for h in heads]
        torch.testing.assert_close(model(x), sum(branches))
    assert all(branch.abs().amax() > 0 for branch in branches)  # each one counts


def test_aspp_field_of_view_is_its_widest_branchs():
    layers = _meta("DeepLab-ASPP").layers()
    fc6 = next(layer for layer in layers if layer.name == "fc6")
    assert (fc6.kernel, fc6.dilation, fc6.padding) == (3, 24, 24)
    # LargeFOV's backbone without pool5a, then the rate-24 branch
    backbone = _meta("DeepLab-LargeFOV").layers()[:18]
    assert backbone[-1].name == "pool5"
    branch = [Layer("conv", 3, dilation=24, padding=24), Layer("conv", 1), Layer("conv", 1)]
    assert receptive_field(layers) == receptive_field([*backbone, *branch]) == 611
    assert receptive_field(backbone) + 2 * 24 * 8 == 611  # pool5's 227 + fc6's span at stride 8
    # the paper's measure (fc6's span on the stride-32 grid): rates 6..24 see 128..416 pixels
    assert [paper_field_of_view(3, r) for r in ASPP_RATES] == [128, 224, 320, 416]
    assert paper_field_of_view(fc6.kernel, fc6.dilation) == 416


def test_aspp_256_costs_what_largefov_costs():
    macs = {
        name: multiply_adds(_meta(name), 321, 321) for name in ("DeepLab-LargeFOV", *ASPP_CHANNELS)
    }
    # same backbone (pool5a costs no multiply-add); per score cell, the heads differ by
    per_cell = 4 * (512 * 256 * 9 + 256 * 256 + 256 * 21) - (512 * 1024 * 9 + 1024**2 + 1024 * 21)
    assert macs["DeepLab-ASPP-256"] - macs["DeepLab-LargeFOV"] == 41 * 41 * per_cell
    ratio_256 = macs["DeepLab-ASPP-256"] / macs["DeepLab-LargeFOV"]
    ratio = macs["DeepLab-ASPP"] / macs["DeepLab-LargeFOV"]
    print(f"multiply-adds at 321 vs LargeFOV: ASPP-256 {ratio_256:.3f}x, ASPP {ratio:.3f}x")
    assert 0.95 < ratio_256 < 1.05  # measured 0.974
    assert 1.5 < ratio < 1.65  # measured 1.573: four LargeFOV heads on the same backbone


def test_aspp_is_not_sequential_and_branches_are_checked():
    with pytest.raises(ValueError, match="4 parallel branches"):
        deeplab("DeepLab-ASPP-256", width=SMALL).as_sequential()
    with pytest.raises(ValueError, match=r"rate multiplier >= 1 per branch, got \(\)"):
        Variant("DeepLab-empty", fc6_kernel=3, fc6_rate=6, fc6_padding=6, branches=())


def test_conversion_rejects_feature_only_weights_and_foreign_dicts(vgg_state):
    broken = dict(vgg_state)
    broken["classifier.0.weight"] = torch.full((2, 2), float("nan"))
    with pytest.raises(ValueError, match="IMAGENET1K_V1"):
        load_vgg16(_meta("DeepLab"), broken)
    with pytest.raises(KeyError, match="missing"):
        load_vgg16(_meta("DeepLab"), {"fc.weight": torch.zeros(1)})


def test_bad_names_and_inputs():
    with pytest.raises(ValueError, match="DeepLab-LargeFOV"):
        deeplab("DeepLab-9x9")
    with pytest.raises(ValueError, match="width"):
        deeplab("DeepLab", width=0)
    model = deeplab("DeepLab", width=SMALL)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.zeros(3, 17, 17))
    with pytest.raises(ValueError, match="float"):
        model(torch.zeros(1, 3, 17, 17, dtype=torch.uint8))


ALIGNMENT_SIZES = [
    (65, 65),
    (97, 128),
    (128, 128),
    (129, 200),
    (321, 321),
    (375, 500),
    (500, 333),
    (9, 16),
    (17, 10),
]


@pytest.mark.parametrize("offset", [0, 1, 7])
@pytest.mark.parametrize("size", ALIGNMENT_SIZES)
def test_upsampling_puts_every_cell_on_its_pixel(size, offset):
    height, width = size
    h, w = (height - 1 - offset) // 8 + 1, (width - 1 - offset) // 8 + 1
    scores = torch.randn(2, 3, h, w, dtype=torch.float64)
    up = upsample_scores(scores, size, offset)
    assert up.shape == (2, 3, height, width)
    torch.testing.assert_close(up[..., offset::8, offset::8], scores, rtol=0, atol=1e-12)
    # between two centres the scores change linearly; outside the first and last they stay put
    i = min(h - 2, 3)
    if i >= 0:
        t = torch.arange(9, dtype=torch.float64) / 8
        expected = (1 - t) * scores[0, 0, i, 0] + t * scores[0, 0, i + 1, 0]
        torch.testing.assert_close(up[0, 0, offset + 8 * i : offset + 8 * i + 9, 0], expected)
    last = offset + 8 * (h - 1)
    tail, head = up[..., last:, :], up[..., : offset + 1, :]
    torch.testing.assert_close(tail, up[..., last : last + 1, :].expand_as(tail))
    torch.testing.assert_close(head, up[..., offset : offset + 1, :].expand_as(head))
    with pytest.raises(ValueError, match="stride-8 scores"):
        upsample_scores(scores[..., 1:, :], size, offset)
    with pytest.raises(ValueError, match="offset must be in"):
        upsample_scores(scores, size, 8)


@pytest.mark.parametrize("name", ["DeepLab-LargeFOV", "DeepLab"])
@pytest.mark.parametrize("size", [(41, 41), (40, 57), (33, 48)])
def test_predict_is_aligned_with_the_score_grid(size, name):
    torch.manual_seed(0)
    model = deeplab(name, width=SMALL).eval()
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        scores, upsampled = model(x), model.predict(x)
    assert upsampled.shape[-2:] == size
    o = model.label_offset
    torch.testing.assert_close(upsampled[:, :, o::8, o::8], scores)
    with pytest.raises(ValueError, match="stride-8"):
        vgg16_fully_convolutional(width=SMALL).predict(x)


def test_weight_file_checksum_is_verified(tmp_path):
    state = {"features.0.weight": torch.arange(6.0)}
    path = tmp_path / "vgg16-test.pth"
    torch.save(state, path)
    digest = file_digest(path, "sha256")
    verify(path, digest[:8], "sha256")
    with pytest.raises(ChecksumError, match="SHA256 is"):
        verify(path, "00000000" if not digest.startswith("0") else "ffffffff", "sha256")
    url = "https://example.invalid/weights/vgg16-test.pth"
    loaded = vgg16_imagenet_state_dict(
        url=url, sha256_prefix=digest[:8], folder=tmp_path, download=False
    )
    assert torch.equal(loaded["features.0.weight"], state["features.0.weight"])
    with pytest.raises(FileNotFoundError, match="download"):
        vgg16_imagenet_state_dict(url=url.replace("test", "none"), folder=tmp_path, download=False)


def test_weight_download_path_verifies_before_keeping(tmp_path):
    # a file:// URL exercises the download code without the network
    source = tmp_path / "source" / "vgg16-local.pth"
    source.parent.mkdir()
    torch.save({"classifier.6.bias": torch.ones(3)}, source)
    prefix = file_digest(source, "sha256")[:8]
    folder = tmp_path / "weights"
    loaded = vgg16_imagenet_state_dict(url=source.as_uri(), sha256_prefix=prefix, folder=folder)
    assert torch.equal(loaded["classifier.6.bias"], torch.ones(3))
    assert (folder / source.name).is_file()
    wrong = "0" * 8 if not prefix.startswith("0") else "f" * 8
    with pytest.raises(ChecksumError, match="expected"):
        vgg16_imagenet_state_dict(url=source.as_uri(), sha256_prefix=wrong, folder=tmp_path / "w2")
    assert not any((tmp_path / "w2").iterdir())  # nothing half-verified is left behind


def test_weights_already_in_the_torch_hub_cache_are_reused(tmp_path):
    hub = tmp_path / "hub"
    (hub / "checkpoints").mkdir(parents=True)
    cached = hub / "checkpoints" / "vgg16-cached.pth"
    torch.save({"classifier.0.bias": torch.zeros(2)}, cached)
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(hub))
    try:
        loaded = vgg16_imagenet_state_dict(
            url="https://example.invalid/vgg16-cached.pth",
            sha256_prefix=file_digest(cached, "sha256")[:8],
            folder=tmp_path / "weights",
            download=False,
        )
    finally:
        torch.hub.set_dir(previous)
    assert torch.equal(loaded["classifier.0.bias"], torch.zeros(2))
