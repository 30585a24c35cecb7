"""How closely `dccl_hf.compress(..., time_budget=B)` keeps to its budget: wall time / B, and what it reaches.

    python benchmarks/budget.py --threads 1
    python benchmarks/budget.py --rows 3000 --settings 16x256 --budgets 4 8 16
    python benchmarks/budget.py --shapes 10x3000 10x100000 --settings 16x16 --budgets 5 --threads 1

Compresses the first `--rows` rows of a dataset at each setting with each budget (seconds) using the default
method, after one untimed warm-up call, and prints the wall time of the whole `compress` call, its ratio to the
budget (the promise is ≤ 1; the initialisation always runs, so a budget it cannot fit is exceeded by it), and the
mean euclidean distance reached. `--shapes ROWSxDIM …` uses standard normal tables of those shapes instead of
the dataset (wide rows: the initialisation's principal axes and k-means scale to the budget there too). Small budgets are where fixed costs (the round-cost probe, the refit's solve of
an (M·K)² system) weigh most.
"""

from __future__ import annotations

import argparse
import time

import torch
from reconstruction import SETTINGS, load_dataset, parse_setting

import dccl_hf


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="glove", help="glove, minilm or a .npy file")
    parser.add_argument("--rows", type=int, nargs="+", default=[3000, 20000])
    parser.add_argument("--shapes", nargs="+", help="ROWSxDIM: standard normal tables instead of the dataset")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), help="MxK settings")
    parser.add_argument(
        "--budgets", type=float, nargs="+", help="seconds (default: 2, 4 and 8 per 3,000 rows)"
    )
    parser.add_argument("--threads", type=int, help="torch threads (default: its own)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    # Warm-up: the first call pays torch's lazy initialisation, which is not the learner's.
    dccl_hf.compress(torch.randn(512, 8), 2, 4, time_budget=1.0, progress=False)

    print("rows×dim      setting  budget s    wall s  wall/budget  mean dist")
    tables = (
        (torch.randn(*(int(size) for size in shape.split("x"))) for shape in args.shapes)
        if args.shapes
        else (torch.from_numpy(load_dataset(args.dataset, rows)) for rows in args.rows)
    )
    for matrix in tables:
        rows, dim = matrix.shape
        budgets = args.budgets or [seconds * rows / 3000 for seconds in (2.0, 4.0, 8.0)]
        for setting in args.settings:
            num_codebooks, codebook_size = parse_setting(setting)
            for budget in budgets:
                start = time.monotonic()
                compressed = dccl_hf.compress(
                    matrix, num_codebooks, codebook_size, time_budget=budget, progress=False
                )
                wall = time.monotonic() - start
                distance = dccl_hf.reconstruction_report(matrix, compressed).mean_euclidean_distance
                print(
                    f"{f'{rows}x{dim}':<13} {setting:<8} {budget:>8.1f}  {wall:>8.2f}  {wall / budget:>11.3f}  {distance:>9.5f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
