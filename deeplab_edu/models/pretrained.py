"""Where a DeepLab network's weights start: ImageNet VGG-16 (section 3.1), random, or a trained
DeepLab (the starting point of DeepLab-MSc's second stage, section 4.3, or of a network for
other classes: a data set of your own)."""

from __future__ import annotations

from pathlib import Path

import torch

from deeplab_edu.checkpoint import load_checkpoint
from deeplab_edu.models.deeplab import MSC_PREFIX, DeepLab, is_new_layer
from deeplab_edu.models.vgg import load_vgg16, vgg16_imagenet_state_dict


def initialise(
    model: DeepLab, init: str, *, vgg_state_dict: dict[str, torch.Tensor] | None = None
) -> DeepLab:
    """Initialise ``model`` in place.

    Args:
        model: a network built by :func:`~deeplab_edu.models.deeplab`.
        init: ``"imagenet"`` (torchvision's VGG-16 ``IMAGENET1K_V1``, converted by
            :func:`~deeplab_edu.models.load_vgg16`), ``"random"`` (as built), or the path of a
            checkpoint of a trained DeepLab (:func:`load_trained_weights`).
        vgg_state_dict: a torchvision VGG-16 state dict to use instead of downloading
            IMAGENET1K_V1 (tests pass a randomly initialised one).

    Returns:
        ``model``.

    Raises:
        ValueError: ImageNet weights for a narrow network, or a checkpoint that does not fit.
    """
    if init == "imagenet":
        if model.width != 1.0:
            raise ValueError(
                f"ImageNet VGG-16 weights need width=1.0, got width={model.width}; "
                "use init='random' for a narrow network"
            )
        load_vgg16(
            model, vgg_state_dict if vgg_state_dict is not None else vgg16_imagenet_state_dict()
        )
    elif init != "random":
        load_trained_weights(model, init)
    return model


def load_trained_weights(model: DeepLab, path: str | Path) -> None:
    """Load every weight of a trained DeepLab checkpoint into ``model`` (same variant, width).

    For DeepLab-MSc the checkpoint may hold the stage-one network without the multi-scale head;
    the head then keeps its initialisation (the released small Gaussians), so the network
    starts from the stage-one predictions. A checkpoint trained for another number of classes
    gives every weight but the classifiers (``fc8``, the multi-scale head's), which keep their
    initialisation: the step the paper takes from ImageNet's 1000 classes to VOC's 21, from a
    network trained on VOC (or the teaching set) to a data set of your own.

    Raises:
        ValueError: for another variant or width, or weights that do not fit.
    """
    state = load_checkpoint(path)
    saved = state["config"]
    if (saved["variant"], saved["width"]) != (model.variant, model.width):
        raise ValueError(
            f"{path} holds a {saved['variant']!r} network of width {saved['width']}, "
            f"but this run trains {model.variant!r} of width {model.width}"
        )
    own = model.state_dict()
    weights = {
        name: tensor
        for name, tensor in state["model"].items()
        if not (
            is_new_layer(name) and name in own and tensor.shape[:1] != own[name].shape[:1]
        )  # a classifier for other classes
    }
    try:
        missing, unexpected = model.load_state_dict(weights, strict=False)
    except RuntimeError as error:  # a tensor of another shape (e.g. another number of classes)
        raise ValueError(f"{path} does not fit this network: {error}") from error
    allowed = (MSC_PREFIX,) if model.msc is not None and not saved.get("msc") else ()
    allowed += tuple(name for name in state["model"] if name not in weights)
    if unexpected or any(not name.startswith(allowed) for name in missing):
        raise ValueError(f"{path} does not fit: missing {missing}, unexpected {unexpected}")
