"""Additive quantization: the default learner, codes and codebooks for ê_i = Σ_m A_m[c_im].

The algorithm alternates two steps that each never increase the objective, by default the weighted mean
euclidean distance Σ u_i ||e_i − ê_i|| / Σ u_i (u = user row weights), or with ``objective="squared"`` the
weighted mean squared distance Σ u_i ||e_i − ê_i||² / Σ u_i:

1. **Codebook refit.** Given the codes, all M codebooks are solved for jointly by least squares, an
   (M·K)×(M·K) linear system built from summed per-row sufficient statistics. For the distance objective the
   row weights are u_i / ||r_i|| (iteratively reweighted least squares), which minimises the sum of distances
   rather than the sum of squared distances.
2. **Code re-assignment.** Each row is re-encoded by beam search over the codebooks (as faiss's residual
   quantizer does, here with the jointly refit codebooks) and polished by iterated conditional modes (ICM);
   its current codes are polished by ICM too, and by ICM after random perturbation (the local search of
   LSQ++). Each row keeps whichever candidate reconstructs it best.

The codebooks start from residual quantization trained along a beam search (like faiss's
ResidualQuantizer). Code assignment is per row and the refit only needs `sufficient_statistics` summed over
rows, so the loop runs data-parallel over row shards (`dccl_hf.learning.distributed`): sums over rows go through
`all_sum`, the initial codebook is trained by rank 0 on a sample gathered from every shard, and rank 0's clock
decides for every rank.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Literal

import torch
from tqdm.auto import tqdm

from dccl_hf.learning.checkpoint import Checkpointer
from dccl_hf.learning.clock import device_clock
from dccl_hf.learning.distributed import (
    agreed,
    all_sum,
    broadcast,
    gather_rows,
    gather_rows_on_first,
    is_sharded,
    rank_and_size,
    shard_rows,
)
from dccl_hf.learning.kmeans import (
    CACHE_CHUNK_ELEMENTS,
    KMEANS_COPIES,
    STAGE_ITERATIONS,
    assign,
    kmeans,
    step_equivalents,
)

logger = logging.getLogger(__name__)

Objective = Literal["distance", "squared"]
OBJECTIVES: tuple[str, ...] = ("distance", "squared")

#: Upper bound on the number of float elements of one chunk's work tensors, which bounds peak memory.
CHUNK_ELEMENTS = 1 << 23
#: Elements of the initialisation's working set beyond the input (the sample's copy and beams, k-means's
#: points) when a quarter of the input is less: 2^27 float32 elements, 512 MiB (see `_work_elements`).
MIN_WORK_ELEMENTS = 16 * CHUNK_ELEMENTS
#: Residuals each initial k-means trains on (at least 256 per centroid); more points give better codebooks.
KMEANS_POINTS = 1 << 16
#: Share of a time budget kept for the caller's work after learning (packing the codes); `fit_dccl` too.
PACKING_RESERVE = 0.01
#: Share of a time budget the initialisation may take, so that refit rounds (the first gain most) still fit.
INIT_SHARE = 2 / 3
#: Candidates (beam entries × codewords) a default re-encoding beam step scores per row, and the widest default
#: beam (see `default_beams`).
BEAM_CANDIDATES = 4096
MAX_BEAM = 64
#: Narrowest default initialisation beam, where the re-encoding beam is at least as wide.
MIN_INIT_BEAM = 8
#: How far a plateau may widen the re-encoding beam, as a multiple of its starting width (see `fit_additive`).
MAX_WIDENING = 8
#: Beam width and rows of the search that estimates a round's cost before the first round measures it (GloVe,
#: 3,000 rows, M=32, K=16: 0.13 s instead of 1.1 s at the round's beam of 64, for the same estimate).
PROBE_BEAM = 4
PROBE_ROWS = 1024
#: (M·K)² float64 matrices alive during a refit: the gram, the regularised system and its Cholesky factor.
REFIT_COPIES = 3


@dataclass
class _State:
    """Everything an interrupted run needs to resume exactly."""

    codes: torch.Tensor
    codebook: torch.Tensor
    iteration: int
    best: float
    stalled: int
    elapsed: float
    #: Width of the re-encoding beam, doubled on each plateau after which a wider search still paid off.
    beam: int
    #: True from a widening until a round at the new width improves the objective.
    widened: bool = False


def fit_additive(
    matrix: torch.Tensor,
    num_codebooks: int,
    codebook_size: int,
    *,
    weights: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    checkpointer: Checkpointer | None = None,
    progress: bool = True,
    time_budget: float | None = None,
    max_iterations: int | None = None,
    beam_size: int | None = None,
    init_beam_size: int | None = None,
    icm_sweeps: int = 2,
    perturbations: int = 2,
    local_search: int = 1,
    kmeans_iterations: int = 25,
    tolerance: float = 3e-3,
    patience: int = 1,
    ridge: float = 1e-6,
    objective: Objective = "distance",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Learn codes (N, M) int64 and a codebook (M, K, D) that rebuild `matrix` as Σ_m codebook[m, codes[:, m]].

    `weights` (N,) ≥ 0 are row importances: rows with larger weight are reconstructed better; rows of
    weight 0 still get their best codes. A plateau (the objective improving by less than `tolerance`, relative,
    for `patience` rounds in a row) doubles the re-encoding beam, up to `MAX_WIDENING` × `beam_size`, and ends
    the run only when it comes right after a widening (the wider search found nothing better) or the beam is
    at its widest: where codes better than the beam finds exist, more time buys them (GloVe, 50k rows, M=32,
    K=16: plateau at beam 64 0.721 after 311 s; beam 128, 256, 256, 512 rounds then reach 0.712, 0.701, 0.697,
    0.688 in 907 s more), and where they do not (all-MiniLM-L6-v2) it costs one round. The run also stops
    after `max_iterations` refit/re-encode rounds (default 100), or when not even a round without beam search
    fits in what is left of `time_budget` seconds (the initialisation always runs, its beams and k-means work
    scaled to fit `INIT_SHARE` of the budget where they can, see `residual_beam_init`); a round that would not fit narrows its beam until it does, and
    is then held to the share of `tolerance` that its share of a full round's time gives. `beam_size` is the
    starting beam width of the re-encoding and `init_beam_size` that of the initialisation (defaults:
    `default_beams`), `icm_sweeps` the ICM passes after each encoding, `local_search` the number of
    perturb-and-ICM attempts per round, each changing `perturbations` random codes per row. With a
    `checkpointer` the state is saved after every round, and a rerun resumes from it and reaches the same
    result. `objective` is ``"distance"`` (weighted mean euclidean distance, the reference implementation's
    metric) or ``"squared"`` (weighted mean squared distance: the expected squared error of a sum of rows drawn
    by weight, e.g. of a sentence's token embeddings with token-frequency weights).
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}.")
    beam_size, default_init_beam = default_beams(codebook_size, beam_size)
    init_beam_size = default_init_beam if init_beam_size is None else init_beam_size
    _validate(matrix, num_codebooks, codebook_size, min(beam_size, init_beam_size))
    row_weights = _normalise_weights(weights, matrix)
    if generator is None:
        generator = torch.Generator(device=matrix.device).manual_seed(0)
    max_iterations = 100 if max_iterations is None else max_iterations
    start = time.monotonic()
    state = _resume(checkpointer, matrix, num_codebooks, codebook_size, generator, beam_size)
    if state is None:
        logger.info(
            "Additive quantization of %d×%d rows into M=%d codes of K=%d: residual init with beam %d",
            matrix.shape[0],
            matrix.shape[1],
            num_codebooks,
            codebook_size,
            init_beam_size,
        )
        codebook, codes = residual_beam_init(
            matrix,
            num_codebooks,
            codebook_size,
            row_weights,
            generator,
            kmeans_iterations,
            init_beam_size,
            None if time_budget is None else INIT_SHARE * time_budget,
            0.0 if time_budget is None else (1.0 - INIT_SHARE - 2 * PACKING_RESERVE) * time_budget,
        )
        distances = row_distances(matrix, codes, codebook)
        state = _State(
            codes,
            codebook,
            0,
            _objective(distances, row_weights, objective),
            0,
            time.monotonic() - start,
            beam_size,
        )
        _save(checkpointer, state, generator)
        logger.info("Initial weighted mean %s %.6f (%.1f s)", objective, state.best, state.elapsed)
        if time_budget is not None and state.elapsed > time_budget:
            logger.warning(
                "The initialisation alone took %.1f s of the %.1f s time budget (at its least work: greedy "
                "encoding of every row); give at least twice that for refit rounds to run.",
                state.elapsed,
                time_budget,
            )
    # Seconds spent before this process started (a resumed run), so that the budget counts the whole run.
    offset = state.elapsed - (time.monotonic() - start)
    deadline = None if time_budget is None else start - offset + (1.0 - PACKING_RESERVE) * time_budget
    cost = None  # no probe when the initialisation has spent the budget, or its solve alone would
    if deadline is not None and rank_and_size()[0] == 0:
        remaining = deadline - time.monotonic()
        if remaining > 2.0 * refit_solve_seconds(
            num_codebooks * codebook_size, matrix.shape[1], matrix.device
        ):
            cost = _RoundCost.probe(matrix, state.codebook, state.beam, icm_sweeps)
    widest = MAX_WIDENING * beam_size
    # With a budget the bar counts its seconds (tqdm's ETA is then the deadline), else the rounds.
    seconds = None if time_budget is None else max(1, round(time_budget))
    shown = (lambda: state.iteration) if seconds is None else (lambda: min(int(state.elapsed), seconds))
    bar = tqdm(
        total=max_iterations if seconds is None else seconds,
        initial=shown(),
        disable=not progress or rank_and_size()[0] > 0,
        desc="additive",
        unit="round" if seconds is None else "s",
        bar_format=None
        if seconds is None
        else "{l_bar}{bar}| {n_fmt}/{total_fmt} s [{elapsed}<{remaining}{postfix}]",
    )
    bar.set_postfix({objective: f"{state.best:.5f}"})
    while state.iteration < max_iterations:
        if state.stalled >= patience:
            if state.widened or 2 * state.beam > widest:
                break
            state.beam, state.stalled, state.widened = 2 * state.beam, 0, True
            logger.info("Plateau: widening the re-encoding beam to %d", state.beam)
        width, share = state.beam, 1.0
        if deadline is not None:
            fitting = None if cost is None else cost.widest_beam(state.beam, deadline - time.monotonic())
            # Rank 0's clock decides for every rank (-1: no round fits).
            chosen, chosen_share = agreed(
                [
                    -1 if fitting is None else fitting,
                    0.0 if fitting is None else cost.seconds(fitting) / cost.seconds(state.beam),
                ],
                matrix.device,
            )
            if chosen < 0:
                logger.info("Stopping: another round would exceed the time budget of %.1f s", time_budget)
                break
            width, share = int(chosen), chosen_share
            if width < state.beam:
                logger.info("Round %d with beam %d to fit the time budget", state.iteration + 1, width)
        round_start = device_clock(matrix.device)
        codebook, codes, value, beam_seconds = _round(
            matrix,
            state,
            row_weights,
            generator,
            width,
            icm_sweeps,
            perturbations,
            local_search,
            ridge,
            objective,
        )
        round_time = device_clock(matrix.device) - round_start
        if cost is not None:
            cost = cost.measured(width, beam_seconds, round_time - beam_seconds)
        state.iteration += 1
        # A round narrowed to fit the budget is held to the gain expected for its share of a full round's time.
        improved = value < state.best * (1.0 - tolerance * share)
        state.stalled = 0 if improved else state.stalled + 1
        state.widened = state.widened and not improved
        # Refit and ICM never raise the objective but for the ridge and the distance floor of the reweighting
        # (e.g. 3,000 rows at M=16, K=256, most rebuilt exactly): a round that ends worse is not kept.
        if value <= state.best:
            state.codebook, state.codes, state.best = codebook, codes, value
        state.elapsed = time.monotonic() - start + offset
        _save(checkpointer, state, generator)
        bar.update(shown() - bar.n)
        bar.set_postfix({"round": state.iteration, objective: f"{value:.5f}"})
        logger.info(
            "Round %d: weighted mean %s %.6f (%.1f s)",
            state.iteration,
            objective,
            value,
            round_time,
        )
    bar.close()
    logger.info(
        "Finished after %d rounds: weighted mean %s %.6f",
        state.iteration,
        objective,
        state.best,
    )
    return state.codes, state.codebook


def default_beams(codebook_size: int, beam_size: int | None = None) -> tuple[int, int]:
    """Default beam widths of the re-encoding (unless `beam_size` is given) and of the initialisation.

    The re-encoding beam scores up to `BEAM_CANDIDATES` candidates per step (beam 16 at K=256; at K=16 the beam
    is capped at `MAX_BEAM`, 1,024 candidates; it was
    1,024: on GloVe 50k rows at 16x256 in 206 s, beam 4 reached 0.591, beam 16 0.557; 20k rows at 16x64 in 60 s,
    beam 16 0.887, beam 64 0.862). The initialisation's beam is a quarter of it (wide beams pay off most once the
    codebooks are refit) but at least `MIN_INIT_BEAM`: at large K its k-means, not its beam, takes the time
    (GloVe 16x256: initialisation beam 4 0.560, 8 0.557, 16 0.556). Not wider: a wider beam shrinks the row
    sample the initialisation trains on (all-MiniLM-L6-v2 at 16x256: beam 8 trains on all rows, 0.629; beam 16
    on two thirds of them, 0.635).
    """
    if beam_size is None:
        beam_size = max(2, min(MAX_BEAM, BEAM_CANDIDATES // codebook_size))
    return beam_size, max(1, min(beam_size, max(MIN_INIT_BEAM, beam_size // 4)))


def _round(
    matrix: torch.Tensor,
    state: _State,
    row_weights: torch.Tensor,
    generator: torch.Generator,
    beam_size: int,
    icm_sweeps: int,
    perturbations: int,
    local_search: int,
    ridge: float,
    objective: Objective,
) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """One refit + re-encode round; returns the new codebook, codes, objective value and the seconds spent in
    beam search (none with `beam_size` 0: the round then only refits and polishes the current codes)."""
    codes = state.codes
    refit_weights = row_weights
    if objective == "distance":
        distances = row_distances(matrix, codes, state.codebook)
        refit_weights = row_weights / distances.clamp_min(_distance_floor(distances, row_weights))
    gram, cross = sufficient_statistics(matrix, codes, refit_weights, state.codebook.shape[1])
    codebook = solve_codebook(gram, cross, state.codebook, ridge)
    codes = icm(matrix, codes, codebook, icm_sweeps)
    distances = row_distances(matrix, codes, codebook)
    beam_seconds = 0.0
    if beam_size:
        beam_start = device_clock(matrix.device)
        encoded = beam_search(matrix, codebook, beam_size)
        beam_seconds = device_clock(matrix.device) - beam_start
        candidate = icm(matrix, encoded, codebook, icm_sweeps)
        codes, distances = _keep_better(matrix, codebook, codes, distances, candidate)
    for _ in range(local_search):
        candidate = perturb(codes, codebook.shape[1], perturbations, generator)
        candidate = icm(matrix, candidate, codebook, icm_sweeps)
        codes, distances = _keep_better(matrix, codebook, codes, distances, candidate)
    return codebook, codes, _objective(distances, row_weights, objective), beam_seconds


@dataclass(frozen=True)
class _RoundCost:
    """Seconds of a round's beam search per unit of beam width and of the rest of it (refit, ICM, local search).

    Beam search time grows with the beam's width, so when a full round no longer fits a time budget a round
    with a narrower beam (or none, a refit-and-polish round) may: on GloVe 50k at M=32, K=16 a full round takes
    30 s of a 118 s budget after a 26 s initialisation, and after two full rounds the four narrower rounds that
    fit the rest take the mean distance from 0.737 to 0.728.
    """

    beam_per_width: float
    rest: float

    @staticmethod
    def probe(matrix: torch.Tensor, codebook: torch.Tensor, beam_size: int, icm_sweeps: int) -> _RoundCost:
        """Costs extrapolated from a round's steps on a small sample of rows, with a beam of at most `PROBE_BEAM`,
        until a round measures them. The refit's row-independent part (the gram's assembly and its solve) is
        timed once and not extrapolated: at M=16, K=256 it is most of the refit."""
        probe = min(matrix.shape[0], PROBE_ROWS)
        scale = 1.3 * matrix.shape[0] / probe
        rows = matrix[:probe]
        width = min(beam_size, PROBE_BEAM)
        start = device_clock(matrix.device)
        encoded = beam_search(rows, codebook, width)
        beam_end = device_clock(matrix.device)
        icm(rows, encoded, codebook, 2 * icm_sweeps)
        _shard_statistics(rows, encoded, rows.new_ones(probe), codebook.shape[1])
        rows_end = device_clock(matrix.device)
        gram, cross = _shard_statistics(rows[:0], encoded[:0], rows.new_ones(0), codebook.shape[1])
        assembly_end = device_clock(matrix.device)
        solve_codebook(gram, cross, codebook, 1e-6)
        fixed = device_clock(matrix.device) - rows_end
        per_rows = max(0.0, (rows_end - beam_end) - (assembly_end - rows_end))
        return _RoundCost(scale * (beam_end - start) / width, scale * per_rows + fixed)

    def seconds(self, width: int) -> float:
        """Expected seconds of a round with a beam of `width` (0: no beam search)."""
        return self.rest + self.beam_per_width * width

    def widest_beam(self, beam_size: int, remaining: float) -> int | None:
        """The widest of beam_size, beam_size/2, …, 1, 0 whose round fits `remaining` seconds with a 10% margin
        (the estimate extrapolates); None if none does."""
        width = beam_size
        while width > 0 and 1.1 * self.seconds(width) > remaining:
            width //= 2
        return width if 1.1 * self.seconds(width) <= remaining else None

    def measured(self, width: int, beam_seconds: float, rest_seconds: float) -> _RoundCost:
        """The costs as a round with a beam of `width` measured them."""
        return _RoundCost(beam_seconds / width if width else self.beam_per_width, rest_seconds)


def refit_solve_seconds(width: int, dim: int, device: torch.device) -> float:
    """Expected seconds of the refit's solve, a (`width`)² float64 Cholesky factorisation and `dim` right-hand
    sides, scaled by its flops from a timed solve of at most 256 unknowns (an overestimate: small solves run
    below peak speed)."""
    small, columns = min(width, 256), min(dim, 256)
    generator = torch.Generator(device=device).manual_seed(0)
    system = torch.randn(small, small, dtype=torch.float64, device=device, generator=generator)
    system = system @ system.T + small * torch.eye(small, dtype=torch.float64, device=device)
    target = torch.ones(small, columns, dtype=torch.float64, device=device)
    begin = device_clock(device)
    torch.cholesky_solve(target, torch.linalg.cholesky(system))
    seconds = device_clock(device) - begin
    return seconds * (width**3 / 3 + 2 * width**2 * dim) / (small**3 / 3 + 2 * small**2 * columns)


def _keep_better(
    matrix: torch.Tensor,
    codebook: torch.Tensor,
    codes: torch.Tensor,
    distances: torch.Tensor,
    candidate: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the codes (and distances) of whichever of `codes` and `candidate` reconstructs it better."""
    candidate_distances = row_distances(matrix, candidate, codebook)
    better = candidate_distances < distances
    return torch.where(better[:, None], candidate, codes), torch.where(better, candidate_distances, distances)


def _weighted_mean(values: torch.Tensor, row_weights: torch.Tensor) -> torch.Tensor:
    """Σ w·v / Σ w over every shard's rows, in float64."""
    totals = all_sum(torch.stack([(values.double() * row_weights).sum(), row_weights.double().sum()]))
    return totals[0] / totals[1]


def _objective(distances: torch.Tensor, row_weights: torch.Tensor, objective: Objective) -> float:
    """Weighted mean euclidean or squared distance, the quantity the algorithm minimises."""
    values = distances.double() if objective == "distance" else distances.double().square()
    return float(_weighted_mean(values, row_weights))


def _distance_floor(distances: torch.Tensor, row_weights: torch.Tensor) -> torch.Tensor:
    """Smallest distance used in the IRLS weights, so that exactly reconstructed rows do not dominate."""
    return (1e-2 * _weighted_mean(distances, row_weights)).clamp_min(1e-12).to(distances.dtype)


# ----------------------------------------------------------------------------------------------------------
# Building blocks: decoding, k-means, beam search, ICM, perturbation, least-squares refit.


def _chunk_size(elements_per_row: int, budget: int = CHUNK_ELEMENTS) -> int:
    """Rows per chunk so that a chunk's work tensors hold at most `budget` elements."""
    return max(1, budget // max(1, elements_per_row))


def decode(codes: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Σ_m codebook[m, codes[:, m]]: (n, M) codes → (n, D), summed as bags (no (n, M, D) intermediate)."""
    num_codebooks, codebook_size, _ = codebook.shape
    offsets = torch.arange(num_codebooks, device=codes.device) * codebook_size
    flat = codebook.reshape(num_codebooks * codebook_size, -1)
    return torch.nn.functional.embedding_bag(codes + offsets, flat, mode="sum")


def row_distances(matrix: torch.Tensor, codes: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """||e_i − ê_i||₂ for every row, computed in row chunks."""
    size = _chunk_size(2 * matrix.shape[1])
    parts = [
        torch.linalg.vector_norm(matrix[i : i + size] - decode(codes[i : i + size], codebook), dim=1)
        for i in range(0, matrix.shape[0], size)
    ]
    return torch.cat(parts)


def beam_search(matrix: torch.Tensor, codebook: torch.Tensor, beam_size: int) -> torch.Tensor:
    """Codes for every row by beam search over the codebooks in order (residual order after training)."""
    num_codebooks, codebook_size, dim = codebook.shape
    size = _chunk_size(_beam_elements_per_row(num_codebooks, codebook_size, dim, beam_size))
    tables = [_stage_tables(codebook[:m], codebook[m]) for m in range(num_codebooks)]
    parts = []
    for i in range(0, matrix.shape[0], size):
        rows = matrix[i : i + size]
        beam = _Beam.start(rows, num_codebooks, codebook_size)
        for m, (norms, cross) in enumerate(tables):
            beam = beam.extend(rows, codebook[m], norms, cross, beam_size)
        parts.append(beam.codes[:, 0])
    return torch.cat(parts).long()


def _uses_lookup_tables(num_codebooks: int, codebook_size: int, dim: int) -> bool:
    """Whether beam search scores from codeword cross products rather than residuals (see `_Beam`).

    Measured per beam search with 1 thread (residuals → tables): D=384, 8x16 1.60 → 0.26 s, 32x16 10.8 →
    5.1 s, 16x256 0.46 → 0.89 s; D=50, 8x16 0.27 → 0.26 s, 32x16 2.6 → 4.9 s.
    """
    return num_codebooks * codebook_size <= 2 * dim


def _stage_tables(previous: torch.Tensor, words: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared norms (K,) of a stage's codewords `words` (K, D) and their cross products ((stages·K), K) with the
    codewords of the codebooks `previous` (stages, K, D) before it: what a beam step needs, once per stage."""
    return (words**2).sum(dim=1), previous.reshape(-1, words.shape[1]) @ words.T


def _beam_elements_per_row(num_codebooks: int, codebook_size: int, dim: int, beam_size: int) -> int:
    """Elements of a beam step's largest work tensors per row."""
    if _uses_lookup_tables(num_codebooks, codebook_size, dim):
        return beam_size * (codebook_size * (num_codebooks + 1) + 2 * num_codebooks)
    return beam_size * (codebook_size + 2 * dim + 2 * num_codebooks)


def _code_dtype(codebook_size: int) -> torch.dtype:
    """The narrowest integer type that holds codes below `codebook_size`: beam search copies every entry's
    codes at each step, so narrow codes are faster to move."""
    return torch.uint8 if codebook_size <= 256 else torch.int16 if codebook_size <= 1 << 15 else torch.int32


@dataclass
class _Beam:
    """The `width` best partial encodings of each of n rows, best first: codes (n, width, stages), squared
    distances (n, width) and, unless scoring uses lookup tables, residuals (n, width, D).

    Adding codeword A_k to a partial reconstruction x of row e changes ||e − x||² by ||A_k||² − 2⟨e − x, A_k⟩.
    With residuals that is one matrix product per step, O(K·D) per entry. With lookup tables (as faiss's
    `use_beam_LUT`) ⟨x, A_k⟩ is a sum of codeword cross products, O(stages·K) per entry and no residuals in
    memory: cheaper when M·K is small against D, as for transformer tables.
    """

    codes: torch.Tensor
    score: torch.Tensor
    residual: torch.Tensor | None

    @staticmethod
    def start(rows: torch.Tensor, num_codebooks: int, codebook_size: int) -> _Beam:
        codes = torch.empty(rows.shape[0], 1, 0, dtype=_code_dtype(codebook_size), device=rows.device)
        tables = _uses_lookup_tables(num_codebooks, codebook_size, rows.shape[1])
        return _Beam(codes, (rows**2).sum(dim=1, keepdim=True), None if tables else rows[:, None, :])

    def extend(
        self,
        rows: torch.Tensor,
        words: torch.Tensor,
        norms: torch.Tensor,
        cross: torch.Tensor,
        beam_size: int,
    ) -> _Beam:
        """Extend every entry of the beams of `rows` by every codeword of `words` (K, D) and keep the best
        `beam_size` per row; `norms` and `cross` are the stage's `_stage_tables`."""
        n, width, stages = self.codes.shape
        codebook_size, dim = words.shape
        if self.residual is None:
            extended = (norms - 2.0 * rows @ words.T)[:, None, :] + self.score[:, :, None]
            if stages:
                offsets = torch.arange(stages, device=words.device) * codebook_size
                extended = extended + 2.0 * cross[self.codes + offsets].sum(dim=2)  # promoted to int64
        else:
            products = torch.addmm(norms, self.residual.reshape(n * width, dim), words.T, alpha=-2.0)
            extended = products.reshape(n, width, codebook_size) + self.score[:, :, None]
        top = extended.reshape(n, width * codebook_size).topk(
            min(beam_size, width * codebook_size), dim=1, largest=False
        )
        parent, word = top.indices // codebook_size, top.indices % codebook_size
        # Whole entries are copied by flat row index: far faster than a per-element gather.
        entries = (torch.arange(n, device=parent.device)[:, None] * width + parent).reshape(-1)
        kept = self.codes.reshape(n * width, stages).index_select(0, entries).reshape(*parent.shape, stages)
        residual = None
        if self.residual is not None:
            residual = self.residual.reshape(n * width, dim).index_select(0, entries)
            residual = (residual - words.index_select(0, word.reshape(-1))).reshape(*parent.shape, dim)
        return _Beam(torch.cat([kept, word[:, :, None].to(kept.dtype)], dim=2), top.values, residual)


def residual_beam_init(
    matrix: torch.Tensor,
    num_codebooks: int,
    codebook_size: int,
    row_weights: torch.Tensor,
    generator: torch.Generator,
    iterations: int,
    beam_size: int,
    seconds: float | None = None,
    spare: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Residual quantization trained along a beam search; returns the codebook (M, K, D) and codes (N, M).

    Codebook m is weighted k-means of the residuals that the best beam entry of each row leaves after
    codebooks 0..m−1; the beam then extends by codebook m. Training runs on a row sample, drawn by weight, whose
    beams (and copy, unless it is all rows) fit the working memory of `_work_elements`; the sample's codes are
    its beams' best, the other rows are encoded afterwards. With `seconds`, the work scales to fit that many
    seconds, from costs measured before the first stage and after each (`_InitPlan`): the encoding beam of the
    rows outside the sample narrows first, then k-means's iterations, the training beam, k-means's points and
    its iterations down to one (down to greedy residual quantization on seeds). The `spare` seconds after those
    are the refit rounds'; the initialisation takes them too where its measured costs say that not even a round
    without beam search would fit in them (`_InitPlan.available`). With rows sharded over ranks,
    each rank draws its part of the sample in proportion to its share of the weight (`sample_counts`), rank 0
    trains on the gathered sample and every rank encodes its own rows (rank 0's sample codes are not reused: its
    sample rows are spread over every shard): a codebook trained on rank 0's shard alone fits the other shards
    worse (the first 20,000 GloVe rows, frequency-ordered, 2 ranks, M=16, K=256, 3 rounds: 0.521 mean distance;
    from the gathered sample 0.436, one process 0.435).
    """
    start = time.monotonic()
    num_rows, dim = matrix.shape
    shards = shard_rows(num_rows, matrix.device)
    work = _work_elements(num_rows, dim)
    # Beams persist for the whole sample: codes and scores, plus residuals unless scoring uses tables.
    state = beam_size * (
        num_codebooks + 1 + (0 if _uses_lookup_tables(num_codebooks, codebook_size, dim) else dim)
    )
    whole = not is_sharded() and num_rows * state <= work  # the sample is the matrix itself, not a copy
    sample_rows = sum(shards) if whole else min(sum(shards), max(64 * codebook_size, work // (state + dim)))
    sample = None
    if is_sharded():
        rows, weights = _gathered_sample(matrix, row_weights, shards, sample_rows, generator)
        encoded_per_sample_row = max(shards) / sample_rows  # each rank encodes all its rows, side by side
    elif whole:
        rows, weights, encoded_per_sample_row = matrix, row_weights, 0.0
    else:
        sample = torch.multinomial(row_weights + 1e-12, sample_rows, replacement=False, generator=generator)
        rows, weights = matrix[sample], row_weights[sample]
        encoded_per_sample_row = (num_rows - sample_rows) / sample_rows
    codebook = matrix.new_zeros(num_codebooks, codebook_size, dim)
    points = min(sample_rows, max(256 * codebook_size, KMEANS_POINTS), work // (KMEANS_COPIES * dim))
    points = max(min(sample_rows, codebook_size), points)
    plan = _InitPlan(
        beam_size,
        beam_size,
        encoded_per_sample_row,
        beam_size,
        points,
        iterations,
        points,
        iterations,
        spare=spare,
    )
    sample_codes = None
    if rank_and_size()[0] == 0:
        assert rows is not None  # the gathered sample is rank 0's
        assert weights is not None
        sample_codes, plan = _train_residual(rows, weights, codebook, generator, plan, seconds, start)
    del rows, weights
    broadcast(codebook)
    training_beam, encoding_beam = (
        int(width) for width in agreed([plan.training_beam, plan.encoding_beam], matrix.device)
    )
    if training_beam < beam_size or encoding_beam < beam_size:
        logger.info(
            "Initialisation narrowed to fit its %.1f s: training beam %d, encoding beam %d",
            seconds,
            training_beam,
            encoding_beam,
        )
    if whole:
        return codebook, sample_codes
    if sample is None:
        return codebook, beam_search(matrix, codebook, encoding_beam)
    codes = torch.empty(num_rows, num_codebooks, dtype=torch.long, device=matrix.device)
    codes[sample] = sample_codes
    outside = torch.ones(num_rows, dtype=torch.bool, device=matrix.device)
    outside[sample] = False
    outside = outside.nonzero().squeeze(1)
    # The rows outside the sample are gathered a sample's worth at a time, so they are never copied whole.
    for i in range(0, outside.shape[0], sample_rows):
        chunk = outside[i : i + sample_rows]
        codes[chunk] = beam_search(matrix[chunk], codebook, encoding_beam)
    return codebook, codes


def _work_elements(rows: int, dim: int) -> int:
    """Float elements the initialisation may hold beyond the input: a quarter of the input, at least
    `MIN_WORK_ELEMENTS`, so that peak memory is the input + 25% (or 512 MiB) + O(rows × M)."""
    return max(rows * dim // 4, MIN_WORK_ELEMENTS)


def _gathered_sample(
    matrix: torch.Tensor,
    row_weights: torch.Tensor,
    shards: list[int],
    sample_rows: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """A sample of `sample_rows` rows (and their weights) drawn by weight from every rank's shard, each rank
    contributing in proportion to its share of the total weight, gathered on rank 0 (None, None on the others:
    only rank 0 trains on it)."""
    masses = gather_rows(row_weights.double().sum().reshape(1)).tolist()
    count = sample_counts(masses, shards, sample_rows)[rank_and_size()[0]]
    chosen = (
        torch.multinomial(row_weights + 1e-12, count, replacement=False, generator=generator)
        if count
        else torch.zeros(0, dtype=torch.long, device=matrix.device)
    )
    return gather_rows_on_first(matrix[chosen]), gather_rows_on_first(row_weights[chosen])


def sample_counts(masses: list[float], shards: list[int], sample_rows: int) -> list[int]:
    """Rows each rank gives a sample of `sample_rows` (at most the rows of all `shards`): in proportion to its
    weight `masses`, at most its shard; what a full shard cannot take goes to the others the same way, and rounding
    by largest remainders, so the sample has exactly `sample_rows` rows (all rows when they fit)."""
    counts = [0] * len(shards)
    while (left := sample_rows - sum(counts)) > 0:
        open_ranks = [rank for rank, rows in enumerate(shards) if counts[rank] < rows]
        total = sum(masses[rank] for rank in open_ranks)
        shares = {
            rank: left * (masses[rank] / total if total > 0 else 1 / len(open_ranks)) for rank in open_ranks
        }
        grants = {rank: min(math.floor(share), shards[rank] - counts[rank]) for rank, share in shares.items()}
        if not any(grants.values()):  # only fractions of a row left: one row each to the largest fractions
            by_fraction = sorted(
                open_ranks, key=lambda rank: shares[rank] - math.floor(shares[rank]), reverse=True
            )
            grants = dict.fromkeys(by_fraction[:left], 1)
        for rank, grant in grants.items():
            counts[rank] += grant
    return counts


def _train_residual(
    rows: torch.Tensor,
    weights: torch.Tensor,
    codebook: torch.Tensor,
    generator: torch.Generator,
    plan: _InitPlan,
    seconds: float | None,
    start: float,
) -> tuple[torch.Tensor, _InitPlan]:
    """Train `codebook` (M, K, D; filled in place) stage by stage on the sample `rows`; returns the sample's
    codes (its beams' best) and the plan with the beam widths that fit `seconds` from `start`."""
    num_codebooks, codebook_size, dim = codebook.shape
    sample_rows = rows.shape[0]
    if seconds is not None:
        plan = plan.estimated(rows, num_codebooks, codebook_size)
    size = _chunk_size(_beam_elements_per_row(num_codebooks, codebook_size, dim, plan.max_beam))
    starts = range(0, sample_rows, size)
    beams = [_Beam.start(rows[i : i + size], num_codebooks, codebook_size) for i in starts]
    for m in range(num_codebooks):
        if seconds is not None:
            remaining = plan.available(seconds) - (time.monotonic() - start)
            fitted = plan.fitted(num_codebooks - m, num_codebooks, remaining)
            work = (fitted.points, fitted.iterations, fitted.training_beam)
            if work != (plan.points, plan.iterations, plan.training_beam):
                logger.info(
                    "Initial codebook %d: k-means on %d points, %d iterations, training beam %d to fit the "
                    "time budget",
                    m,
                    *work,
                )
            plan = fitted
        stage_start = device_clock(rows.device)
        chosen = torch.randperm(sample_rows, generator=generator, device=rows.device)[: plan.points]
        best_codes = torch.cat([beam.codes[:, 0] for beam in beams])[chosen].long()
        residuals = rows[chosen] - decode(best_codes, codebook[:m]) if m else rows[chosen]
        codebook[m], _ = kmeans(residuals, codebook_size, weights[chosen], generator, plan.iterations)
        del residuals
        norms, cross = _stage_tables(codebook[:m], codebook[m])
        extend_start = device_clock(rows.device)
        beams = [
            beam.extend(rows[i : i + size], codebook[m], norms, cross, plan.training_beam)
            for beam, i in zip(beams, starts, strict=True)
        ]
        if seconds is not None:
            plan = plan.measured(extend_start - stage_start, device_clock(rows.device) - extend_start)
    return torch.cat([beam.codes[:, 0] for beam in beams]).long(), plan


@dataclass(frozen=True)
class _InitPlan:
    """Beam widths and k-means work (points, iterations) of `residual_beam_init`, and the costs it measured per
    stage: seconds per k-means point per full-dimension Lloyd step (`step_equivalents`), and seconds of
    extending the sample's beams per unit of beam width (a beam step's cost grows with its width)."""

    training_beam: int
    encoding_beam: int
    #: Rows encoded after training per sample row (outside the sample; with rows sharded, the largest shard).
    outside_share: float
    #: The widest beams and the most k-means points and iterations: `fitted` scales the work down from them.
    max_beam: int
    max_points: int
    max_iterations: int
    points: int
    iterations: int
    num_codebooks: int = 1
    codebook_size: int = 1
    dim: int = 1
    step_seconds: float = 0.0
    extend_seconds: float = 0.0
    #: Seconds after the initialisation's own that the refit rounds have (see `available`).
    spare: float = 0.0
    #: False while the costs are the estimates of `estimated`: the first measurement replaces them.
    calibrated: bool = False

    def estimated(self, rows: torch.Tensor, num_codebooks: int, codebook_size: int) -> _InitPlan:
        """The plan with costs estimated before any stage, on up to 2,048 sample rows with K of them as
        codewords: the seconds per point-step from one assignment (× 1.5 for the centroid updates), and those of
        a beam step per unit of width from one greedy step."""
        probe = rows[: min(rows.shape[0], 2048)]
        words = rows[:codebook_size]
        norms, cross = _stage_tables(words[None, :0], words)
        begin = device_clock(rows.device)
        assign(probe, words)
        assigned = device_clock(rows.device)
        _Beam.start(probe, num_codebooks, codebook_size).extend(probe, words, norms, cross, 1)
        extended = device_clock(rows.device)
        share = rows.shape[0] / probe.shape[0]
        return dataclasses.replace(
            self,
            num_codebooks=num_codebooks,
            codebook_size=codebook_size,
            dim=rows.shape[1],
            step_seconds=1.5 * (assigned - begin) / probe.shape[0],
            extend_seconds=(extended - assigned) * share,
        )

    def available(self, seconds: float) -> float:
        """The initialisation's seconds: `seconds`, plus the `spare` ones when the costs measured say that not
        even a round without beam search would fit in them. Such a round runs four ICM sweeps over every row,
        each about as costly per row as a beam step of width 1; the rows are 1 + `outside_share` sample rows."""
        round_floor = 4 * self.extend_seconds * self.num_codebooks * (1.0 + self.outside_share)
        return seconds + self.spare if self.calibrated and round_floor > self.spare else seconds

    def kmeans_seconds(self, points: int, iterations: int) -> float:
        """Expected seconds of one k-means run on `points` points with `iterations` Lloyd steps."""
        steps = step_equivalents(points, self.codebook_size, self.dim, iterations)
        return self.step_seconds * points * steps

    def measured(self, kmeans_seconds: float, extend_seconds: float) -> _InitPlan:
        """The plan with the costs of the stage just measured: the latest stage is the best guess of the next
        (codes grow longer, and the machine's load changes; a slowest-so-far rule kept the estimate of a first
        k-means run on few points, whose fixed costs are large per point, and starved every later one)."""
        steps = step_equivalents(self.points, self.codebook_size, self.dim, self.iterations)
        return dataclasses.replace(
            self,
            step_seconds=kmeans_seconds / (self.points * steps),
            extend_seconds=extend_seconds / self.training_beam,
            calibrated=True,
        )

    def seconds(self, stages_left: int, num_codebooks: int) -> float:
        """Expected seconds of the `stages_left` training stages and the encoding outside the sample."""
        encoding = self.outside_share * num_codebooks * self.extend_seconds * self.encoding_beam
        kmeans_seconds = self.kmeans_seconds(self.points, self.iterations)
        return stages_left * (kmeans_seconds + self.extend_seconds * self.training_beam) + encoding

    def fitted(self, stages_left: int, num_codebooks: int, remaining: float) -> _InitPlan:
        """The most work expected to fit `remaining` seconds: from the widest beams and the most k-means work
        (so that time left buys back what an earlier estimate cut), it narrows the encoding beam, then k-means's
        iterations (down to `STAGE_ITERATIONS`) and points (down to 64 per centroid), the training beam, then
        k-means's points (down to K) and iterations (down to 1)."""
        beam, points, iterations = self.max_beam, self.max_points, self.max_iterations
        plan = dataclasses.replace(
            self, training_beam=beam, encoding_beam=beam, points=points, iterations=iterations
        )
        steps = (
            ("encoding_beam", 1 if self.outside_share else beam),
            ("iterations", min(iterations, STAGE_ITERATIONS)),
            ("points", min(points, 64 * self.codebook_size)),
            ("training_beam", 1),
            ("points", min(points, self.codebook_size)),
            ("iterations", min(iterations, 1)),
        )
        for name, floor in steps:
            while getattr(plan, name) > floor and plan.seconds(stages_left, num_codebooks) > remaining:
                plan = dataclasses.replace(plan, **{name: max(floor, getattr(plan, name) // 2)})
        return plan


def icm(matrix: torch.Tensor, codes: torch.Tensor, codebook: torch.Tensor, sweeps: int) -> torch.Tensor:
    """Iterated conditional modes: each code in turn becomes the best given all the others."""
    num_codebooks, codebook_size, dim = codebook.shape
    norms = (codebook**2).sum(dim=2)
    # Each chunk's residuals are revisited M times per sweep: cache-sized chunks are 2-3× faster.
    size = _chunk_size(codebook_size + dim * 2, CACHE_CHUNK_ELEMENTS)
    result = codes.clone()
    for i in range(0, matrix.shape[0], size):
        chunk = result[i : i + size]
        residual = matrix[i : i + size] - decode(chunk, codebook)
        for _ in range(sweeps):
            for m in range(num_codebooks):
                words = codebook[m]
                residual += words.index_select(0, chunk[:, m])
                chunk[:, m] = torch.addmm(norms[m], residual, words.T, alpha=-2.0).argmin(dim=1)
                residual -= words.index_select(0, chunk[:, m])
    return result


def perturb(codes: torch.Tensor, codebook_size: int, count: int, generator: torch.Generator) -> torch.Tensor:
    """Codes with `count` randomly chosen positions per row set to random codewords (LSQ++'s perturbation)."""
    num_rows, num_codebooks = codes.shape
    scores = torch.rand(num_rows, num_codebooks, generator=generator, device=codes.device)
    positions = scores.topk(min(count, num_codebooks), dim=1).indices
    words = torch.randint(
        codebook_size,
        positions.shape,
        generator=generator,
        device=codes.device,
        dtype=codes.dtype,
    )
    return codes.clone().scatter_(1, positions, words)


def sufficient_statistics(
    matrix: torch.Tensor,
    codes: torch.Tensor,
    row_weights: torch.Tensor,
    codebook_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Σ_i w_i b_i b_iᵀ ((M·K)×(M·K), float64) and Σ_i w_i b_i e_iᵀ ((M·K)×D), b_i the one-hot code vector.

    These sums are all the least-squares refit needs; under data parallelism each rank computes them for
    its rows and `all_sum` adds them up.
    """
    gram, cross = _shard_statistics(matrix, codes, row_weights, codebook_size)
    return all_sum(gram), all_sum(cross)


def _shard_statistics(
    matrix: torch.Tensor,
    codes: torch.Tensor,
    row_weights: torch.Tensor,
    codebook_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`sufficient_statistics` of this process's rows alone."""
    num_codebooks = codes.shape[1]
    width = num_codebooks * codebook_size
    offsets = torch.arange(num_codebooks, device=codes.device) * codebook_size
    gram = torch.zeros(width, width, dtype=torch.float64, device=matrix.device)
    cross = torch.zeros(width, matrix.shape[1], dtype=torch.float64, device=matrix.device)
    size = _chunk_size(num_codebooks * num_codebooks + matrix.shape[1])
    for i in range(0, matrix.shape[0], size):
        chunk = codes[i : i + size]
        flat = chunk + offsets
        weight = row_weights[i : i + size].double()
        weighted = matrix[i : i + size].double() * weight[:, None]
        # One block row of the upper triangle at a time: its K rows of the gram stay in cache (9× faster at
        # M=128, K=16 than scattering into the whole (M·K)² matrix); the lower triangle is its mirror.
        for m in range(num_codebooks):
            pairs = chunk[:, m : m + 1] * width + flat[:, m:]
            block = gram[m * codebook_size : (m + 1) * codebook_size].view(-1)
            block.index_add_(0, pairs.reshape(-1), weight[:, None].expand_as(pairs).reshape(-1))
            cross[m * codebook_size : (m + 1) * codebook_size].index_add_(0, chunk[:, m], weighted)
    # Blocks below the diagonal are still zero and blocks on it diagonal: each block column below the
    # diagonal is its block row's mirror (15× faster than a whole transpose at M=16, K=256).
    for m in range(num_codebooks - 1):
        rows, below = slice(m * codebook_size, (m + 1) * codebook_size), slice((m + 1) * codebook_size, None)
        gram[below, rows] = gram[rows, below].T
    return gram, cross


def solve_codebook(
    gram: torch.Tensor, cross: torch.Tensor, previous: torch.Tensor, ridge: float
) -> torch.Tensor:
    """All codebooks at once: argmin_A Σ_i w_i ||e_i − b_iᵀA||² + λ||A − A_prev||² with a tiny ridge λ.

    The ridge pulls toward the previous codebook (not zero), so unused codewords keep their values and the
    system's null space (constants moved between codebooks) is pinned without shrinking anything.
    """
    num_codebooks, codebook_size, dim = previous.shape
    width = num_codebooks * codebook_size
    scale = float(gram.diagonal().mean()) * ridge + 1e-12
    system = gram + scale * torch.eye(width, dtype=gram.dtype, device=gram.device)
    target = cross + scale * previous.reshape(width, dim).double()
    factor, info = torch.linalg.cholesky_ex(system)
    if int(info) != 0:
        solution = torch.linalg.lstsq(system, target).solution
    else:
        solution = torch.cholesky_solve(target, factor)
    # LAPACK returns column-major solutions: made contiguous, the codebook is read row by row everywhere else.
    return solution.to(previous.dtype).reshape(num_codebooks, codebook_size, dim).contiguous()


# ----------------------------------------------------------------------------------------------------------
# Input checks, weights and checkpoints.


def _validate(matrix: torch.Tensor, num_codebooks: int, codebook_size: int, beam_size: int) -> None:
    if not isinstance(matrix, torch.Tensor) or matrix.ndim != 2:
        raise ValueError(f"matrix must be a 2-D torch tensor (rows × dim), got {type(matrix).__name__}.")
    if matrix.shape[0] == 0 or matrix.shape[1] == 0:
        raise ValueError(f"matrix has shape {tuple(matrix.shape)}; it needs at least one row and one column.")
    if not matrix.is_floating_point():
        raise ValueError(f"matrix must be floating point, got {matrix.dtype}; convert it with .float().")
    rows_per_chunk = _chunk_size(matrix.shape[1])
    if not all(
        bool(torch.isfinite(matrix[i : i + rows_per_chunk]).all())
        for i in range(0, matrix.shape[0], rows_per_chunk)
    ):
        raise ValueError("matrix contains NaN or Inf values; clean or drop those rows first.")
    if num_codebooks < 1 or codebook_size < 2:
        raise ValueError(
            f"need num_codebooks ≥ 1 and codebook_size ≥ 2, got M={num_codebooks}, K={codebook_size}."
        )
    if beam_size < 1:
        raise ValueError(f"beam_size must be ≥ 1, got {beam_size}.")
    width = num_codebooks * codebook_size
    needed = REFIT_COPIES * 8 * width**2
    memory = _device_memory(matrix.device)
    if memory is not None and needed > memory:
        raise ValueError(
            f"M·K = {width:,} codewords: the least-squares refit of all codebooks solves a (M·K)² float64 system, "
            f"about {needed / 2**30:,.1f} GiB, more than the {memory / 2**30:,.1f} GiB of {matrix.device}; use "
            "fewer codebooks (num_codebooks, -M) or smaller ones (codebook_size, -K)."
        )


def _device_memory(device: torch.device) -> int | None:
    """Bytes of memory of `device` (physical memory for the CPU), or None where it cannot be told."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def _normalise_weights(weights: torch.Tensor | None, matrix: torch.Tensor) -> torch.Tensor:
    """Row weights as a float tensor on the matrix's device, mean 1 over all shards' rows (uniform when None;
    normalised all the same, as other shards may have weights)."""
    if weights is None:
        weights = torch.ones(matrix.shape[0], dtype=matrix.dtype, device=matrix.device)
    weights = torch.as_tensor(weights).to(device=matrix.device, dtype=matrix.dtype).reshape(-1)
    if weights.shape[0] != matrix.shape[0]:
        raise ValueError(f"weights has {weights.shape[0]} entries but the matrix has {matrix.shape[0]} rows.")
    if not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()):
        raise ValueError("weights must be finite and ≥ 0 (e.g. token frequencies).")
    total, rows = all_sum(
        torch.stack([weights.double().sum(), weights.new_tensor(weights.shape[0]).double()])
    )
    if total <= 0:
        raise ValueError("weights are all zero; give at least one row a positive weight.")
    return weights * float(rows / total)


def _save(checkpointer: Checkpointer | None, state: _State, generator: torch.Generator) -> None:
    if checkpointer is None:
        return
    checkpointer.save(
        {
            "method": "additive",
            "codes": state.codes.cpu(),
            "codebook": state.codebook.cpu(),
            "iteration": state.iteration,
            "best": state.best,
            "stalled": state.stalled,
            "elapsed": state.elapsed,
            "beam": state.beam,
            "widened": state.widened,
            "generator": generator.get_state(),
        }
    )


def _resume(
    checkpointer: Checkpointer | None,
    matrix: torch.Tensor,
    num_codebooks: int,
    codebook_size: int,
    generator: torch.Generator,
    beam_size: int,
) -> _State | None:
    """The checkpointed state, after checking it belongs to this problem; restores the generator too.
    Checkpoints from before beam widening resume at `beam_size`."""
    saved = None if checkpointer is None else checkpointer.load()
    if saved is None:
        return None
    expected = (matrix.shape[0], num_codebooks, codebook_size, matrix.shape[1])
    found = (saved["codes"].shape[0], *saved["codebook"].shape)
    if saved.get("method") != "additive" or found != expected:
        raise ValueError(
            f"Checkpoint in {checkpointer.directory} is for a different run (rows, M, K, D = {found}, "
            f"expected {expected}); use another checkpoint directory or delete it to start over."
        )
    generator.set_state(saved["generator"])
    return _State(
        codes=saved["codes"].to(matrix.device),
        codebook=saved["codebook"].to(device=matrix.device, dtype=matrix.dtype),
        iteration=int(saved["iteration"]),
        best=float(saved["best"]),
        stalled=int(saved["stalled"]),
        elapsed=float(saved["elapsed"]),
        beam=int(saved.get("beam", beam_size)),
        widened=bool(saved.get("widened", False)),
    )
