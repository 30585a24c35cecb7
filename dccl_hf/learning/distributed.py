"""Data parallelism over row shards with `torch.distributed` (e.g. under `torchrun`).

Each rank holds a contiguous block of the table's rows, in rank order. Every sum over rows goes through
`all_sum`, every decision taken from one rank's clock through `agreed`, and the codes come back together with
`gather_rows` (data only rank 0 works on: `gather_rows_on_first`); local work that can fail on one rank only
(reading, checking) runs inside `together`. In a single process (no initialised process group) each is the
identity, so the learners run unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist


def rank_and_size() -> tuple[int, int]:
    """(this process's rank, number of processes): (0, 1) without an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_sharded() -> bool:
    """Whether the rows are split over several processes."""
    return rank_and_size()[1] > 1


def all_sum(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` summed over all ranks (in place; returned for chaining)."""
    if is_sharded():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def agreed(values: list[float], device: torch.device) -> list[float]:
    """Rank 0's `values`, on every rank: decisions taken from a clock (time budgets) must not differ between
    ranks, or they would enter the next collective at different points."""
    if not is_sharded():
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.broadcast(tensor, src=0)
    return tensor.tolist()


def broadcast(tensor: torch.Tensor) -> torch.Tensor:
    """Rank 0's `tensor` on every rank (in place)."""
    if is_sharded():
        dist.broadcast(tensor, src=0)
    return tensor


def shard_rows(rows: int, device: torch.device) -> list[int]:
    """The number of rows of every rank's shard, in rank order."""
    _, size = rank_and_size()
    if size == 1:
        return [rows]
    counts = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(size)]
    dist.all_gather(counts, torch.tensor([rows], dtype=torch.int64, device=device))
    return [int(count) for count in counts]


def gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's `tensor` (rows × …) concatenated in rank order, on every rank."""
    gathered = _gather_rows(tensor, to_every_rank=True)
    assert gathered is not None  # every rank receives
    return gathered


def gather_rows_on_first(tensor: torch.Tensor) -> torch.Tensor | None:
    """Every rank's `tensor` (rows × …) concatenated in rank order on rank 0, None on the others: for data
    only rank 0 works on, which the other ranks then need not hold."""
    return _gather_rows(tensor, to_every_rank=False)


def _gather_rows(tensor: torch.Tensor, *, to_every_rank: bool) -> torch.Tensor | None:
    rank, size = rank_and_size()
    if size == 1:
        return tensor
    counts = shard_rows(tensor.shape[0], tensor.device)
    # Collectives move equal shapes: each rank's part is padded to the largest and cut back after.
    padded = tensor.new_zeros((max(counts), *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    parts = [torch.empty_like(padded) for _ in range(size)] if to_every_rank or rank == 0 else None
    if to_every_rank:
        dist.all_gather(parts, padded)
    else:
        dist.gather(padded, parts, dst=0)
    if parts is None:
        return None
    return torch.cat([part[:count] for part, count in zip(parts, counts, strict=True)])


@contextmanager
def together(device: torch.device) -> Iterator[None]:
    """Run local work that may fail on some ranks only (reading and checking a shard): on leaving the block every
    rank learns whether any rank failed, and all raise (a failing rank its own error, the others a
    RuntimeError), instead of the others waiting forever in the next collective."""
    try:
        yield
    except Exception:
        count_ranks(True, device)  # tells the others this rank failed
        raise
    failures = count_ranks(False, device)
    if failures:
        raise RuntimeError(f"{failures} other rank(s) failed before learning; see their errors.")


def count_ranks(flag: bool, device: torch.device) -> int:
    """How many ranks (this one included) pass a true `flag`; every rank must call it."""
    return int(all_sum(torch.tensor([float(flag)], device=device)).item())
