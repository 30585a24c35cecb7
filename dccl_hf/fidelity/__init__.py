"""Fidelity of compressed transformer embeddings: calibration row weights, the model's sensitivity metric and
codebook distillation (`dccl_hf.smallest_codes`, in `budget`, builds on the transformers integration and is
exported from the package root)."""

from dccl_hf.fidelity.calibration import (
    calibration_texts,
    row_weights_from_calibration,
    token_counts,
    weights_from_counts,
    word_counts,
    zipf_weights,
)
from dccl_hf.fidelity.distill import DistillationReport, distill_codebook
from dccl_hf.fidelity.head import head_second_moment, tied_head_weights
from dccl_hf.fidelity.sensitivity import embedding_sensitivity

__all__ = [
    "DistillationReport",
    "calibration_texts",
    "distill_codebook",
    "embedding_sensitivity",
    "head_second_moment",
    "row_weights_from_calibration",
    "tied_head_weights",
    "token_counts",
    "weights_from_counts",
    "word_counts",
    "zipf_weights",
]
