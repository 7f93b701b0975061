"""The DeepLab family: Table 2's parameter counts, output sizes and stride, the conversion from
torchvision's VGG-16 (exact where it can be), decimation, the multi-scale head, weight files."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from deeplab_edu.fetch import ChecksumError, file_digest, verify
from deeplab_edu.models import (
    VARIANTS,
    deeplab,
    load_vgg16,
    output_size,
    output_stride,
    receptive_field,
    upsample_scores,
    vgg16_fully_convolutional,
    vgg16_imagenet_state_dict,
)
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


@pytest.mark.parametrize("name", VARIANTS)
def test_parameter_counts_match_table_2(name):
    params = sum(p.numel() for p in _meta(name).parameters())
    assert round(params / 1e6, 1) == TABLE2_PARAMS[name]


@pytest.mark.parametrize("name", VARIANTS)
def test_output_stride_is_8_and_aligned_sizes(name):
    model = _meta(name)
    assert output_stride(model.layers()) == 8
    assert output_size(model.layers(), 306) == 39
    assert output_size(model.layers(), 321) == 41
    assert output_size(model.layers(), 513) == 65


@pytest.mark.parametrize(("name", "size", "expected"), [
    ("DeepLab", 306, 39), ("DeepLab-LargeFOV", 321, 41), ("DeepLab-LargeFOV", 513, 65),
])  # fmt: skip
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
    model = deeplab(name, width=SMALL, msc=msc, num_classes=5)
    x = torch.randn(2, 3, 57, 49)
    scores = model(x)
    assert scores.shape == (2, 5, 8, 7)  # ceil(57 / 8), ceil(49 / 8)
    assert model.predict(x).shape == (2, 5, 57, 49)
    scores.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert (model.msc is not None) == msc


def test_new_layers_are_named_fc8_and_msc(vgg_state):
    model = deeplab("DeepLab-LargeFOV", width=SMALL, msc=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    load_vgg16(model, vgg_state)
    for key, value in model.state_dict().items():
        new = key.startswith(("fc8.", "msc."))
        if key.endswith(".weight"):  # (torchvision's VGG biases start at 0 like ours)
            assert torch.equal(value, before[key]) == new, key
    assert model.fc8.out_channels == 21 and model.msc.out_channels == 5 * 8
    assert model.fc8.weight.std().item() == pytest.approx(0.01, rel=0.1)


def test_width_scales_every_channel_but_the_classes():
    model = _meta("DeepLab-LargeFOV", width=0.25)
    assert model.features.conv1_1.out_channels == 16
    assert model.features.conv5_3.out_channels == 128
    assert model.fc6.out_channels == model.fc7.out_channels == 256
    assert model.fc8.out_channels == 21
    assert len(model.layers()) == len(_meta("DeepLab-LargeFOV").layers())


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


@pytest.mark.parametrize("name", VARIANTS)
def test_decimated_fc6_is_the_original_on_the_kept_taps(name, vgg_state):
    model = load_vgg16(deeplab(name, width=SMALL), vgg_state)
    fc6 = vgg_state[torchvision_keys()["fc6"] + ".weight"].reshape(4096, 512, 7, 7)
    keep6 = channel_indices(4096, model.fc6.out_channels)
    keep5 = channel_indices(512, model.features.conv5_3.out_channels)
    taps = decimation_taps(model.fc6.kernel_size[0])
    expected = fc6[keep6][:, keep5][:, :, taps][:, :, :, taps]
    assert torch.equal(model.fc6.weight, expected)
    # a (k - 1)-spaced decimated kernel at rate 4 (7 - 1) / (k - 1) samples exactly the kept
    # taps of the 7x7 kernel at rate 4 (DeepLab-4x4, LargeFOV; DeepLab-7x7 trivially)
    if name != "DeepLab":
        masked = torch.zeros_like(expected.new_zeros(expected.shape[:2] + (7, 7)))
        grid = torch.tensor(taps)
        masked[:, :, grid[:, None], grid[None, :]] = expected
        x = torch.randn(1, expected.shape[1], 30, 30)
        full = F.conv2d(x, masked, padding=12, dilation=4)
        rate = model.fc6.dilation[0]
        assert rate == 4 * 6 // (len(taps) - 1)
        ours = F.conv2d(x, model.fc6.weight, padding=model.fc6.padding, dilation=rate)
        torch.testing.assert_close(ours, full)


def test_largefov_decimates_fc7_channels_on_both_sides(vgg_state):
    model = load_vgg16(deeplab("DeepLab-LargeFOV"), vgg_state)
    fc7 = vgg_state["classifier.3.weight"]
    assert torch.equal(model.fc7.weight[:, :, 0, 0], fc7[::4, ::4])
    assert torch.equal(model.fc6.bias, vgg_state["classifier.0.bias"][::4])
    assert torch.equal(model.features.conv3_2.weight, vgg_state["features.12.weight"])


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


ALIGNMENT_SIZES = [(65, 65), (97, 128), (128, 128), (129, 200), (321, 321), (375, 500),
                   (500, 333), (9, 16), (17, 10)]  # fmt: skip


@pytest.mark.parametrize("size", ALIGNMENT_SIZES)
def test_upsampling_puts_every_cell_on_its_pixel(size):
    height, width = size
    h, w = (height - 1) // 8 + 1, (width - 1) // 8 + 1
    scores = torch.randn(2, 3, h, w, dtype=torch.float64)
    up = upsample_scores(scores, size)
    assert up.shape == (2, 3, height, width)
    torch.testing.assert_close(up[..., ::8, ::8], scores, rtol=0, atol=1e-12)
    # between two centres the scores change linearly; beyond the last centre they stay put
    i = min(h - 2, 3)
    if i >= 0:
        t = torch.arange(9, dtype=torch.float64) / 8
        expected = (1 - t) * scores[0, 0, i, 0] + t * scores[0, 0, i + 1, 0]
        torch.testing.assert_close(up[0, 0, 8 * i : 8 * i + 9, 0], expected)
    tail = up[..., 8 * (h - 1) :, :]
    torch.testing.assert_close(tail, up[..., 8 * (h - 1) : 8 * (h - 1) + 1, :].expand_as(tail))
    with pytest.raises(ValueError, match="stride-8 scores"):
        upsample_scores(scores[..., 1:, :], size)


@pytest.mark.parametrize("size", [(41, 41), (40, 57), (33, 48)])
def test_predict_is_aligned_with_the_score_grid(size):
    torch.manual_seed(0)
    model = deeplab("DeepLab-LargeFOV", width=SMALL).eval()
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        scores, upsampled = model(x), model.predict(x)
    assert upsampled.shape[-2:] == size
    torch.testing.assert_close(upsampled[:, :, ::8, ::8], scores)
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
    loaded = vgg16_imagenet_state_dict(url=url, sha256_prefix=digest[:8], folder=tmp_path,
                                       download=False)  # fmt: skip
    assert torch.equal(loaded["features.0.weight"], state["features.0.weight"])
    with pytest.raises(FileNotFoundError, match="download"):
        vgg16_imagenet_state_dict(url=url.replace("test", "none"), folder=tmp_path,
                                  download=False)  # fmt: skip


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
