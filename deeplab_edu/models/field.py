"""Receptive field and output stride of a stack of layers (paper section 3.1, Table 2).

A layer is described by its kernel size k, stride s, dilation (atrous rate) r and padding p.
Walking the stack from the input, with J the distance in input pixels between neighbouring
outputs (the "jump", i.e. the output stride so far) and R the receptive field:

    effective kernel  k_eff = r (k - 1) + 1
    R <- R + (k_eff - 1) J
    J <- J s

This is exact for the field a unit *can* see (its support), ignoring where zero padding cuts it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

OUTPUT_STRIDE = 8  # the paper's output stride: one score every 8 input pixels (section 3.1)
KINDS = ("conv", "max", "avg")


def side(size: int | tuple[int, ...] | str) -> int:
    """One side of a square size as PyTorch's layers store it (``3`` or ``(3, 3)``).

    Raises:
        ValueError: for a size given by name (a convolution's ``padding="same"``).
    """
    if isinstance(size, str):
        raise ValueError(f"expected a size in pixels, got {size!r}")
    return size if isinstance(size, int) else size[0]


@dataclass(frozen=True)
class Layer:
    """One convolution or pooling layer, as data.

    Attributes:
        kind: "conv", "max" (max pooling) or "avg" (average pooling).
        kernel: kernel size k (square).
        stride: stride s.
        dilation: atrous rate r (1 = ordinary).
        padding: zero padding p on each side.
        name: a label such as "conv5_1" or "pool4".
    """

    kind: str
    kernel: int
    stride: int = 1
    dilation: int = 1
    padding: int = 0
    name: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Layer.kind must be one of {KINDS}, got {self.kind!r}")
        for field in ("kernel", "stride", "dilation"):
            if getattr(self, field) < 1:
                raise ValueError(f"Layer.{field} must be >= 1, got {getattr(self, field)}")
        if self.padding < 0:
            raise ValueError(f"Layer.padding must be >= 0, got {self.padding}")

    @property
    def effective_kernel(self) -> int:
        """The span of the dilated kernel in its input's pixels: r (k - 1) + 1."""
        return self.dilation * (self.kernel - 1) + 1

    def output_size(self, size: int) -> int:
        """Output length for an input of length ``size`` (floor rounding, as PyTorch)."""
        return (size + 2 * self.padding - self.effective_kernel) // self.stride + 1


@dataclass(frozen=True)
class FieldStep:
    """The state after one layer: its name, receptive field R and output stride J so far."""

    name: str
    receptive_field: int
    stride: int


def score_cells(side: int, offset: int = 0) -> int:
    """Stride-8 score cells along an image side of ``side`` pixels when cell ``i`` scores pixel
    ``8 i + offset`` (:attr:`~deeplab_edu.models.DeepLab.label_offset`: 0 with 3x3 poolings,
    1 with the released plain DeepLab's 2x2): one per such pixel inside the side, so
    ``(side - 1 - offset) // 8 + 1`` (17 for 128 or 129 pixels at offset 0, 16 at offset 1)."""
    return (side - 1 - offset) // OUTPUT_STRIDE + 1


def first_centre(layers: Iterable[Layer]) -> float:
    """Where the first output unit of a stack is centred, in input pixels.

    A layer's first output is centred ``(k_eff - 1) / 2 - p`` of its input's units from that
    input's first unit, and one input unit is ``J`` pixels (the stride so far). Symmetric
    layers (3x3 with padding 1) add nothing; a 2x2 pooling with padding 1 moves the centre
    half a unit back, one without padding half a unit on. DeepLab with 3x3 poolings gives 0
    (cell ``i`` on pixel ``8 i``); the released plain DeepLab's 2x2 poolings give 0.5 (cell
    ``i`` between pixels ``8 i`` and ``8 i + 1``).
    """
    centre, jump = 0.0, 1
    for layer in layers:
        # $c \leftarrow c + J \left(\frac{k_{eff} - 1}{2} - p\right)$
        centre += jump * ((layer.effective_kernel - 1) / 2 - layer.padding)
        jump *= layer.stride
    return centre


def receptive_field_steps(layers: Iterable[Layer]) -> list[FieldStep]:
    """The receptive field and output stride after every layer of a stack.

    Args:
        layers: the stack, input side first.

    Returns:
        One :class:`FieldStep` per layer.
    """
    field, jump, steps = 1, 1, []
    for layer in layers:
        # $R \leftarrow R + r (k - 1) J$
        field += (layer.effective_kernel - 1) * jump
        # $J \leftarrow J s$
        jump *= layer.stride
        steps.append(FieldStep(layer.name or layer.kind, field, jump))
    return steps


def receptive_field(layers: Sequence[Layer]) -> int:
    """Receptive field, in input pixels, of one output unit of the stack.

    Raises:
        ValueError: if the stack is empty.
    """
    if not layers:
        raise ValueError("receptive_field needs at least one layer, got an empty stack")
    return receptive_field_steps(layers)[-1].receptive_field


def output_stride(layers: Iterable[Layer]) -> int:
    """Distance in input pixels between neighbouring outputs: the product of the strides."""
    jump = 1
    for layer in layers:
        jump *= layer.stride
    return jump


def output_size(layers: Iterable[Layer], size: int) -> int:
    """Output length of the stack for a square input of side ``size``.

    Raises:
        ValueError: if some layer would get an empty input.
    """
    for layer in layers:
        new = layer.output_size(size)
        if new < 1:
            raise ValueError(f"{layer.name or layer.kind} gets a {size}-pixel input: too small")
        size = new
    return size


def paper_field_of_view(
    kernel: int, rate: int, *, stride: int | None = None, original_stride: int = 32
) -> int:
    """The field of view the paper prints in Table 2 for an fc6 of ``kernel`` taps at ``rate``.

    The paper measures fc6's span on the original VGG-16 grid (stride 32, one cell = 32 pixels):
    the dilated kernel covers ``rate (kernel - 1) stride / original_stride + 1`` cells.
    (7x7, rate 4) -> 224, (4x4, 4) -> 128, (4x4, 8) -> 224, (3x3, 12) -> 224. It ignores the
    field already gathered below fc6, so it is smaller than :func:`receptive_field`.
    ``stride`` is fc6's input stride, by default DeepLab's
    :data:`~deeplab_edu.models.OUTPUT_STRIDE` (8).
    """
    stride = OUTPUT_STRIDE if stride is None else stride
    span = rate * (kernel - 1) * stride  # input pixels between fc6's first and last taps
    return span + original_stride
