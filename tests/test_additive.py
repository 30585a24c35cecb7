"""Tests for the additive-quantization learner (dccl_hf.learning.additive)."""

from __future__ import annotations

import dataclasses
import itertools
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from dccl_hf.learning import additive
from dccl_hf.learning import kmeans as kmeans_module
from dccl_hf.learning.additive import (
    beam_search,
    decode,
    fit_additive,
    row_distances,
    solve_codebook,
    sufficient_statistics,
)
from dccl_hf.learning.checkpoint import Checkpointer
from dccl_hf.learning.kmeans import (
    dimension_schedule,
    kmeans,
    lloyd,
    principal_axes,
    progressive_kmeans,
    step_equivalents,
)


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


def test_distance_objective_fits_medians_and_squared_objective_means() -> None:
    """Two clusters of ten equal rows and one outlier each: the sum of distances is minimised by the cluster's
    majority value (a median), the sum of squares by its mean."""
    matrix = torch.tensor([[0.0]] * 10 + [[11.0]] + [[100.0]] * 10 + [[111.0]])
    _, by_distance = fit(matrix, 1, 2, tolerance=0.0, max_iterations=30)
    _, by_square = fit(matrix, 1, 2, tolerance=0.0, max_iterations=30, objective="squared")
    torch.testing.assert_close(
        by_distance.flatten().sort().values, torch.tensor([0.0, 100.0]), atol=0.01, rtol=0
    )
    torch.testing.assert_close(
        by_square.flatten().sort().values, torch.tensor([1.0, 101.0]), atol=1e-4, rtol=0
    )


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


def test_round_cost_narrows_the_beam_to_fit_and_learns_from_measurements() -> None:
    cost = additive._RoundCost(beam_per_width=40.0 / 64, rest=5.0)
    assert cost.widest_beam(64, 100.0) == 64
    assert cost.widest_beam(64, 30.0) == 32  # 1.1 · (5 + 40 · 32/64) = 27.5 s fits, 64 does not
    assert cost.widest_beam(64, 6.0) == 0  # only a round without beam search fits
    assert cost.widest_beam(64, 5.0) is None
    assert cost.widest_beam(128, 100.0) == 128  # a widened beam is costed by the same per-width seconds
    assert cost.measured(16, beam_seconds=5.0, rest_seconds=3.0) == additive._RoundCost(5.0 / 16, 3.0)
    assert cost.measured(0, beam_seconds=0.0, rest_seconds=4.0) == additive._RoundCost(40.0 / 64, 4.0)


def widenings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("Plateau")]


def test_a_plateau_widens_the_beam_while_wider_search_pays_off(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    matrix = clustered()
    # Each round's objective (the initial one is 1.0): every widening is followed by a gain, then a stall.
    values = iter([1.0, 0.9, 0.9, 0.8, 0.8, 0.7, 0.7])
    widths: list[int] = []

    def scripted_round(matrix, state, *args):  # type: ignore[no-untyped-def]
        widths.append(args[2])
        return state.codebook, state.codes, next(values), 0.0

    monkeypatch.setattr(additive, "_round", scripted_round)
    monkeypatch.setattr(additive, "_objective", lambda *_: 1.0)
    with caplog.at_level("INFO", logger=additive.__name__):
        fit(matrix, 3, 8, beam_size=2)
    assert widths == [2, 4, 4, 8, 8, 16, 16]  # no widening beyond MAX_WIDENING × 2 = 16
    assert widenings(caplog) == [f"Plateau: widening the re-encoding beam to {w}" for w in (4, 8, 16)]


def test_a_plateau_right_after_a_widening_ends_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    matrix = clustered()
    widths: list[int] = []

    def stalled_round(matrix, state, *args):  # type: ignore[no-untyped-def]
        widths.append(args[2])
        return state.codebook, state.codes, 1.0, 0.0

    monkeypatch.setattr(additive, "_round", stalled_round)
    monkeypatch.setattr(additive, "_objective", lambda *_: 1.0)
    fit(matrix, 3, 8, beam_size=2)
    assert widths == [2, 4]


def test_widening_survives_a_resume(tmp_path: Path) -> None:
    matrix = clustered()
    options = {"max_iterations": 6, "beam_size": 1, "tolerance": 0.5}  # every round stalls: widen, then stop
    expected = fit(matrix, 3, 8, **options)
    with pytest.raises(InterruptedRunError):
        fit(matrix, 3, 8, checkpointer=FailingCheckpointer(tmp_path, saves=2), **options)
    saved = Checkpointer(tmp_path).load()
    assert (saved["iteration"], saved["beam"]) == (1, 1)
    resumed = fit(matrix, 3, 8, checkpointer=Checkpointer(tmp_path), **options)
    assert Checkpointer(tmp_path).load()["beam"] == 2
    assert torch.equal(resumed[0], expected[0])
    assert torch.equal(resumed[1], expected[1])


def test_rounds_that_do_not_fit_the_budget_run_without_beam_search(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    matrix = clustered()
    initial = mean_distance(matrix, *fit(matrix, 3, 8, max_iterations=0))
    # A beam search that would take days: every round must leave it out to fit the hour.
    monkeypatch.setattr(additive._RoundCost, "probe", staticmethod(lambda *_: additive._RoundCost(1e6, 0.0)))
    with caplog.at_level("INFO", logger=additive.__name__):
        codes, codebook = fit(matrix, 3, 8, time_budget=3600.0, max_iterations=3)
    check_valid(codes, codebook, 400, 3, 8, 8)
    assert "Round 1 with beam 0 to fit the time budget" in caplog.text
    assert mean_distance(matrix, codes, codebook) <= initial


def test_the_cost_probe_counts_against_the_budget(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    matrix = clustered()

    def slow_probe(*_: object) -> additive._RoundCost:
        time.sleep(0.5)  # the whole budget, spent estimating a round that would take no time at all
        return additive._RoundCost(0.0, 0.0)

    monkeypatch.setattr(additive._RoundCost, "probe", staticmethod(slow_probe))
    with caplog.at_level("INFO", logger=additive.__name__):
        fit(matrix, 3, 8, time_budget=0.5)
    assert "Stopping: another round would exceed the time budget" in caplog.text
    assert "Round 1" not in caplog.text


def test_no_probe_once_the_initialisation_has_spent_the_budget(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def unexpected_probe(*_: object) -> additive._RoundCost:
        raise AssertionError("probed a round's cost with no time left for one")

    monkeypatch.setattr(additive._RoundCost, "probe", staticmethod(unexpected_probe))
    with caplog.at_level("WARNING", logger=additive.__name__):
        codes, codebook = fit(clustered(), 3, 8, time_budget=1e-9)
    check_valid(codes, codebook, 400, 3, 8, 8)
    assert "The initialisation alone took" in caplog.text


def test_a_round_that_ends_worse_is_not_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    matrix = clustered()
    initial_codes, initial_codebook = fit(matrix, 3, 8, max_iterations=0)

    def worse_round(matrix, state, *args):  # type: ignore[no-untyped-def]
        return state.codebook + 1.0, torch.zeros_like(state.codes), 1e9, 0.0

    monkeypatch.setattr(additive, "_round", worse_round)
    codes, codebook = fit(matrix, 3, 8, max_iterations=3)
    assert torch.equal(codes, initial_codes)
    assert torch.equal(codebook, initial_codebook)


def init_plan(**changes: Any) -> additive._InitPlan:
    """A plan of 16-wide beams, k-means on 4,096 points of 64 dimensions into 16 centroids with 25 iterations,
    an encoding covering 6 samples' worth of rows, 1 s per unit of beam width and 0.1 ms per point-step."""
    plan = additive._InitPlan(
        16, 16, 6.0, 16, 4096, 25, 4096, 25, num_codebooks=10, codebook_size=16, dim=64, calibrated=True
    )
    return dataclasses.replace(plan, step_seconds=1e-4, extend_seconds=1.0, **changes)


def test_init_plan_narrows_the_encoding_then_kmeans_then_the_training_beam() -> None:
    plan = init_plan()
    full = plan.seconds(10, 10)
    assert plan.fitted(10, 10, remaining=full) == plan
    widths = {
        remaining: (fitted.encoding_beam, fitted.iterations, fitted.points, fitted.training_beam)
        for remaining in (600.0, 300.0, 200.0, 100.0, 80.0, 1.0)
        for fitted in [plan.fitted(10, 10, remaining)]
    }
    assert widths[600.0] == (4, 25, 4096, 16)  # the encoding narrows first, k-means keeps its work
    assert widths[300.0] == (
        1,
        10,
        2048,
        16,
    )  # then k-means's iterations (to 10) and points (to 64 per centroid)
    assert widths[200.0] == (1, 10, 1024, 8)  # then the training beam
    assert widths[100.0] == (1, 10, 1024, 1)
    assert widths[80.0] == (1, 10, 256, 1)  # then k-means's points, down to K
    assert widths[1.0] == (1, 1, 16, 1)  # at the least: greedy, k-means on K points, one step
    for remaining in (600.0, 300.0, 200.0, 100.0):
        assert plan.fitted(10, 10, remaining).seconds(10, 10) <= remaining
    # The work is planned from its maximum every stage: time left buys it back.
    assert plan.fitted(10, 10, 1.0).fitted(10, 10, full) == plan


def test_init_plan_takes_the_rounds_time_only_when_no_round_would_fit_in_it() -> None:
    # A round without beam search: 4 ICM sweeps of 10 codebooks over 7 samples' worth of rows at 1 s each.
    assert init_plan(spare=279.0).available(50.0) == 329.0
    assert init_plan(spare=281.0).available(50.0) == 50.0
    assert init_plan(spare=100.0, calibrated=False).available(50.0) == 50.0  # not before a stage measured it


def test_init_plan_learns_costs_from_measured_stages() -> None:
    plan = init_plan(calibrated=False)
    steps = step_equivalents(4096, 16, 64, 25)
    measured = plan.measured(kmeans_seconds=4096 * steps * 3e-6, extend_seconds=32.0)
    assert measured.step_seconds == pytest.approx(3e-6)  # the first measurement replaces the estimate
    assert measured.extend_seconds == pytest.approx(2.0)  # per unit of the 16-wide beam
    assert (
        measured.measured(kmeans_seconds=0.0, extend_seconds=16.0).extend_seconds == 1.0
    )  # the latest counts


def test_an_initialisation_without_time_does_the_least_work_and_encodes_the_rest_greedily(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Beams of 4 × (3 codes + 1 score + 8 residuals) and the sample's copy: a sample of 1365 of the 2000 rows.
    monkeypatch.setattr(additive, "MIN_WORK_ELEMENTS", 1365 * (4 * 12 + 8))
    matrix = clustered(rows=2000)
    generator = torch.Generator().manual_seed(0)
    with caplog.at_level("INFO", logger=additive.__name__):
        codebook, codes = additive.residual_beam_init(matrix, 3, 8, torch.ones(2000), generator, 5, 4, 0.0)
    assert "narrowed to fit its 0.0 s: training beam 1, encoding beam 1" in caplog.text
    assert "codebook 0: k-means on 8 points, 1 iterations, training beam 1" in caplog.text  # the least work
    # The sample is the initialisation's first draw from the generator.
    sample = torch.multinomial(torch.ones(2000), 1365, generator=torch.Generator().manual_seed(0))
    outside = torch.ones(2000, dtype=torch.bool)
    outside[sample] = False
    assert torch.equal(codes[outside], beam_search(matrix[outside], codebook, 1))
    wide_codebook, wide_codes = additive.residual_beam_init(
        matrix, 3, 8, torch.ones(2000), torch.Generator().manual_seed(0), 5, 4
    )
    assert torch.equal(wide_codes, beam_search(matrix, wide_codebook, 4))


@pytest.mark.parametrize("lookup_tables", [True, False])
def test_exhaustive_beam_search_finds_the_best_codes(
    lookup_tables: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A beam as wide as all K^M code combinations is exhaustive search, whichever way it scores."""
    monkeypatch.setattr(additive, "_uses_lookup_tables", lambda *_: lookup_tables)
    generator = torch.Generator().manual_seed(6)
    matrix = torch.randn(50, 5, generator=generator)
    codebook = torch.randn(3, 4, 5, generator=generator)
    every = torch.tensor(list(itertools.product(range(4), repeat=3)))
    errors = torch.cdist(matrix, decode(every, codebook))
    expected = errors.min(dim=1).values
    found = row_distances(matrix, beam_search(matrix, codebook, 64), codebook)
    torch.testing.assert_close(found, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("lookup_tables", [True, False])
def test_beam_search_keeps_codes_above_255(lookup_tables: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Beam entries store codes in the narrowest integer type that holds K: K=300 must not wrap at 256."""
    monkeypatch.setattr(additive, "_uses_lookup_tables", lambda *_: lookup_tables)
    codebook = torch.randn(1, 300, 4, generator=torch.Generator().manual_seed(8))
    found = beam_search(codebook[0], codebook, 8)  # every codeword encodes to itself
    assert torch.equal(found[:, 0], torch.arange(300))


def test_lookup_tables_and_residuals_give_the_same_beam_search(monkeypatch: pytest.MonkeyPatch) -> None:
    generator = torch.Generator().manual_seed(7)
    matrix = torch.randn(300, 12, generator=generator)
    codebook = 0.5 * torch.randn(6, 8, 12, generator=generator)
    results = []
    for lookup_tables in (True, False):
        monkeypatch.setattr(additive, "_uses_lookup_tables", lambda *_, use=lookup_tables: use)
        results.append(beam_search(matrix, codebook, 5))
    assert torch.equal(results[0], results[1])


def test_statistics_of_row_shards_add_up_to_those_of_all_rows() -> None:
    matrix = clustered(rows=100)
    codes = torch.randint(8, (100, 3), generator=torch.Generator().manual_seed(2))
    weights = torch.rand(100, generator=torch.Generator().manual_seed(3))
    gram, cross = sufficient_statistics(matrix, codes, weights, 8)
    first = sufficient_statistics(matrix[:37], codes[:37], weights[:37], 8)
    second = sufficient_statistics(matrix[37:], codes[37:], weights[37:], 8)
    torch.testing.assert_close(first[0] + second[0], gram)
    torch.testing.assert_close(first[1] + second[1], cross)


def test_gram_is_the_weighted_product_of_the_one_hot_codes() -> None:
    codes = torch.randint(4, (50, 3), generator=torch.Generator().manual_seed(6))
    weights = torch.rand(50, generator=torch.Generator().manual_seed(7))
    one_hot = torch.nn.functional.one_hot(codes, 4).reshape(50, 12).double()
    gram = sufficient_statistics(torch.randn(50, 5), codes, weights, 4)[0]
    torch.testing.assert_close(gram, one_hot.T @ (weights.double()[:, None] * one_hot))


def test_refit_solves_least_squares_exactly() -> None:
    codebook = torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(4))
    codes = torch.randint(4, (200, 3), generator=torch.Generator().manual_seed(5))
    matrix = decode(codes, codebook)
    gram, cross = sufficient_statistics(matrix, codes, torch.ones(200), 4)
    refit = solve_codebook(gram, cross, torch.zeros_like(codebook), 1e-9)
    torch.testing.assert_close(decode(codes, refit), matrix, atol=1e-4, rtol=1e-4)
    assert refit.is_contiguous()  # LAPACK's column-major solution made ICM and beam search 2-5× slower


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"weights": -torch.ones(10)}, "≥ 0"),
        ({"weights": torch.ones(9)}, "9 entries"),
        ({"weights": torch.zeros(10)}, "all zero"),
        ({"beam_size": 0}, "beam_size"),
        ({"objective": "l1"}, "objective must be one of"),
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


def inertia(
    points: torch.Tensor, weights: torch.Tensor, centroids: torch.Tensor, labels: torch.Tensor
) -> float:
    return float((((points - centroids[labels]) ** 2).sum(dim=1) * weights).sum())


def anisotropic(rows: int, dim: int, seed: int = 0) -> torch.Tensor:
    """Heavy-tailed rows with a decaying spectrum and no cluster structure, like embedding residuals."""
    generator = torch.Generator().manual_seed(seed)
    scale = 3.0 * torch.rand(rows, 1, generator=generator) ** 4
    return torch.randn(rows, dim, generator=generator) * 0.95 ** torch.arange(dim) * scale


def test_progressive_kmeans_beats_lloyd_from_sampled_seeds_on_anisotropic_data() -> None:
    points, weights = anisotropic(3000, 64, seed=1), torch.ones(3000)
    progressive = progressive_kmeans(points, 64, weights, torch.Generator().manual_seed(0), 25)
    seeds = points[torch.randperm(3000, generator=torch.Generator().manual_seed(0))[:64]]
    plain = lloyd(points, seeds, weights, 25)
    assert inertia(points, weights, *progressive) < 0.985 * inertia(points, weights, *plain)


def test_kmeans_finds_the_optimum_of_well_separated_clusters() -> None:
    # Progressive k-means alone (density seeds) ends 340× above the optimum here; the k-means++ probe finds it.
    generator = torch.Generator().manual_seed(1)
    centres = 50.0 * torch.randn(6, 10, generator=generator)
    labels = torch.arange(6).repeat_interleave(40)
    points, weights = centres[labels] + torch.randn(240, 10, generator=generator), torch.ones(240)
    means = torch.stack([points[labels == c].mean(dim=0) for c in range(6)])
    centroids, assignment = kmeans(points, 6, weights, generator, 25)
    assert inertia(points, weights, centroids, assignment) == pytest.approx(
        inertia(points, weights, means, labels), rel=1e-4
    )


def test_progressive_kmeans_is_deterministic_under_a_seed() -> None:
    points, weights = anisotropic(500, 16), torch.ones(500)
    runs = [progressive_kmeans(points, 8, weights, torch.Generator().manual_seed(s), 25) for s in (3, 3, 4)]
    torch.testing.assert_close(runs[0][0], runs[1][0], rtol=0, atol=0)
    assert torch.equal(runs[0][1], runs[1][1])
    assert not torch.equal(runs[0][0], runs[2][0])


def test_progressive_kmeans_edge_cases() -> None:
    generator = torch.Generator().manual_seed(5)
    line = torch.randn(300, 1, generator=generator)  # D = 1
    centroids, assignment = progressive_kmeans(line, 4, torch.ones(300), generator, 25)
    assert centroids.shape == (4, 1)
    assert inertia(line, torch.ones(300), centroids, assignment) < 0.2 * float(
        (line - line.mean()).pow(2).sum()
    )
    few = torch.randn(3, 5, generator=generator)  # fewer points than centroids: each gets its own
    centroids, assignment = progressive_kmeans(few, 8, torch.ones(3), generator, 25)
    assert centroids.shape == (8, 5)
    assert inertia(few, torch.ones(3), centroids, assignment) < 1e-10
    points = torch.randn(100, 6, generator=generator)  # one centroid: the weighted mean, weight 0 ignored
    weights = torch.rand(100, generator=generator) * (torch.arange(100) < 50)
    centroids, assignment = progressive_kmeans(points, 1, weights, generator, 25)
    torch.testing.assert_close(centroids[0], (weights @ points) / weights.sum(), atol=1e-5, rtol=1e-5)
    assert bool((assignment == 0).all())


def test_wide_rows_never_form_a_dimension_squared_matrix(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_eigh(*_: object) -> None:
        raise AssertionError("a D×D eigendecomposition")

    monkeypatch.setattr(torch.linalg, "eigh", no_eigh)
    matrix = torch.randn(30, 1500, generator=torch.Generator().manual_seed(0))  # fewer rows than dimensions
    codes, codebook = fit(matrix, 2, 4, time_budget=60.0)
    check_valid(codes, codebook, 30, 2, 4, 1500)
    monkeypatch.setattr(kmeans_module, "EXACT_AXES_DIM", 16)  # wider than the exact limit, more rows than D
    codes, codebook = fit(clustered(rows=300, dim=32), 2, 4)
    check_valid(codes, codebook, 300, 2, 4, 32)


def test_low_rank_principal_axes_span_the_leading_directions(monkeypatch: pytest.MonkeyPatch) -> None:
    points = (
        anisotropic(1500, 300, seed=2)
        @ torch.linalg.qr(torch.randn(300, 300, generator=torch.Generator().manual_seed(2))).Q
    )  # rotated spectrum
    weights = torch.ones(1500)
    mean, exact = principal_axes(points, weights, torch.Generator().manual_seed(0))
    monkeypatch.setattr(kmeans_module, "EXACT_AXES_DIM", 100)
    low_mean, low_rank = principal_axes(points, weights, torch.Generator().manual_seed(0))
    assert exact.shape == (300, 300)
    assert low_rank.shape == (300, kmeans_module.LOW_RANK_AXES)
    torch.testing.assert_close(low_mean, mean)
    alignment = (exact[:, :5] * low_rank[:, :5]).sum(dim=0).abs()
    assert bool((alignment > 0.99).all()), alignment


def test_progressive_kmeans_on_leading_axes_still_beats_lloyd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kmeans_module, "EXACT_AXES_DIM", 8)
    monkeypatch.setattr(kmeans_module, "LOW_RANK_AXES", 16)  # stages up to 16 dimensions, the last in all 64
    points, weights = anisotropic(3000, 64, seed=1), torch.ones(3000)
    progressive = progressive_kmeans(points, 64, weights, torch.Generator().manual_seed(0), 25)
    seeds = points[torch.randperm(3000, generator=torch.Generator().manual_seed(0))[:64]]
    plain = lloyd(points, seeds, weights, 25)
    assert inertia(points, weights, *progressive) < 0.985 * inertia(points, weights, *plain)


def test_initial_kmeans_points_fit_the_working_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """k-means holds at most KMEANS_COPIES (points, D) tensors: its points are sized to the working memory."""
    seen: list[int] = []

    def recording_kmeans(points: torch.Tensor, *args: Any) -> tuple[torch.Tensor, torch.Tensor]:
        seen.append(points.shape[0])
        return kmeans(points, *args)

    monkeypatch.setattr(additive, "kmeans", recording_kmeans)
    monkeypatch.setattr(additive, "MIN_WORK_ELEMENTS", 0)  # a quarter of the input: 2000 × 64 / 4 elements
    matrix = anisotropic(2000, 64)
    additive.residual_beam_init(matrix, 2, 8, torch.ones(2000), torch.Generator().manual_seed(0), 5, 4)
    assert seen == [2000 * 64 // 4 // (kmeans_module.KMEANS_COPIES * 64)] * 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_learning_on_cuda_stays_on_the_device_and_matches_the_cpu() -> None:
    matrix = clustered(rows=2000, dim=48)
    cpu_codes, cpu_codebook = fit(matrix, 4, 16, max_iterations=3)
    generator = torch.Generator(device="cuda").manual_seed(0)
    codes, codebook = fit_additive(
        matrix.cuda(), 4, 16, generator=generator, progress=False, max_iterations=3, time_budget=600.0
    )
    assert codes.device.type == "cuda"
    assert codebook.device.type == "cuda"
    assert mean_distance(matrix.cuda(), codes, codebook) == pytest.approx(
        mean_distance(matrix, cpu_codes, cpu_codebook), rel=0.1
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_kmeans_on_cuda_runs_on_the_device() -> None:
    points = anisotropic(3000, 64).cuda()
    weights = torch.ones(3000, device="cuda")
    centroids, assignment = kmeans(points, 32, weights, torch.Generator(device="cuda").manual_seed(0), 10)
    assert centroids.device.type == "cuda"
    assert assignment.device.type == "cuda"
    cpu = kmeans(points.cpu(), 32, weights.cpu(), torch.Generator().manual_seed(0), 10)
    assert inertia(points, weights, centroids, assignment) == pytest.approx(
        inertia(points.cpu(), weights.cpu(), *cpu), rel=0.1
    )


def test_dimension_schedule_roughly_doubles_up_to_the_dimension() -> None:
    assert dimension_schedule(1) == [1]
    assert dimension_schedule(8) == [2, 4, 8]
    schedule = dimension_schedule(384)
    assert schedule[0] <= 2
    assert schedule[-1] == 384
    assert len(schedule) == 9
    assert all(1.5 <= b / a <= 2.5 for a, b in itertools.pairwise(schedule))


def test_default_beams_score_a_few_thousand_candidates_and_keep_the_init_beam_useful() -> None:
    assert additive.default_beams(16) == (64, 16)
    assert additive.default_beams(256) == (16, 8)
    assert additive.default_beams(4096) == (2, 2)
    assert additive.default_beams(256, beam_size=32) == (32, 8)
    assert additive.default_beams(16, beam_size=1) == (1, 1)


def test_sample_counts_follow_the_weight_up_to_each_shard_and_fill_the_sample() -> None:
    assert additive.sample_counts([9.0, 1.0], [1000, 1000], 1000) == [900, 100]
    # a shard full before its share: the others give the rest, so the sample is all rows when they fit
    assert additive.sample_counts([9.0, 1.0], [1000, 1000], 1200) == [1000, 200]
    assert additive.sample_counts([9.0, 1.0], [150, 150], 300) == [150, 150]
    assert additive.sample_counts([1.0, 1.0, 1.0], [10, 10, 10], 10) == [4, 3, 3]  # largest remainders
    assert additive.sample_counts([0.0, 0.0], [5, 5], 4) == [2, 2]
