"""The network: atrous convolution, VGG-16 and the DeepLab family (paper section 3).

- :mod:`~deeplab_edu.models.atrous`: the hole algorithm from scratch (im2col with holes).
- :mod:`~deeplab_edu.models.field`: receptive field, output stride and size of a layer stack.
- :mod:`~deeplab_edu.models.stitch`: shift-and-stitch, the slow way to the same dense output.
- :mod:`~deeplab_edu.models.vgg`: VGG-16 as data, conversion, checksummed weight download.
- :mod:`~deeplab_edu.models.deeplab`: the variants (v1, v2's ASPP), the multi-scale head, builder.
- :mod:`~deeplab_edu.models.pretrained`: where the weights start (ImageNet, random, a checkpoint).
"""

from deeplab_edu.models.atrous import atrous_conv1d, atrous_conv2d, im2col_atrous
from deeplab_edu.models.deeplab import (
    ASPP,
    PAPER_VARIANTS,
    VARIANTS,
    DeepLab,
    Head,
    MultiScaleHead,
    Variant,
    deeplab,
    is_new_layer,
    upsample_scores,
    variant,
    vgg16_fully_convolutional,
)
from deeplab_edu.models.field import (
    OUTPUT_STRIDE,
    Layer,
    output_size,
    output_stride,
    receptive_field,
)
from deeplab_edu.models.vgg import (
    VGG16_CFG,
    decimation_taps,
    load_vgg16,
    vgg16_imagenet_state_dict,
)

__all__ = [
    "ASPP",
    "OUTPUT_STRIDE",
    "PAPER_VARIANTS",
    "VARIANTS",
    "VGG16_CFG",
    "DeepLab",
    "Head",
    "Layer",
    "MultiScaleHead",
    "Variant",
    "atrous_conv1d",
    "atrous_conv2d",
    "decimation_taps",
    "deeplab",
    "is_new_layer",
    "im2col_atrous",
    "load_vgg16",
    "output_size",
    "output_stride",
    "receptive_field",
    "upsample_scores",
    "variant",
    "vgg16_fully_convolutional",
    "vgg16_imagenet_state_dict",
]
