"""Tests for learning under an error metric: `MetricTransform` and `compress(..., metric=G)`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from dccl_hf import CompressedEmbedding
from dccl_hf.learning import compress
from dccl_hf.learning.metric import EIGENVALUE_FLOOR, MetricTransform

CPU = torch.device("cpu")
DIM = 8
#: Small, fast runs: M=2 codebooks of K=4 codewords, 3 refit/re-encode rounds.
SMALL: dict[str, Any] = {"num_codebooks": 2, "codebook_size": 4, "max_iterations": 3, "progress": False}


def random_rows(rows: int = 300, dim: int = DIM, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, dim, generator=torch.Generator().manual_seed(seed))


def random_psd(dim: int = DIM, seed: int = 1) -> torch.Tensor:
    """A full-rank, non-diagonal positive definite matrix."""
    factor = torch.randn(dim, dim, generator=torch.Generator().manual_seed(seed))
    return factor @ factor.T


def errors(module: CompressedEmbedding, matrix: torch.Tensor) -> torch.Tensor:
    """Reconstruction errors e − ê (rows × D), float64."""
    return (module.reconstruct().detach() - matrix).double()


def metric_error(module: CompressedEmbedding, matrix: torch.Tensor, metric: torch.Tensor) -> float:
    """Mean over rows of (e − ê)ᵀ G (e − ê)."""
    error = errors(module, matrix)
    return float(((error @ metric.double()) * error).sum(1).mean())


def test_a_heavily_weighted_dimension_is_reconstructed_better() -> None:
    matrix = random_rows()
    metric = torch.eye(DIM)
    metric[0, 0] = 100.0
    plain = errors(compress(matrix, **SMALL), matrix).square().mean(0)
    weighted = errors(compress(matrix, metric=metric, **SMALL), matrix).square().mean(0)
    assert weighted[0] < 0.25 * plain[0], (plain, weighted)
    # The bits spent on dimension 0 come from the others.
    assert weighted[1:].mean() > plain[1:].mean(), (plain, weighted)


def test_the_metric_error_is_what_is_minimised() -> None:
    matrix = random_rows()
    metric = random_psd()
    plain = metric_error(compress(matrix, **SMALL), matrix, metric)
    weighted = metric_error(compress(matrix, metric=metric, **SMALL), matrix, metric)
    assert weighted < 0.8 * plain, (plain, weighted)


def test_codebooks_are_mapped_back_to_the_rows_space() -> None:
    """At a rate that can represent every row (M·K ≥ V), rows are reproduced in their own space, not G^½'s."""
    matrix = random_rows(16)
    module = compress(matrix, 4, 16, max_iterations=3, progress=False, metric=random_psd())
    torch.testing.assert_close(module.reconstruct().detach(), matrix, atol=1e-4, rtol=0)


def test_the_identity_metric_changes_nothing() -> None:
    matrix = random_rows()
    plain = compress(matrix, **SMALL)
    identity = compress(matrix, metric=np.eye(DIM), **SMALL)
    assert torch.equal(plain.codes, identity.codes)
    torch.testing.assert_close(identity.codebook, plain.codebook, atol=1e-5, rtol=1e-5)


def test_a_metric_with_a_null_direction_gives_finite_codebooks() -> None:
    """A LayerNorm-like metric (projector orthogonal to the all-ones vector) ignores the mean direction."""
    generator = torch.Generator().manual_seed(2)
    matrix = random_rows() + 3.0 * torch.randn(300, 1, generator=generator)  # a strong mean component
    ones = torch.ones(DIM, dtype=torch.float64) / DIM**0.5
    projector = torch.eye(DIM) - torch.ones(DIM, DIM) / DIM

    def along_and_across(module: CompressedEmbedding) -> tuple[float, float]:
        error = errors(module, matrix)
        along = float((error @ ones).square().mean())
        return along, float(error.square().sum(1).mean()) - along

    module = compress(matrix, metric=projector, **SMALL)
    assert bool(torch.isfinite(module.codebook).all())
    along, across = along_and_across(module)
    _, plain_across = along_and_across(compress(matrix, **SMALL))
    assert along > 0.9 * (along + across), (along, across)
    assert across < 0.8 * plain_across, (plain_across, across)


@pytest.mark.parametrize(
    ("metric", "message"),
    [
        (torch.eye(DIM - 1), r"\(8, 8\) matrix .* got shape \(7, 7\)"),
        (torch.ones(DIM), r"got shape \(8,\)"),
        (torch.full((DIM, DIM), float("nan")), "NaN or Inf"),
        (torch.eye(DIM) + torch.triu(torch.ones(DIM, DIM), diagonal=1), "symmetric.*G.T"),
        (-torch.eye(DIM), "positive semi-definite"),
        (torch.zeros(DIM, DIM), "positive semi-definite"),
        (torch.diag(torch.tensor([1.0, -0.5, *[1.0] * (DIM - 2)])), "positive semi-definite"),
    ],
    ids=["wrong-shape", "vector", "nan", "non-symmetric", "negative-definite", "zero", "indefinite"],
)
def test_bad_metrics_are_clear_errors(metric: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MetricTransform.from_metric(metric, DIM, CPU)
    with pytest.raises(ValueError, match=message):
        compress(random_rows(20), metric=metric, **SMALL)


def test_the_factors_are_inverse_square_roots_of_the_metric() -> None:
    metric = random_psd().double()
    transform = MetricTransform.from_metric(metric.numpy(), DIM, CPU)
    assert transform.root.dtype == torch.float64
    torch.testing.assert_close(transform.root @ transform.root, metric)
    torch.testing.assert_close(transform.root @ transform.inverse_root, torch.eye(DIM, dtype=torch.float64))


def test_a_null_direction_gets_the_floor_eigenvalue() -> None:
    projector = torch.eye(DIM) - torch.ones(DIM, DIM) / DIM
    transform = MetricTransform.from_metric(projector, DIM, CPU)
    ones = torch.ones(DIM, dtype=torch.float64) / DIM**0.5
    torch.testing.assert_close(transform.root @ ones, EIGENVALUE_FLOOR**0.5 * ones)
    torch.testing.assert_close(transform.inverse_root @ ones, EIGENVALUE_FLOOR**-0.5 * ones)


@pytest.mark.parametrize("singular", [False, True], ids=["full-rank", "singular"])
def test_apply_then_restore_codebook_is_the_identity(singular: bool) -> None:
    metric = torch.eye(DIM) - torch.ones(DIM, DIM) / DIM if singular else random_psd()
    transform = MetricTransform.from_metric(metric, DIM, CPU)
    codebook = torch.randn(3, 5, DIM, generator=torch.Generator().manual_seed(3))
    mapped = transform.apply(codebook, in_place=False)
    assert not torch.allclose(mapped, codebook)
    torch.testing.assert_close(transform.restore_codebook(mapped), codebook, atol=1e-5, rtol=1e-5)


def test_apply_is_in_place_only_when_allowed() -> None:
    transform = MetricTransform.from_metric(random_psd(), DIM, CPU)
    rows = random_rows(10)
    original = rows.clone()
    copy = transform.apply(rows, in_place=False)
    assert torch.equal(rows, original)
    same = transform.apply(rows, in_place=True)
    assert same is rows
    torch.testing.assert_close(rows, copy)
    torch.testing.assert_close(copy, (original.double() @ transform.root).float())


@pytest.mark.parametrize("kind", ["tensor", "numpy", "embedding", "float64"])
def test_compress_leaves_the_callers_matrix_alone(kind: str) -> None:
    """Rows are transformed in place only when `compress` made its own copy."""
    matrix = random_rows(50)
    source: Any = {
        "tensor": lambda: matrix.clone(),
        "numpy": lambda: matrix.numpy().copy(),
        "embedding": lambda: nn.Embedding.from_pretrained(matrix.clone()),
        "float64": lambda: matrix.double(),
    }[kind]()
    compress(source, metric=random_psd(), **SMALL)
    values = source.weight if kind == "embedding" else source
    assert torch.equal(torch.as_tensor(values).float(), matrix)


def test_a_checkpoint_under_another_metric_is_refused(tmp_path: Path) -> None:
    matrix = random_rows(100)
    first, second = random_psd(seed=1), random_psd(seed=2)
    arguments: dict[str, Any] = {**SMALL, "method": "dccl", "max_iterations": 2, "checkpoint_dir": tmp_path}
    compress(matrix, metric=first, **arguments)
    assert (tmp_path / "checkpoint.pt").exists()
    for other in (second, None):
        with pytest.raises(ValueError, match=r"different job.*metric_sum"):
            compress(matrix, metric=other, **arguments)
    compress(matrix, metric=first, **arguments)  # the same job resumes
