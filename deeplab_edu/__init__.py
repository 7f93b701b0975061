"""deeplab-edu: DeepLab v1 (Chen et al., ICLR 2015) reproduced for learning.

Sub-packages follow the paper's pipeline: :mod:`deeplab_edu.data` (PASCAL VOC and the generated
teaching set), :mod:`deeplab_edu.models` (atrous convolution, VGG-16, the DeepLab family),
:mod:`deeplab_edu.crf` (the fully connected CRF), :mod:`deeplab_edu.metrics` (VOC evaluation),
training and evaluation scripts, :mod:`deeplab_edu.viz` (the book's figures) and
:mod:`deeplab_edu.exercises` (the checkers of the graded exercises).
"""

from deeplab_edu.runtime import (
    __version__,
    data_root,
    describe,
    device,
    fast_mode,
    seed_everything,
)

__all__ = ["__version__", "data_root", "describe", "device", "fast_mode", "seed_everything"]
