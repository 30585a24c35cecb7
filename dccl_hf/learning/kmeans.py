"""Weighted k-means for the additive initialisation: progressive-dimension Lloyd, a k-means++ probe, and the
cost model that sizes a run (points, iterations) to a time budget.

Memory: a run on n points of dimension D holds at most `KMEANS_COPIES` (n, D) float tensors and never a
D×D one above `EXACT_AXES_DIM` dimensions (principal axes then come from a randomized SVD of a point sample).
"""

from __future__ import annotations

import math

import torch

#: Elements of one chunk of the work tensors that loops revisit (k-means scores, ICM residuals): small enough
#: to stay in cache.
CACHE_CHUNK_ELEMENTS = 1 << 20
#: Lloyd steps of each progressive k-means stage before the last (faiss's ProgressiveDimClustering uses 10).
STAGE_ITERATIONS = 10
#: Lloyd steps from k-means++ seeds that must beat progressive k-means for that run to be continued.
PROBE_ITERATIONS = 5
#: Largest dimension whose principal axes come from the exact D×D covariance (O(D³) per call: 25 s at D=4,096,
#: 80 GB of memory at D=100,000). Above it, or with fewer points than dimensions, the leading `LOW_RANK_AXES`
#: axes come from a randomized SVD of at most `AXES_POINTS` points.
EXACT_AXES_DIM = 1024
LOW_RANK_AXES = 128
AXES_POINTS = 2048
#: (n, D) float copies of the points a k-means run holds at most (the points, their principal coordinates, the
#: k-means++ candidates, a stage's contiguous copy); callers size n from it to bound memory.
KMEANS_COPIES = 4


def chunk_rows(elements_per_row: int, budget: int) -> int:
    """Rows per chunk so that a chunk's work tensors hold at most `budget` elements."""
    return max(1, budget // max(1, elements_per_row))


def kmeans(
    points: torch.Tensor,
    num_centroids: int,
    weights: torch.Tensor,
    generator: torch.Generator,
    iterations: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted k-means; returns centroids (K, D) and assignments (n,).

    Progressive-dimension k-means (`progressive_kmeans`), unless Lloyd from k-means++ seeds reaches a lower
    weighted inertia within `PROBE_ITERATIONS` steps, in which case that run continues instead. The progressive
    run is the one that matters on embeddings. Mean distance (time) of `residual_beam_init` with 1 thread, this
    against the former better of two Lloyd runs (k-means++ and density seeds): all-MiniLM-L6-v2 M=16,K=256
    0.647 (105 s) vs 0.693 (101 s), M=32,K=16 0.753 (88 s) vs 0.827 (76 s); GloVe 50d, 50k rows, M=16,K=256
    0.660 (49 s) vs 0.681 (33 s), M=32,K=16 0.805 vs 0.813, M=8,K=16 2.744 vs 2.751. The probe is for data of
    a few well-separated clusters, where Lloyd from k-means++ seeds converges in a few steps and the progressive
    run alone (from density seeds) can end hundreds of times above the optimum.
    """
    best = progressive_kmeans(points, num_centroids, weights, generator, iterations)
    seeds = _kmeanspp_seeds(points, num_centroids, weights, generator)
    probe = lloyd(points, seeds, weights, min(iterations, PROBE_ITERATIONS))
    if inertia(points, weights, *probe) >= inertia(points, weights, *best):
        return best
    return lloyd(points, probe[0], weights, iterations - min(iterations, PROBE_ITERATIONS))


def step_equivalents(points: int, num_centroids: int, dim: int, iterations: int) -> float:
    """Cost of one `kmeans` call in full-dimension Lloyd steps over all `points` (the unit its time is measured
    in): the progressive stages in their fewer dimensions, the last stage, the k-means++ seeding (one pass over
    its candidates per centroid) and probe, and the inertia comparisons."""
    rank = dim if dim <= EXACT_AXES_DIM and points >= dim else min(dim, points, LOW_RANK_AXES)
    schedule = dimension_schedule(rank)
    early = schedule if rank < dim else schedule[:-1]
    stages = sum(min(iterations, STAGE_ITERATIONS) * stage / dim for stage in early)
    seeding = min(points, 64 * num_centroids) / max(1, points)
    return 1 + iterations + stages + seeding + min(iterations, PROBE_ITERATIONS) + 2


def progressive_kmeans(
    points: torch.Tensor,
    num_centroids: int,
    weights: torch.Tensor,
    generator: torch.Generator,
    iterations: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted progressive-dimension k-means, as faiss's ProgressiveDimClustering; centroids and assignments.

    Lloyd runs in the leading d principal dimensions of the points for a roughly doubling schedule of d
    (`dimension_schedule`), each stage starting from the previous stage's clusters, and ends in all D
    dimensions with up to `iterations` steps (the earlier stages take at most `STAGE_ITERATIONS`). Clustering
    the dominant directions first avoids the poor local minima that Lloyd from sampled seeds falls into in
    high dimensions. Where only the leading axes are computed (`principal_axes`), the stages run up to their
    number and the last stage runs on the points themselves. Seeds are points drawn by weight (duplicates when
    there are fewer points than centroids; harmless: the assignment picks the first of equal centroids). Empty
    clusters keep their previous centroid.
    """
    dim = points.shape[1]
    mean, basis = principal_axes(points, weights, generator)
    rank = basis.shape[1]
    rotated = points @ basis - mean @ basis
    schedule = dimension_schedule(rank)
    centroids = _density_seeds(rotated[:, : schedule[0]], num_centroids, weights, generator)
    assignment = assign(rotated[:, : schedule[0]], centroids)
    for stage_dim in schedule:
        stage = rotated[:, :stage_dim].contiguous()
        # Carry the clusters over: centroids in the new dimensions are the means of their points there.
        padded = torch.nn.functional.pad(centroids, (0, stage_dim - centroids.shape[1]))
        centroids = _centroid_update(stage, assignment, weights, padded)
        last = stage_dim == dim
        centroids, assignment = lloyd(
            stage, centroids, weights, iterations if last else min(iterations, STAGE_ITERATIONS)
        )
    centroids = centroids @ basis.T + mean
    if rank < dim:
        del rotated, stage
        centroids = _centroid_update(points, assignment, weights, centroids)
        centroids, assignment = lloyd(points, centroids, weights, iterations)
    return centroids, assignment


def principal_axes(
    points: torch.Tensor, weights: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted mean (D,) and principal axes (D, r), columns by decreasing variance, of the points.

    All D axes (r = D) from the covariance when D ≤ `EXACT_AXES_DIM` and there are at least D points; else the
    leading r = min(`LOW_RANK_AXES`, n, D) axes from a randomized SVD of at most `AXES_POINTS` points (the
    points are a random sample already), so that no D×D matrix is ever formed."""
    total = weights.sum().clamp_min(1e-30)
    mean = (weights @ points) / total
    count, dim = points.shape
    if dim <= EXACT_AXES_DIM and count >= dim:
        covariance = torch.zeros(dim, dim, dtype=torch.float64, device=points.device)
        for i in range(0, count, chunk_rows(dim, CACHE_CHUNK_ELEMENTS)):
            centred = points[i : i + chunk_rows(dim, CACHE_CHUNK_ELEMENTS)] - mean
            share = (weights[i : i + centred.shape[0]] / total)[:, None]
            covariance += (centred.T @ (centred * share)).double()
        _, axes = torch.linalg.eigh(covariance)
        return mean, axes.flip(1).to(points.dtype)
    sample = points[:AXES_POINTS] - mean
    sample_weights = weights[: sample.shape[0]]
    sample *= (sample_weights / sample_weights.sum().clamp_min(1e-30)).sqrt()[:, None]
    rank = min(LOW_RANK_AXES, sample.shape[0], dim)
    return mean, _leading_right_singular_vectors(sample, rank, generator)


def _leading_right_singular_vectors(
    matrix: torch.Tensor, rank: int, generator: torch.Generator, power_steps: int = 2
) -> torch.Tensor:
    """The leading `rank` right singular vectors (D, rank) of `matrix` (n, D): exact for n up to 4·(rank + 10),
    else from the randomized range finder of Halko, Martinsson & Tropp with `power_steps` power iterations."""
    width = rank + 10
    if matrix.shape[0] <= 4 * width:  # an exact SVD costs n²·D, less than the range finder's passes
        return torch.linalg.svd(matrix, full_matrices=False).Vh[:rank].T.contiguous()
    probe = torch.randn(matrix.shape[1], width, generator=generator, device=matrix.device, dtype=matrix.dtype)
    basis = torch.linalg.qr(matrix @ probe).Q
    for _ in range(power_steps):
        basis = torch.linalg.qr(matrix @ torch.linalg.qr(matrix.T @ basis).Q).Q
    return torch.linalg.svd(basis.T @ matrix, full_matrices=False).Vh[:rank].T.contiguous()


def dimension_schedule(dim: int) -> list[int]:
    """Stage dimensions d_s = round(D^(s/S)), s = 1..S with S = ⌈log₂ D⌉: about doubling, ending at D.

    faiss's 10 stages for every D gained little at D=50 (GloVe, M=16, K=256: 0.658 against 0.660 with 6
    stages) for 55% more time.
    """
    stages = max(1, math.ceil(math.log2(dim)))
    return sorted({max(1, round(dim ** (s / stages))) for s in range(1, stages)} | {dim})


def lloyd(
    points: torch.Tensor, centroids: torch.Tensor, weights: torch.Tensor, iterations: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """At most `iterations` weighted Lloyd steps from `centroids`; returns centroids and assignments.

    On the CPU the steps stop once the assignment no longer changes; on CUDA all of them run, so that no step
    waits for the host to read a comparison (a converged step changes nothing)."""
    assignment = assign(points, centroids)
    stop_early = points.device.type == "cpu"
    for _ in range(iterations):
        centroids = _centroid_update(points, assignment, weights, centroids)
        new_assignment = assign(points, centroids)
        if stop_early and torch.equal(new_assignment, assignment):
            break
        assignment = new_assignment
    return centroids, assignment


def _centroid_update(
    points: torch.Tensor, assignment: torch.Tensor, weights: torch.Tensor, previous: torch.Tensor
) -> torch.Tensor:
    """Weighted mean of each cluster's points; clusters without weight keep their `previous` centroid.

    Weighted sums are formed chunk by chunk, so no weighted (n, D) copy of the points exists.
    """
    sums = torch.zeros_like(previous)
    size = chunk_rows(points.shape[1], CACHE_CHUNK_ELEMENTS)
    for i in range(0, points.shape[0], size):
        chunk = points[i : i + size] * weights[i : i + size, None]
        sums.index_add_(0, assignment[i : i + size], chunk)
    mass = torch.zeros(previous.shape[0], dtype=points.dtype, device=points.device).index_add_(
        0, assignment, weights
    )
    return torch.where((mass > 0)[:, None], sums / mass.clamp_min(1e-30)[:, None], previous)


def inertia(
    points: torch.Tensor, weights: torch.Tensor, centroids: torch.Tensor, assignment: torch.Tensor
) -> float:
    """Σ w_i ||p_i − c_a(i)||², in chunks."""
    size = chunk_rows(points.shape[1], CACHE_CHUNK_ELEMENTS)
    total = torch.zeros((), dtype=torch.float64, device=points.device)
    for i in range(0, points.shape[0], size):
        gaps = points[i : i + size] - centroids[assignment[i : i + size]]
        total += ((gaps**2).sum(dim=1) * weights[i : i + size]).sum().double()
    return float(total)


def _density_seeds(
    points: torch.Tensor, num_centroids: int, weights: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """Distinct points drawn with probability ∝ weight (with replacement when there are fewer points than
    centroids): seeds that follow the density, as faiss's k-means does."""
    replacement = points.shape[0] < num_centroids
    chosen = torch.multinomial(weights + 1e-12, num_centroids, replacement=replacement, generator=generator)
    return points[chosen].clone()


def _kmeanspp_seeds(
    points: torch.Tensor, num_centroids: int, weights: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """k-means++ seeding on a random subsample of at most 64·K points (weighted by `weights`); the chosen
    indices stay on the device (no host synchronisation per seed)."""
    sample_size = min(points.shape[0], 64 * num_centroids)
    sample = torch.multinomial(weights + 1e-12, sample_size, replacement=False, generator=generator)
    candidates, candidate_weights = points[sample], weights[sample] + 1e-12
    norms = (candidates**2).sum(dim=1)
    chosen = torch.empty(num_centroids, dtype=torch.long, device=points.device)
    chosen[0] = torch.multinomial(candidate_weights, 1, generator=generator)[0]
    nearest = _squared_distances_to(candidates, norms, chosen[0])
    for k in range(1, num_centroids):
        mass = nearest * candidate_weights
        # All remaining mass zero: every candidate coincides with a centroid, so any pick is as good.
        probabilities = torch.where(mass.sum() > 0, mass, candidate_weights)
        chosen[k] = torch.multinomial(probabilities, 1, generator=generator)[0]
        nearest = torch.minimum(nearest, _squared_distances_to(candidates, norms, chosen[k]))
    return candidates[chosen].clone()


def _squared_distances_to(points: torch.Tensor, norms: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """||p − points[index]||² for every point as ||p||² − 2⟨p, q⟩ + ||q||²: one matrix-vector product, no (n, D)
    temporary (which made seeding take 18 s per codebook at D=384)."""
    return (norms - 2.0 * (points @ points[index]) + norms[index]).clamp_min(0.0)


def assign(points: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index of the nearest centroid of every point, in cache-sized chunks (2.4× faster than 8M-element chunks
    for K=256 in 7 dimensions, the early stages of `progressive_kmeans`)."""
    norms = (centroids**2).sum(dim=1)
    size = chunk_rows(centroids.shape[0], CACHE_CHUNK_ELEMENTS)
    parts = [
        torch.addmm(norms, points[i : i + size], centroids.T, alpha=-2.0).argmin(dim=1)
        for i in range(0, points.shape[0], size)
    ]
    return torch.cat(parts)
