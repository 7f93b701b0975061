"""The fully connected CRF of DeepLab (paper section 4.2): kernels, exact filtering, the
permutohedral lattice, mean-field inference and the pydensecrf reference; and the grid CRF that
the book's CRF primer starts from; and the CRF as a trainable layer (CRF-as-RNN)."""

from deeplab_edu.crf.grid import grid_energy, grid_message
from deeplab_edu.crf.kernels import (
    NORMALIZATIONS,
    CRFParams,
    appearance_features,
    gaussian_kernel,
    smoothness_features,
)
from deeplab_edu.crf.meanfield import (
    METHODS,
    MeanFieldResult,
    dense_crf,
    mean_field,
)
from deeplab_edu.crf.naive import NAIVE_MAX_PIXELS, NaiveFilter
from deeplab_edu.crf.permutohedral import PermutohedralLattice
from deeplab_edu.crf.reference import reference_available, reference_dense_crf
from deeplab_edu.crf.rnn import MeanFieldCRF
from deeplab_edu.crf.simulate import simulate_unaries

__all__ = [
    "CRFParams",
    "METHODS",
    "MeanFieldCRF",
    "NAIVE_MAX_PIXELS",
    "NORMALIZATIONS",
    "MeanFieldResult",
    "NaiveFilter",
    "PermutohedralLattice",
    "appearance_features",
    "dense_crf",
    "gaussian_kernel",
    "grid_energy",
    "grid_message",
    "mean_field",
    "reference_available",
    "reference_dense_crf",
    "simulate_unaries",
    "smoothness_features",
]
