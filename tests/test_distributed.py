"""Data-parallel compression: two CPU processes (gloo), each with half of the rows, learn one codebook that rebuilds
the whole table as well as one process does, with sums over rows equal to the single-process ones."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dccl_hf import compress
from dccl_hf.learning.additive import sufficient_statistics
from dccl_hf.learning.distributed import gather_rows, rank_and_size

ROWS, DIM, M, K = 3000, 12, 4, 16
WORLD = 2
PADDING = 2000  # a row of the second shard, counted in the whole table


def table() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(30, DIM, generator=generator) * 3
    matrix = centres[torch.randint(30, (ROWS,), generator=generator)] + torch.randn(
        ROWS, DIM, generator=generator
    )
    weights = torch.rand(ROWS, generator=generator) + 0.5
    return matrix, weights


def shard(rank: int) -> slice:
    size = -(-ROWS // WORLD)
    return slice(rank * size, min(ROWS, (rank + 1) * size))


def run_rank(rank: int, directory: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{directory}/store", rank=rank, world_size=WORLD)
    try:
        matrix, weights = table()
        rows = shard(rank)
        options: dict[str, Any] = {"seed": 0, "progress": False, "padding_idx": PADDING}
        module = compress(matrix[rows], M, K, weights=weights[rows], **options)
        timed = compress(matrix[rows], M, K, time_budget=3.0, **options)  # rank 0's clock decides for both
        gram, cross = sufficient_statistics(matrix[rows], module.codes[rows], weights[rows], K)
        errors = []
        for unsupported in ({"checkpoint_dir": directory}, {"method": "dccl"}):
            try:
                compress(matrix[rows], M, K, max_iterations=1, **options, **unsupported)
            except ValueError as error:
                errors.append(str(error))
        broken = matrix[rows].clone()
        broken[3, 0] = float("nan") if rank == 1 else broken[3, 0]
        try:  # only rank 1's shard is bad: rank 0 must not wait for it forever
            compress(broken, M, K, max_iterations=1, **options)
        except (ValueError, RuntimeError) as error:
            errors.append(f"{type(error).__name__}: {error}")
        result = {
            "rank": rank_and_size(),
            "codes": module.codes,
            "codebook": module.codebook.detach(),
            "padding_idx": module.padding_idx,
            "timed_codes": timed.codes,
            "timed_codebook": timed.codebook.detach(),
            "gram": gram,
            "cross": cross,
            "gathered": gather_rows(torch.arange(rows.start, rows.stop)),
            "errors": errors,
        }
        torch.save(result, f"{directory}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    directory = tmp_path_factory.mktemp("distributed")
    mp.spawn(run_rank, args=(str(directory),), nprocs=WORLD, join=True)
    return [torch.load(directory / f"rank{rank}.pt") for rank in range(WORLD)]


def mean_distance(codes: torch.Tensor, codebook: torch.Tensor, matrix: torch.Tensor, skip: int) -> float:
    rebuilt = codebook[torch.arange(M), codes].sum(1)
    keep = torch.arange(ROWS) != skip
    return float((rebuilt - matrix)[keep].norm(dim=1).mean())


def test_every_rank_gets_the_same_module_for_the_whole_table(ranks: list[dict[str, Any]]) -> None:
    assert [result["rank"] for result in ranks] == [(0, WORLD), (1, WORLD)]
    first, second = ranks
    assert first["codes"].shape == (ROWS, M)
    torch.testing.assert_close(first["codes"], second["codes"], rtol=0, atol=0)
    torch.testing.assert_close(first["codebook"], second["codebook"], rtol=0, atol=0)
    torch.testing.assert_close(first["timed_codes"], second["timed_codes"], rtol=0, atol=0)
    torch.testing.assert_close(first["gathered"], torch.arange(ROWS), rtol=0, atol=0)
    assert first["padding_idx"] == second["padding_idx"] == PADDING


def test_sums_over_rows_equal_the_single_process_ones(ranks: list[dict[str, Any]]) -> None:
    matrix, weights = table()
    gram, cross = sufficient_statistics(matrix, ranks[0]["codes"], weights, K)
    for result in ranks:
        torch.testing.assert_close(result["gram"], gram)
        torch.testing.assert_close(result["cross"], cross)


def test_two_shards_learn_as_well_as_one_process(ranks: list[dict[str, Any]]) -> None:
    matrix, weights = table()
    alone = compress(matrix, M, K, weights=weights, padding_idx=PADDING, seed=0, progress=False)
    sharded = mean_distance(ranks[0]["codes"], ranks[0]["codebook"], matrix, PADDING)
    single = mean_distance(alone.codes, alone.codebook.detach(), matrix, PADDING)
    # Both at their plateau; one process's seeds 0-3 spread over 2.30-2.35 here, and the sharded run's initial
    # codebook comes from one shard (2.33 against seed 0's 2.31).
    assert sharded < 1.05 * single


def test_unsupported_options_are_clear_errors_on_every_rank(ranks: list[dict[str, Any]]) -> None:
    for result in ranks:
        checkpoint, method, _ = result["errors"]
        assert "does not support checkpoint_dir=" in checkpoint
        assert "does not support method='dccl'" in method


def test_a_bad_shard_stops_every_rank(ranks: list[dict[str, Any]]) -> None:
    assert ranks[1]["errors"][2].startswith("ValueError: matrix row 3 contains NaN")
    assert ranks[0]["errors"][2] == "RuntimeError: 1 other rank(s) failed before learning; see their errors."
