"""The DeepLab network family: VGG-16 made fully convolutional with output stride 8 (section 3).

The recipe, applied to VGG-16 (:data:`~deeplab_edu.models.vgg.VGG16_CFG`):

1. fully connected fc6/fc7/fc8 become convolutions (7x7 for fc6, 1x1 for fc7 and fc8);
2. pool4 and pool5 keep stride 1 instead of 2, so the output stride is 8 instead of 32;
3. the layers after them look at their input through holes: conv5_x with rate 2, fc6 with
   rate 4 (or more, for a larger field of view; Table 2).

Pooling, as released (see the chapter "From VGG-16 to DeepLab" and paper facts): the plain
DeepLab keeps VGG-16's 2x2 max-poolings with padding 1 for pool1-pool3, a 2x2 pool4 at stride 1
without padding and a 3x3 pool5 (its prototxt); its output cell ``i`` is then centred half a
pixel after pixel ``8 i`` and learns the label of pixel ``8 i + 1`` (:attr:`DeepLab.label_offset`,
the prototxt's ``label_shrink`` with ``pad_beg: -1``). LargeFOV's 3x3 max-poolings (stride 2,
padding 1 for pool1-pool3; stride 1, padding 1 for pool4-pool5) centre cell ``i`` on pixel
``8 i``; LargeFOV adds a 3x3 stride-1 average pooling before fc6, as in its prototxt. No
released configuration of DeepLab-7x7 or DeepLab-4x4 is known: they keep LargeFOV's poolings
(our choice), as does DeepLab-MSc's released configuration.

DeepLab v2's atrous spatial pyramid pooling (Chen et al., TPAMI 2017, arXiv:1606.00915; its
DeepLab-ASPP-L on VGG-16) keeps LargeFOV's backbone without the average pooling and replaces
the head by four parallel branches, one per rate 6, 12, 18, 24: fc6 (3x3 at that rate,
1024 channels), fc7 (1x1, 1024), fc8 (1x1, the classes), with ReLU and dropout as in v1; the
four branches' class scores are summed. "DeepLab-ASPP-256" is ours, not v2's: the same branches
with 256 channels each, so that the head costs about what LargeFOV's does per score cell
(4 x (512 x 256 x 9 + 256 x 256) against 512 x 1024 x 9 + 1024 x 1024 multiply-adds). v2's ASPP
has both more rates and four times LargeFOV's head; at equal cost, a comparison with LargeFOV
measures the pyramid of rates alone.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from deeplab_edu.models.field import (
    OUTPUT_STRIDE,
    Layer,
    first_centre,
    output_stride,
    score_cells,
    side,
)
from deeplab_edu.models.vgg import FC_CHANNELS, IMAGENET_CLASSES, VGG16_CFG, layer_names

MSC_PREFIX = "msc."  # the multi-scale branches and their classifier (DeepLab-MSc's second stage)


def is_new_layer(name: str) -> bool:
    """Whether parameter ``name`` belongs to a layer DeepLab adds to VGG-16 (x10 learning rate,
    not taken from ImageNet): fc8 of every branch ("head.fc8.weight", ASPP's
    "head.branches.2.fc8.bias") and DeepLab-MSc's multi-scale head ("msc.*")."""
    return name.startswith(MSC_PREFIX) or "fc8" in name.split(".")


_MAX_S2 = Layer("max", kernel=3, stride=2, padding=1)
_MAX_S1 = Layer("max", kernel=3, stride=1, padding=1)
_DEEPLAB_POOLS = (_MAX_S2, _MAX_S2, _MAX_S2, _MAX_S1, _MAX_S1)  # LargeFOV's (released)
_TWO = Layer("max", kernel=2, stride=2, padding=1)
_RELEASED_DEEPLAB_POOLS = (_TWO, _TWO, _TWO, Layer("max", kernel=2), _MAX_S1)  # plain DeepLab's
MSC_CHANNELS = 128  # each multi-scale branch: 128 3x3 filters then 128 1x1 filters
# the released DeepLab-MSc initialisation (Gaussian standard deviations, biases 0): the
# branches' two convolutions 0.001, except the pool4 branch's 1x1 at 0.005; their class scores
# (one 1x1 classifier per branch there, here one over the five: the same function) 0.01
MSC_BRANCH_STD, MSC_POOL4_FC_STD, MSC_CLASSIFIER_STD = 1e-3, 5e-3, 1e-2


@dataclass(frozen=True)
class Variant:
    """Everything that distinguishes one member of the family (defaults are the paper's).

    Attributes:
        name: the paper's name.
        fc6_kernel: fc6's kernel size (7 in VGG-16, decimated to 4 or 3).
        fc6_rate: fc6's atrous rate ("input stride" in Table 2).
        fc6_padding: fc6's padding, rate (kernel - 1) / 2 to keep the size.
        fc_channels: fc6 and fc7 width (4096, or 1024 for LargeFOV), per branch.
        pools: pool1..pool5.
        crop: the side of the training crops (released: 321 = 32k - 31 for LargeFOV, 306 =
            8k + 2 for the plain DeepLab).
        conv5_rate: the rate of conv5_1..conv5_3 (2 once pool4 no longer subsamples).
        avg_pool: the extra pooling before fc6 (LargeFOV), or None.
        dropout: dropout probability after fc6 and fc7.
        branches: one parallel fc6-fc7-fc8 branch per entry m, its fc6 at rate m x fc6_rate
            with padding m x fc6_padding; their scores are summed. (1,) is v1's single head;
            (1, 2, 3, 4) with fc6_rate 6 is v2's ASPP at rates 6, 12, 18, 24.
    """

    name: str
    fc6_kernel: int
    fc6_rate: int
    fc6_padding: int
    fc_channels: int = FC_CHANNELS
    pools: tuple[Layer, ...] = _DEEPLAB_POOLS
    crop: int = 321
    conv5_rate: int = 2
    avg_pool: Layer | None = None
    dropout: float = 0.5
    branches: tuple[int, ...] = (1,)

    def __post_init__(self) -> None:
        if not self.branches or any(m < 1 for m in self.branches):
            raise ValueError(
                f"Variant.branches must hold one rate multiplier >= 1 per branch, "
                f"got {self.branches!r}"
            )


# DeepLab v2's ASPP-L: LargeFOV's backbone without pool5a, fc6 at rates 6 x (1, 2, 3, 4)
_ASPP = Variant(
    "DeepLab-ASPP", fc6_kernel=3, fc6_rate=6, fc6_padding=6, fc_channels=1024, branches=(1, 2, 3, 4)
)
_PAPER = (  # the paper's four (Table 2)
    Variant(
        "DeepLab",
        fc6_kernel=4,
        fc6_rate=4,
        fc6_padding=6,
        pools=_RELEASED_DEEPLAB_POOLS,
        crop=306,
    ),
    Variant("DeepLab-7x7", fc6_kernel=7, fc6_rate=4, fc6_padding=12),
    Variant("DeepLab-4x4", fc6_kernel=4, fc6_rate=8, fc6_padding=12),
    Variant(
        "DeepLab-LargeFOV",
        fc6_kernel=3,
        fc6_rate=12,
        fc6_padding=12,
        fc_channels=1024,
        avg_pool=Layer("avg", kernel=3, stride=1, padding=1),
    ),
)
_AFTER = (  # beyond the paper: v2's ASPP, and ours at LargeFOV's cost (module docstring)
    _ASPP,
    replace(_ASPP, name="DeepLab-ASPP-256", fc_channels=256),
)
_VARIANTS = {v.name: v for v in (*_PAPER, *_AFTER)}
VARIANTS: tuple[str, ...] = tuple(_VARIANTS)
PAPER_VARIANTS: tuple[str, ...] = tuple(v.name for v in _PAPER)  # Table 2's

# The original classifier as a fully convolutional network: 2x2 stride-2 poolings, no holes,
# fc6 7x7 without padding (a 224x224 input gives 1x1 scores, equal to torchvision's logits).
VGG16_FULLY_CONVOLUTIONAL = Variant(
    "VGG-16",
    fc6_kernel=7,
    fc6_rate=1,
    fc6_padding=0,
    pools=(Layer("max", kernel=2, stride=2),) * 5,
    conv5_rate=1,
)


def variant(name: str) -> Variant:
    """The :class:`Variant` called ``name`` (one of :data:`VARIANTS`).

    Raises:
        ValueError: for an unknown name, listing the known ones.
    """
    if name not in _VARIANTS:
        raise ValueError(f"unknown DeepLab variant {name!r}; expected one of {VARIANTS}")
    return _VARIANTS[name]


def scaled(channels: int, width: float) -> int:
    """A channel count scaled by ``width`` (at least 1)."""
    return max(1, round(channels * width))


class MultiScaleHead(nn.Module):
    """DeepLab-MSc (paper section 4.3): a 3x3 then 1x1 MLP on the input and on pool1..pool4.

    Each branch's 3x3 convolution has the stride that brings its input to the network's output
    stride, so that the five 128-channel outputs line up with fc7's output cell for cell. The
    paper concatenates them to fc7's output before fc8 (5 x 128 = 640 extra channels); the
    released code gives each branch its own 1x1 classifier and sums the six class scores. We
    give the five branches one 1x1 classifier over their concatenation (with one bias, the sum
    of the five), added to fc8's scores: all three are the same function (fc8 over the
    concatenation is fc8 over fc7's output plus a classifier over the branches).
    """

    def __init__(
        self,
        in_channels: list[int],
        strides: list[int],
        *,
        num_classes: int,
        width: float,
        dropout: float,
    ) -> None:
        super().__init__()
        hidden = scaled(MSC_CHANNELS, width)
        self.out_channels = hidden * len(in_channels)
        self.branches = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(c_in, hidden, 3, stride=stride, padding=1),
                nn.ReLU(inplace=True),
                nn.Dropout(dropout),
                nn.Conv2d(hidden, hidden, 1),
                nn.ReLU(inplace=True),
                nn.Dropout(dropout),
            )
            for c_in, stride in zip(in_channels, strides, strict=True)
        )
        self.classifier = nn.Conv2d(self.out_channels, num_classes, 1)

    def forward(self, taps: list[torch.Tensor]) -> torch.Tensor:
        """Class scores ``(B, C, h, w)`` from the input and pool1..pool4 (``taps``)."""
        # (B, 128, h, w) per branch: ceil(H / 2^k) / (8 / 2^k) cells is ceil(H / 8) for every tap
        features = torch.cat(
            [branch(tap) for branch, tap in zip(self.branches, taps, strict=True)], dim=1
        )  # (B, 5 * 128, h, w)
        return self.classifier(features)  # (B, C, h, w)


class Head(nn.Module):
    """VGG-16's fully connected layers as convolutions, on one branch: fc6 (atrous) -> ReLU ->
    dropout -> fc7 (1x1) -> ReLU -> dropout -> fc8 (1x1, the new classifier).

    Args:
        in_channels: pool5's channels.
        channels: fc6's and fc7's (4096 in VGG-16, 1024 in LargeFOV, times the width).
        num_classes: fc8's.
        kernel, rate, padding: fc6's kernel size, atrous rate and zero padding.
        dropout: the probability of both dropouts (0.5 in the paper).
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        num_classes: int,
        *,
        kernel: int,
        rate: int,
        padding: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.fc6 = nn.Conv2d(in_channels, channels, kernel, padding=padding, dilation=rate)
        self.drop6 = nn.Dropout(dropout)
        self.fc7 = nn.Conv2d(channels, channels, 1)
        self.drop7 = nn.Dropout(dropout)
        self.fc8 = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """pool5's output ``(B, C_in, h, w)`` -> class scores ``(B, num_classes, h, w)``."""
        y = self.drop6(F.relu(self.fc6(x)))  # (B, channels, h, w)
        y = self.drop7(F.relu(self.fc7(y)))  # (B, channels, h, w)
        return self.fc8(y)


class ASPP(nn.Module):
    """DeepLab v2's atrous spatial pyramid pooling: a :class:`Head` per fc6 rate on the same
    pool5 features, their class scores summed."""

    def __init__(self, branches: Iterable[Head]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """pool5's output -> the sum of the branches' class scores."""
        scores = [branch(x) for branch in self.branches]
        return sum(scores[1:], scores[0])


class DeepLab(nn.Module):
    """A DeepLab network (or the fully convolutional VGG-16 it starts from): ``features``
    (conv1_1 .. pool5) and ``head``, one :class:`Head` (DeepLab v1, state-dict keys
    "head.fc6.weight", ...) or an :class:`ASPP` of several ("head.branches.0.fc6.weight", ...).

    Attributes:
        variant: the variant's name, e.g. "DeepLab-LargeFOV".
        config: its :class:`Variant`.
        width: the channel multiplier (1.0 = the paper's network).
        features: conv1_1 .. pool5 (and LargeFOV's extra average pooling "pool5a").
        head: fc6, fc7 (the convolutionalised fully connected layers, initialised from VGG-16)
            and fc8 (the new classifier, trained with 10x the learning rate), on every branch.
        msc: the multi-scale branches and their classifier (:class:`MultiScaleHead`), or None;
            their scores are added to fc8's (to the sum of the branches' for ASPP).
        label_offset: cell ``i`` scores pixel ``8 i + label_offset`` (0 with 3x3 poolings; 1
            with the plain DeepLab's 2x2, whose cells are centred at ``8 i + 0.5``: the release
            takes the pixel after the centre, ``pad_beg: -1``).
    """

    def __init__(self, config: Variant, *, num_classes: int, width: float, msc: bool) -> None:
        super().__init__()
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
            raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
        if not 0 < width <= 1:
            raise ValueError(f"width must be in (0, 1], got {width}")
        if msc and config.pools != _DEEPLAB_POOLS:
            raise ValueError(
                f"the multi-scale head needs 3x3 poolings, which line its five taps up cell for "
                f"cell (as the released DeepLab-MSc has); {config.name} has the released 2x2 "
                f"poolings; expected one of "
                f"{tuple(v.name for v in _VARIANTS.values() if v.pools == _DEEPLAB_POOLS)}"
            )
        self.variant, self.config, self.width = config.name, config, width
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        channels, pools, tap_channels, tap_strides, stride = 3, iter(config.pools), [3], [1], 1
        for name, entry in zip(layer_names(), VGG16_CFG, strict=True):
            if entry == "M":
                pool = next(pools)
                layers[name] = nn.MaxPool2d(pool.kernel, pool.stride, pool.padding)
                stride *= pool.stride
                tap_channels.append(channels)
                tap_strides.append(stride)
                continue
            rate = config.conv5_rate if name.startswith("conv5") else 1
            out = scaled(int(entry), width)
            layers[name] = nn.Conv2d(channels, out, 3, padding=rate, dilation=rate)
            layers[name.replace("conv", "relu")] = nn.ReLU(inplace=True)
            channels = out
        if config.avg_pool is not None:
            pool = config.avg_pool
            layers["pool5a"] = nn.AvgPool2d(pool.kernel, pool.stride, pool.padding)
        self.features = nn.Sequential(layers)
        heads = [
            Head(
                channels,
                scaled(config.fc_channels, width),
                num_classes,
                kernel=config.fc6_kernel,
                rate=config.fc6_rate * m,
                padding=config.fc6_padding * m,
                dropout=config.dropout,
            )
            for m in config.branches
        ]
        self.head: Head | ASPP = heads[0] if len(heads) == 1 else ASPP(heads)
        self.msc = (
            MultiScaleHead(
                tap_channels[:5],
                [stride // s for s in tap_strides[:5]],
                num_classes=num_classes,
                width=width,
                dropout=config.dropout,
            )
            if msc
            else None
        )
        self.label_offset = math.ceil(first_centre(self.layers()))
        self.reset_parameters()

    def heads(self) -> list[Head]:
        """The :class:`Head` of every parallel branch: one for v1, one per rate for ASPP."""
        if isinstance(self.head, ASPP):
            return [cast(Head, branch) for branch in self.head.branches]
        return [self.head]

    def reset_parameters(self) -> None:
        """Initialise as if no VGG-16 weights were loaded: convolutions as torchvision's VGG
        (He normal, fan-out), fc8 (every branch's) Gaussian with std 0.01 (paper), biases 0,
        and the multi-scale head as the released DeepLab-MSc configuration does
        (:data:`MSC_BRANCH_STD`, :data:`MSC_POOL4_FC_STD`, :data:`MSC_CLASSIFIER_STD`): small,
        so that stage two starts close to the stage-one network."""
        for conv in self._convolutions():
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)
        for head in self.heads():
            nn.init.normal_(head.fc8.weight, std=0.01)
        if self.msc is not None:
            for tap, branch in enumerate(self.msc.branches):  # image, pool1, ..., pool4
                conv, fc = (m for m in branch.modules() if isinstance(m, nn.Conv2d))  # 3x3, 1x1
                nn.init.normal_(conv.weight, std=MSC_BRANCH_STD)
                nn.init.normal_(fc.weight, std=MSC_POOL4_FC_STD if tap == 4 else MSC_BRANCH_STD)
            nn.init.normal_(self.msc.classifier.weight, std=MSC_CLASSIFIER_STD)

    def _convolutions(self) -> list[nn.Conv2d]:
        """Every convolution, in the order the random initialisation draws them: the features,
        every branch's fc6, every fc7, the multi-scale head's, every fc8 (the order of the
        networks the package ships, trained before the head became a module)."""
        heads, msc = self.heads(), [] if self.msc is None else list(self.msc.modules())
        return [
            *(m for m in self.features.modules() if isinstance(m, nn.Conv2d)),
            *(head.fc6 for head in heads),
            *(head.fc7 for head in heads),
            *(m for m in msc if isinstance(m, nn.Conv2d)),
            *(head.fc8 for head in heads),
        ]

    def layers(self) -> list[Layer]:
        """The network as a list of :class:`~deeplab_edu.models.field.Layer` (for the
        receptive-field calculator): every convolution and pooling up to fc8.

        For ASPP, fc6 is the widest branch's (rate 24): the branches are centred on the same
        cell and their scores summed, so the network sees the union of their fields, the widest.
        """
        fc6 = max((head.fc6 for head in self.heads()), key=lambda conv: conv.dilation[0])
        out = []
        for name, module in [*self.features.named_children(), ("fc6", fc6)]:
            if isinstance(module, nn.Conv2d):
                out.append(
                    Layer(
                        "conv",
                        kernel=module.kernel_size[0],
                        stride=module.stride[0],
                        dilation=module.dilation[0],
                        padding=side(module.padding),
                        name=name,
                    )
                )
            elif isinstance(module, nn.MaxPool2d | nn.AvgPool2d):
                kind = "max" if isinstance(module, nn.MaxPool2d) else "avg"
                sizes = (side(module.kernel_size), side(module.stride), side(module.padding))
                out.append(Layer(kind, sizes[0], sizes[1], 1, sizes[2], name))
        return [*out, Layer("conv", 1, name="fc7"), Layer("conv", 1, name="fc8")]

    def as_sequential(self) -> nn.Sequential:
        """The network as one ``nn.Sequential`` for inference (no dropout, no MSc head), sharing
        this model's weights; used by :func:`~deeplab_edu.models.stitch.make_atrous`."""
        if self.msc is not None:
            raise ValueError("as_sequential: the multi-scale head is not a sequential network")
        if len(self.config.branches) > 1:
            raise ValueError(
                f"as_sequential: {self.variant}'s {len(self.config.branches)} parallel "
                "branches (ASPP) are not a sequential network; expected one branch"
            )
        (head,) = self.heads()
        return nn.Sequential(*self.features, head.fc6, nn.ReLU(), head.fc7, nn.ReLU(), head.fc8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scores at the output stride (8 for DeepLab, 32 for VGG-16).

        Args:
            x: normalised images, (B, 3, H, W).

        Returns:
            Class scores (B, num_classes, h, w), h = ceil(H / OUTPUT_STRIDE) for aligned sizes.

        Raises:
            ValueError: if ``x`` is not a float (B, 3, H, W) tensor.
        """
        if x.ndim != 4 or x.shape[1] != 3 or not x.is_floating_point():
            raise ValueError(
                f"DeepLab expects normalised float images (B, 3, H, W), got "
                f"{x.dtype} of shape {tuple(x.shape)}"
            )
        taps = [x]
        for name, module in self.features.named_children():
            x = module(x)
            if name in ("pool1", "pool2", "pool3", "pool4"):
                taps.append(x)
        scores = self.head(x)  # (B, C, h, w): ASPP sums its branches'
        if self.msc is not None:
            scores = scores + self.msc(taps)  # (B, C, h, w): fc8 over [fc7, 640 MSc channels]
        return scores

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Scores bilinearly upsampled to the input size (the paper's inference, before the CRF).

        Returns:
            (B, num_classes, H, W) scores, cell ``i, j`` on pixel ``8 i + o, 8 j + o``,
            ``o`` = :attr:`label_offset` (:func:`upsample_scores`).

        Raises:
            ValueError: for the stride-32 VGG-16.
        """
        if output_stride(self.layers()) != OUTPUT_STRIDE:
            raise ValueError(f"predict needs a stride-8 DeepLab variant, not {self.variant!r}")
        scores = self.forward(x)  # (B, C, h, w)
        size = (x.shape[-2], x.shape[-1])
        return upsample_scores(scores, size, offset=self.label_offset)  # (B, C, H, W)


def upsample_scores(scores: torch.Tensor, size: tuple[int, int], offset: int = 0) -> torch.Tensor:
    """Bilinear upsampling of stride-8 scores to ``size`` pixels, each cell on its own pixel.

    A DeepLab output cell ``i`` scores input pixel ``8 i + offset`` (:attr:`DeepLab.label_offset`:
    0 with 3x3 poolings, 1 with the plain DeepLab's 2x2), and an ``H``-pixel side gives
    ``h = (H - 1 - offset) // 8 + 1`` cells. Interpolating ``h`` cells with
    ``align_corners=True`` onto ``8 (h - 1) + 1`` pixels puts cell ``i`` exactly on pixel
    ``8 i + offset`` (Caffe's ``Interp`` layer followed by a crop does the same); the result is
    cropped to ``H``. Pixels before the first cell centre or beyond the last take the edge
    cell's scores: the scores are extended by copies of their first/last row and column.
    (Interpolating straight to ``H`` pixels would stretch the grid: at ``H = 128`` cell 15
    would land on pixel 127 instead of 120.)

    Args:
        scores: ``(B, C, h, w)`` stride-8 scores.
        size: the input's ``(H, W)``; ``h`` must be ``(H - 1 - offset) // 8 + 1`` (same for ``w``).
        offset: the pixel cell 0 scores, 0 to 7.

    Returns:
        ``(B, C, H, W)`` scores.

    Raises:
        ValueError: if the score map does not have the size a stride-8 network gives for ``size``.
    """
    if not 0 <= offset < OUTPUT_STRIDE:
        raise ValueError(f"offset must be in [0, {OUTPUT_STRIDE - 1}], got {offset}")
    (h, w), (height, width) = scores.shape[-2:], size
    expected = (score_cells(height, offset), score_cells(width, offset))
    if (h, w) != expected:
        raise ValueError(
            f"stride-{OUTPUT_STRIDE} scores for a {height}x{width} input "
            f"(cell 0 on pixel {offset}) must be {expected[0]}x{expected[1]}, got {h}x{w}"
        )
    # the side from cell 0's pixel on; cells needed so that the last centre reaches its end
    side_h, side_w = height - offset, width - offset
    need_h, need_w = -(-(side_h - 1) // OUTPUT_STRIDE) + 1, -(-(side_w - 1) // OUTPUT_STRIDE) + 1
    scores = F.pad(scores, (0, need_w - w, 0, need_h - h), mode="replicate")  # (B, C, h', w')
    # cell i -> pixel 8 i + offset: $\hat s(8i + o + t) = (1 - t/8)\, s_i + (t/8)\, s_{i+1}$
    grid = (OUTPUT_STRIDE * (need_h - 1) + 1, OUTPUT_STRIDE * (need_w - 1) + 1)
    full = F.interpolate(scores, size=grid, mode="bilinear", align_corners=True)
    full = full[..., :side_h, :side_w]  # (B, C, H - offset, W - offset)
    if offset:  # the pixels before cell 0's take its scores
        full = F.pad(full, (offset, 0, offset, 0), mode="replicate")
    return full  # (B, C, H, W)


def deeplab(name: str, *, num_classes: int = 21, width: float = 1.0, msc: bool = False) -> DeepLab:
    """Build a DeepLab variant (randomly initialised; see :func:`load_vgg16`).

    Args:
        name: one of :data:`VARIANTS`: "DeepLab", "DeepLab-7x7", "DeepLab-4x4",
            "DeepLab-LargeFOV" (v1), "DeepLab-ASPP" (v2) and "DeepLab-ASPP-256" (ours: ASPP
            at LargeFOV's cost).
        num_classes: classifier outputs (21 for PASCAL VOC).
        width: multiplies every channel count (fast mode); the topology is unchanged.
        msc: add the multi-scale head (DeepLab-MSc).

    Returns:
        The network, in training mode, on the default device.

    Raises:
        ValueError: for an unknown name, or a width outside (0, 1].
    """
    return DeepLab(variant(name), num_classes=num_classes, width=width, msc=msc)


def vgg16_fully_convolutional(
    *, width: float = 1.0, num_classes: int = IMAGENET_CLASSES
) -> DeepLab:
    """VGG-16 with its fully connected layers written as convolutions (stride 32, no holes).

    Loaded with :func:`load_vgg16`, it gives torchvision's ``vgg16`` logits on a 224x224 input
    as a 1x1 score map, and a coarse score map on larger inputs.
    """
    return DeepLab(VGG16_FULLY_CONVOLUTIONAL, num_classes=num_classes, width=width, msc=False)
