"""VGG-16 as data, and its conversion into a DeepLab network (paper section 3.1).

The 13 convolutions and 5 max-poolings of VGG-16 (Simonyan & Zisserman, configuration "D") are
the list :data:`VGG16_CFG`, as in torchvision. :func:`load_vgg16` copies a torchvision
``vgg16`` state dict into any network built by :mod:`deeplab_edu.models.deeplab`:

- the 13 convolutions are copied (their output channels subsampled when ``width < 1``);
- fc6, a ``Linear(25088, 4096)``, is reshaped to a 7x7 convolution and its taps decimated to
  the variant's kernel (:func:`decimation_taps`); its channels decimated for LargeFOV;
- fc7 becomes a 1x1 convolution, decimated the same way on both sides;
- fc8 is copied only when the model has ImageNet's 1000 classes; otherwise it stays new;
- with parallel branches (DeepLab v2's ASPP), every branch's fc6, fc7 (and fc8) starts so.

:func:`vgg16_imagenet_state_dict` fetches torchvision's ``IMAGENET1K_V1`` weights once, with
a checksum, into ``runtime.data_root() / "weights"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, TypeVar

import torch
from torch import nn

from deeplab_edu import fetch, runtime

# VGG-16 ("D"): numbers are 3x3 convolutions with that many output channels, "M" a max-pooling
VGG16_CFG: tuple[int | str, ...] = (
    64,
    64,
    "M",
    128,
    128,
    "M",
    256,
    256,
    256,
    "M",
    512,
    512,
    512,
    "M",
    512,
    512,
    512,
    "M",
)
FC_CHANNELS = 4096  # width of fc6 and fc7
FC6_KERNEL = 7  # pool5 is 7x7 for a 224x224 input: fc6 sees all of it
IMAGENET_CLASSES = 1000

# torchvision's IMAGENET1K_V1 file; torchvision names files by the first 8 hex digits of SHA-256
VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
VGG16_SHA256_PREFIX = "397923af"


def layer_names() -> list[str]:
    """The names of VGG-16's layers in :data:`VGG16_CFG` order: conv1_1, conv1_2, pool1, ..."""
    names, block, index = [], 1, 1
    for entry in VGG16_CFG:
        if entry == "M":
            names.append(f"pool{block}")
            block, index = block + 1, 1
        else:
            names.append(f"conv{block}_{index}")
            index += 1
    return names


def torchvision_keys() -> dict[str, str]:
    """Our layer name -> torchvision's module prefix (``features.<i>`` / ``classifier.<i>``).

    torchvision's ``features`` puts a ReLU after each convolution, so indices count those too.
    """
    keys, position = {}, 0
    for name in layer_names():
        if name.startswith("conv"):
            keys[name] = f"features.{position}"
            position += 2  # conv, ReLU
        else:
            position += 1  # pool
    keys.update({"fc6": "classifier.0", "fc7": "classifier.3", "fc8": "classifier.6"})
    return keys


def decimation_taps(kernel: int, size: int = FC6_KERNEL) -> list[int]:
    """Which of the ``size`` taps of the original fc6 a ``kernel``-tap decimated fc6 keeps.

    Evenly spaced taps that include both ends: 7 -> 4 keeps 0, 2, 4, 6 (every 2nd), 7 -> 3
    keeps 0, 3, 6 (every 3rd). Used with a rate of 2x (resp. 3x) the original's, the decimated
    kernel samples exactly the positions of the kept taps (DeepLab-4x4, LargeFOV).

    Raises:
        ValueError: if ``kernel`` does not divide ``size - 1`` evenly or is out of range.
    """
    if kernel == size:
        return list(range(size))
    if not 2 <= kernel < size or (size - 1) % (kernel - 1) != 0:
        raise ValueError(
            f"cannot decimate a {size}-tap kernel evenly to {kernel} taps; "
            f"expected kernel - 1 dividing {size - 1} (e.g. 7, 4, 3, 2)"
        )
    step = (size - 1) // (kernel - 1)
    return list(range(0, size, step))


def channel_indices(total: int, keep: int) -> torch.Tensor:
    """Evenly spaced channel indices ``floor(i * total / keep)``; 4096 -> 1024 is every 4th.

    Raises:
        ValueError: if ``keep`` is not in 1..total.
    """
    if not 1 <= keep <= total:
        raise ValueError(f"can keep between 1 and {total} channels, got {keep}")
    return torch.arange(keep) * total // keep


class Branch(Protocol):
    """The fully connected layers of one branch, as convolutions."""

    fc6: nn.Conv2d
    fc7: nn.Conv2d
    fc8: nn.Conv2d


class Backbone(Protocol):
    """What :func:`load_vgg16` fills: a DeepLab network (or the stride-32 VGG-16)."""

    features: nn.Sequential

    def heads(self) -> Sequence[Branch]:
        """fc6, fc7 and fc8 of every parallel branch."""
        ...


Network = TypeVar("Network", bound=Backbone)


def load_vgg16(model: Network, state_dict: dict[str, torch.Tensor]) -> Network:
    """Initialise ``model`` from a torchvision VGG-16 state dict, in place.

    Args:
        model: a DeepLab network from :func:`~deeplab_edu.models.deeplab` or
            :func:`~deeplab_edu.models.vgg16_fully_convolutional`, any width.
        state_dict: ``torchvision.models.vgg16().state_dict()`` (e.g. IMAGENET1K_V1).

    Returns:
        ``model``, for chaining.

    Raises:
        KeyError: if a VGG-16 key is missing.
        ValueError: if the classifier holds NaN/inf (torchvision's ``IMAGENET1K_FEATURES``
            has no trained classifier: use ``IMAGENET1K_V1``) or a shape does not fit.
    """
    keys = torchvision_keys()
    needed = [f"{prefix}.{p}" for prefix in keys.values() for p in ("weight", "bias")]
    missing = [key for key in needed if key not in state_dict]
    if missing:
        raise KeyError(f"not a torchvision vgg16 state dict: missing {missing[:4]}")
    for name in ("fc6", "fc7"):
        weight = state_dict[f"{keys[name]}.weight"]
        if not torch.isfinite(weight).all():
            raise ValueError(
                f"VGG-16 {name} ({keys[name]}) holds NaN/inf: these are feature-only weights "
                "(IMAGENET1K_FEATURES); DeepLab needs the classifier of IMAGENET1K_V1"
            )
    keep_in = torch.arange(3)  # RGB
    with torch.no_grad():
        for name, module in model.features.named_children():
            if not name.startswith("conv") or not isinstance(module, nn.Conv2d):
                continue
            weight = state_dict[f"{keys[name]}.weight"]  # (C_out, C_in, 3, 3)
            keep_out = channel_indices(weight.shape[0], module.out_channels)
            _copy(module, weight[keep_out][:, keep_in], state_dict[f"{keys[name]}.bias"][keep_out])
            keep_in = keep_out
        # fc6: Linear(512*7*7, 4096) is a 7x7 convolution on pool5 (torchvision flattens C, H, W)
        fc6 = state_dict[f"{keys['fc6']}.weight"]
        fc6 = fc6.reshape(fc6.shape[0], -1, FC6_KERNEL, FC6_KERNEL)  # (4096, 512, 7, 7)
        fc7 = state_dict[f"{keys['fc7']}.weight"]  # (4096, 4096)
        fc8 = state_dict[f"{keys['fc8']}.weight"]
        for head in model.heads():  # one head, or ASPP's branches alike
            conv6, conv7, conv8 = head.fc6, head.fc7, head.fc8
            taps = torch.tensor(decimation_taps(conv6.kernel_size[0]))
            keep6 = channel_indices(fc6.shape[0], conv6.out_channels)
            weight6 = fc6[keep6][:, keep_in][:, :, taps][:, :, :, taps]  # (C6, C5, k, k)
            _copy(conv6, weight6, state_dict[f"{keys['fc6']}.bias"][keep6])
            keep7 = channel_indices(fc7.shape[0], conv7.out_channels)
            weight7 = fc7[keep7][:, keep6, None, None]  # (C7, C6, 1, 1)
            _copy(conv7, weight7, state_dict[f"{keys['fc7']}.bias"][keep7])
            if conv8.out_channels == fc8.shape[0]:
                _copy(conv8, fc8[:, keep7, None, None], state_dict[f"{keys['fc8']}.bias"])
    return model


def _copy(conv: torch.nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor) -> None:
    if conv.weight.shape != weight.shape:
        raise ValueError(
            f"VGG-16 weight of shape {tuple(weight.shape)} does not fit a layer of shape "
            f"{tuple(conv.weight.shape)}"
        )
    if conv.bias is None:
        raise ValueError("expected a layer with a bias, as VGG-16's have, got one without")
    conv.weight.copy_(weight)
    conv.bias.copy_(bias)


def vgg16_imagenet_state_dict(
    *,
    url: str = VGG16_URL,
    sha256_prefix: str = VGG16_SHA256_PREFIX,
    folder: str | Path | None = None,
    download: bool = True,
) -> dict[str, torch.Tensor]:
    """torchvision's ``VGG16_Weights.IMAGENET1K_V1`` state dict, downloaded once and verified.

    The file (528 MB) is kept in ``folder`` (default ``runtime.data_root() / "weights"``) and
    its checksum verified every time it is loaded. A copy that torchvision already downloaded
    (in ``torch.hub.get_dir() / "checkpoints"``) is used instead of downloading again. Chapters
    call this in full mode only.

    Args:
        url: where to download the file from.
        sha256_prefix: the leading hex digits of the file's SHA-256.
        folder: where to keep the file.
        download: when False, a missing file is an error instead of a download.

    Returns:
        The state dict (keys ``features.*`` and ``classifier.*``).

    Raises:
        FileNotFoundError: if the file is absent and ``download`` is False.
        ConnectionError: if the download fails (says where to put a copy fetched by hand).
        ChecksumError: if the checksum does not match (a ``ValueError``).
    """
    folder = Path(folder) if folder is not None else runtime.data_root() / "weights"
    path = folder / url.rsplit("/", 1)[-1]
    hub_copy = Path(torch.hub.get_dir()) / "checkpoints" / path.name
    if not path.is_file() and hub_copy.is_file():  # torchvision already downloaded it
        path = hub_copy
    if not path.is_file() and not download:
        raise FileNotFoundError(
            f"VGG-16 ImageNet weights not found at {path}; download {url} there "
            "(or call with download=True)"
        )
    # downloads to a temporary name, verifies, renames; an existing file is verified too
    fetch.download(url, path, sha256_prefix, algorithm="sha256")
    return torch.load(path, map_location="cpu", weights_only=True)
