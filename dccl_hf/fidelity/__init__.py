"""Fidelity of compressed transformer embeddings: calibration row weights and codebook distillation."""

from dccl_hf.fidelity.calibration import (
    calibration_texts,
    row_weights_from_calibration,
    token_counts,
    weights_from_counts,
    word_counts,
    zipf_weights,
)
from dccl_hf.fidelity.distill import DistillationReport, distill_codebook

__all__ = [
    "DistillationReport",
    "calibration_texts",
    "distill_codebook",
    "row_weights_from_calibration",
    "token_counts",
    "weights_from_counts",
    "word_counts",
    "zipf_weights",
]
