"""Tests for the additive-quantization learner (dccl_hf.learning.additive)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from dccl_hf.learning.additive import (
    decode,
    fit_additive,
    kmeans,
    row_distances,
    solve_codebook,
    sufficient_statistics,
)
from dccl_hf.learning.checkpoint import Checkpointer


def clustered(rows: int = 400, dim: int = 8, clusters: int = 12, seed: int = 0) -> torch.Tensor:
    """Rows scattered around a few well-separated centres, plus a fine-scale component."""
    generator = torch.Generator().manual_seed(seed)
    centres = 4.0 * torch.randn(clusters, dim, generator=generator)
    labels = torch.randint(clusters, (rows,), generator=generator)
    return centres[labels] + torch.randn(rows, dim, generator=generator)


def fit(
    matrix: torch.Tensor, m: int, k: int, seed: int = 0, **options: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    return fit_additive(
        matrix, m, k, generator=torch.Generator().manual_seed(seed), progress=False, **options
    )


def mean_distance(matrix: torch.Tensor, codes: torch.Tensor, codebook: torch.Tensor) -> float:
    return float(row_distances(matrix, codes, codebook).mean())


def check_valid(codes: torch.Tensor, codebook: torch.Tensor, rows: int, m: int, k: int, dim: int) -> None:
    assert codes.dtype == torch.int64
    assert codes.shape == (rows, m)
    assert int(codes.min()) >= 0
    assert int(codes.max()) < k
    assert codebook.shape == (m, k, dim)
    assert codebook.dtype == torch.float32
    assert bool(torch.isfinite(codebook).all())


def residual_kmeans(matrix: torch.Tensor, m: int, k: int) -> float:
    """Mean distance of plain greedy residual k-means (no beam, no refit), the baseline to beat."""
    residual = matrix.clone()
    generator = torch.Generator().manual_seed(0)
    for _ in range(m):
        centroids, assignment = kmeans(residual, k, torch.ones(len(matrix)), generator, 25)
        residual -= centroids[assignment]
    return float(residual.norm(dim=1).mean())


def test_codes_and_codebook_have_the_right_shapes_and_reconstruct() -> None:
    matrix = clustered()
    codes, codebook = fit(matrix, 4, 8)
    check_valid(codes, codebook, 400, 4, 8, 8)
    baseline = float((matrix - matrix.mean(dim=0)).norm(dim=1).mean())
    assert mean_distance(matrix, codes, codebook) < 0.5 * baseline


def test_beats_plain_residual_kmeans() -> None:
    matrix = clustered(rows=600, dim=12)
    codes, codebook = fit(matrix, 4, 8)
    assert mean_distance(matrix, codes, codebook) < 0.98 * residual_kmeans(matrix, 4, 8)


def test_heavier_rows_are_reconstructed_better() -> None:
    matrix = torch.randn(300, 8, generator=torch.Generator().manual_seed(1))
    weights = torch.ones(300)
    weights[:30] = 200.0
    plain = row_distances(matrix, *fit(matrix, 2, 8))
    weighted = row_distances(matrix, *fit(matrix, 2, 8, weights=weights))
    assert float(weighted[:30].mean()) < 0.8 * float(plain[:30].mean())


def test_rows_of_weight_zero_still_get_their_best_codes() -> None:
    matrix = clustered(rows=200)
    weights = torch.ones(200)
    weights[::2] = 0.0
    codes, codebook = fit(matrix, 3, 8, weights=weights)
    check_valid(codes, codebook, 200, 3, 8, 8)
    zero_rows = row_distances(matrix, codes, codebook)[::2]
    assert float(zero_rows.mean()) < float((matrix[::2] - matrix.mean(dim=0)).norm(dim=1).mean())


def test_same_seed_same_result_and_other_seed_differs() -> None:
    matrix = clustered()
    first, second, other = fit(matrix, 3, 8, seed=5), fit(matrix, 3, 8, seed=5), fit(matrix, 3, 8, seed=6)
    assert torch.equal(first[0], second[0])
    assert torch.equal(first[1], second[1])
    assert not torch.equal(first[1], other[1])


class InterruptedRunError(Exception):
    """Stands in for Ctrl-C or a killed process."""


class FailingCheckpointer(Checkpointer):
    """Saves normally, then interrupts the run after `saves` checkpoints."""

    def __init__(self, directory: Path, saves: int) -> None:
        super().__init__(directory)
        self.saves = saves

    def save(self, state: dict[str, Any]) -> None:
        super().save(state)
        self.saves -= 1
        if self.saves == 0:
            raise InterruptedRunError


def test_resuming_from_a_checkpoint_gives_the_uninterrupted_result(tmp_path: Path) -> None:
    matrix = clustered()
    options = {"max_iterations": 4, "tolerance": 0.0, "patience": 10}
    expected = fit(matrix, 3, 8, **options)
    with pytest.raises(InterruptedRunError):
        fit(matrix, 3, 8, checkpointer=FailingCheckpointer(tmp_path, saves=3), **options)
    assert Checkpointer(tmp_path).load()["iteration"] == 2
    resumed = fit(matrix, 3, 8, checkpointer=Checkpointer(tmp_path), **options)
    assert torch.equal(resumed[0], expected[0])
    assert torch.equal(resumed[1], expected[1])


def test_checkpoint_of_another_problem_is_refused(tmp_path: Path) -> None:
    fit(clustered(), 3, 8, checkpointer=Checkpointer(tmp_path), max_iterations=1)
    with pytest.raises(ValueError, match="different run"):
        fit(clustered(), 4, 8, checkpointer=Checkpointer(tmp_path), max_iterations=1)


@pytest.mark.parametrize(
    ("matrix", "m", "k"),
    [
        (torch.randn(5, 4), 2, 16),  # K larger than the number of rows
        (torch.randn(64, 6), 4, 16),  # M·K equal to the number of rows
        (torch.randn(3, 5).repeat(40, 1), 3, 8),  # duplicate rows
        (torch.zeros(50, 4), 2, 4),  # all-zero matrix
        (torch.cat([torch.zeros(20, 4), torch.randn(30, 4)]), 2, 4),  # some all-zero rows
        (torch.randn(100, 1), 2, 4),  # D = 1
    ],
)
def test_edge_cases(matrix: torch.Tensor, m: int, k: int) -> None:
    codes, codebook = fit(matrix, m, k)
    check_valid(codes, codebook, matrix.shape[0], m, k, matrix.shape[1])
    assert bool(torch.isfinite(decode(codes, codebook)).all())
    distinct = torch.unique(matrix, dim=0).shape[0]
    if distinct <= k:  # every distinct row can have a codeword of its own
        assert mean_distance(matrix, codes, codebook) < 1e-4


def test_time_budget_and_zero_iterations_still_return_valid_codes() -> None:
    matrix = clustered()
    for options in ({"time_budget": 1e-9}, {"max_iterations": 0}):
        codes, codebook = fit(matrix, 3, 8, **options)
        check_valid(codes, codebook, 400, 3, 8, 8)


def test_statistics_of_row_shards_add_up_to_those_of_all_rows() -> None:
    matrix = clustered(rows=100)
    codes = torch.randint(8, (100, 3), generator=torch.Generator().manual_seed(2))
    weights = torch.rand(100, generator=torch.Generator().manual_seed(3))
    gram, cross = sufficient_statistics(matrix, codes, weights, 8)
    first = sufficient_statistics(matrix[:37], codes[:37], weights[:37], 8)
    second = sufficient_statistics(matrix[37:], codes[37:], weights[37:], 8)
    torch.testing.assert_close(first[0] + second[0], gram)
    torch.testing.assert_close(first[1] + second[1], cross)


def test_refit_solves_least_squares_exactly() -> None:
    codebook = torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(4))
    codes = torch.randint(4, (200, 3), generator=torch.Generator().manual_seed(5))
    matrix = decode(codes, codebook)
    gram, cross = sufficient_statistics(matrix, codes, torch.ones(200), 4)
    refit = solve_codebook(gram, cross, torch.zeros_like(codebook), 1e-9)
    torch.testing.assert_close(decode(codes, refit), matrix, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"weights": -torch.ones(10)}, "≥ 0"),
        ({"weights": torch.ones(9)}, "9 entries"),
        ({"weights": torch.zeros(10)}, "all zero"),
        ({"beam_size": 0}, "beam_size"),
    ],
)
def test_bad_options_are_clear_errors(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        fit(torch.randn(10, 3), 2, 4, **options)


def test_bad_matrix_is_a_clear_error() -> None:
    matrix = torch.randn(10, 3)
    matrix[4, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        fit(matrix, 2, 4)
    with pytest.raises(ValueError, match="2-D"):
        fit(torch.randn(10), 2, 4)
