import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from dccl_hf import CompressedEmbedding
from dccl_hf.metrics import ReconstructionReport, reconstruction_report

ORIGINAL = np.array([[3.0, 4.0], [1.0, 0.0], [0.0, 0.0], [0.0, 2.0]], dtype=np.float32)
RECONSTRUCTION = np.array([[3.0, 0.0], [2.0, 0.0], [1.0, 1.0], [0.0, -2.0]], dtype=np.float32)


def test_numbers_match_a_hand_computation() -> None:
    report = reconstruction_report(ORIGINAL, torch.from_numpy(RECONSTRUCTION))
    # Row errors: (0, 4), (1, 0), (1, 1), (0, 4) → distances 4, 1, √2, 4; squared 16, 1, 2, 16.
    assert report.num_rows == 4
    assert report.embedding_dim == 2
    assert report.mean_euclidean_distance == pytest.approx((4 + 1 + math.sqrt(2) + 4) / 4)
    assert report.max_distance == pytest.approx(4.0)
    assert report.relative_squared_error == pytest.approx((16 + 1 + 2 + 16) / (25 + 1 + 0 + 4))
    # Cosines: 9/(5·3) = 0.6, 1, (zero row left out), −1.
    assert report.mean_cosine_similarity == pytest.approx((0.6 + 1.0 - 1.0) / 3)
    assert report.bits_per_row == 64
    assert report.compression_ratio == pytest.approx(1.0)


def test_compressed_embedding_is_decoded_from_its_codes() -> None:
    generator = torch.Generator().manual_seed(0)
    codes = torch.randint(4, (50, 3), generator=generator)
    codebook = torch.randn(3, 4, 6, generator=generator)
    module = CompressedEmbedding.from_codes(codes, codebook)
    original = torch.randn(50, 6, generator=generator)
    dense = codebook[torch.arange(3), codes].sum(dim=1)
    report = reconstruction_report(original, module, chunk_rows=7)
    expected = reconstruction_report(original, dense)
    assert report.mean_euclidean_distance == pytest.approx(expected.mean_euclidean_distance, rel=1e-6)
    assert report.relative_squared_error == pytest.approx(expected.relative_squared_error, rel=1e-6)
    assert report.mean_cosine_similarity == pytest.approx(expected.mean_cosine_similarity, rel=1e-6)
    assert report.max_distance == pytest.approx(
        float(torch.linalg.vector_norm(dense - original, dim=1).max())
    )
    assert report.bits_per_row == module.bits_per_row == 6
    assert report.compression_ratio == module.compression_ratio


def test_every_original_type_and_chunking_agree(tmp_path: Path) -> None:
    np.save(tmp_path / "original.npy", ORIGINAL)
    reconstruction = torch.from_numpy(RECONSTRUCTION)
    originals = [
        ORIGINAL,
        torch.from_numpy(ORIGINAL).double(),
        np.load(tmp_path / "original.npy", mmap_mode="r"),
        nn.Embedding.from_pretrained(torch.from_numpy(ORIGINAL)),
    ]
    reference = reconstruction_report(ORIGINAL, reconstruction)
    for original in originals:
        for chunk_rows in (None, 1, 3):
            report = reconstruction_report(original, reconstruction, chunk_rows=chunk_rows)
            for field, value in report.to_dict().items():
                assert value == pytest.approx(getattr(reference, field)), (type(original), chunk_rows, field)


def test_dense_half_precision_counts_its_bits() -> None:
    report = reconstruction_report(ORIGINAL, nn.Embedding.from_pretrained(torch.from_numpy(ORIGINAL).half()))
    assert report.bits_per_row == 32
    assert report.compression_ratio == 2.0
    assert report.mean_euclidean_distance == 0.0
    assert report.mean_cosine_similarity == pytest.approx(1.0)


def test_all_zero_originals() -> None:
    zeros = np.zeros((3, 2), dtype=np.float32)
    exact = reconstruction_report(zeros, torch.zeros(3, 2))
    assert exact.relative_squared_error == 0.0
    assert math.isnan(exact.mean_cosine_similarity)
    assert reconstruction_report(zeros, torch.ones(3, 2)).relative_squared_error == math.inf


def test_report_is_frozen_printable_and_serialisable() -> None:
    report = reconstruction_report(ORIGINAL, torch.from_numpy(RECONSTRUCTION))
    assert isinstance(report, ReconstructionReport)
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.max_distance = 0.0  # type: ignore[misc]
    assert set(report.to_dict()) >= {
        "mean_euclidean_distance",
        "relative_squared_error",
        "mean_cosine_similarity",
        "bits_per_row",
        "compression_ratio",
    }
    text = str(report)
    assert "mean euclidean distance  2.603553" in text
    assert "compression ratio        1.00x" in text


def test_mismatches_and_bad_inputs_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="3×2 but the original is 4×2"):
        reconstruction_report(ORIGINAL, torch.zeros(3, 2))
    with pytest.raises(TypeError, match=r"CompressedEmbedding, a tensor or an nn\.Embedding"):
        reconstruction_report(ORIGINAL, RECONSTRUCTION)  # type: ignore[arg-type]
    bad = ORIGINAL.copy()
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="row 2 contains NaN"):
        reconstruction_report(bad, torch.zeros(4, 2))
