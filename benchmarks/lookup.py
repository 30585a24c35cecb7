"""Lookup speed of `CompressedEmbedding` against `nn.Embedding`, side by side in one run.

Shape of all-MiniLM-L6-v2's word embeddings (V=30522, D=384), a batch of 64×512 ids, M=32, K=16 by default.
The ids are drawn uniformly from the vocabulary, or as words of text are (Zipf's law: probability ∝ 1 / rank, so
a batch repeats its frequent ids). Each repeat times the dense and the compressed step back to back, so both see
the same load; the table gives the median time of each, the median of the per-repeat ratios and its spread
(25th-75th percentile of the ratios). The load average is printed before and after.
Run: python benchmarks/lookup.py > benchmarks/results/lookup.txt
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
from torch import nn

from dccl_hf import CompressedEmbedding


def forward_step(module: nn.Module, ids: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        with torch.no_grad():
            module(ids)

    return step


def forward_backward_step(module: nn.Module, ids: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        module.zero_grad(set_to_none=True)
        module(ids).sum().backward()

    return step


def paired_seconds(
    dense: Callable[[], None], compressed: Callable[[], None], repeats: int
) -> tuple[list[float], list[float]]:
    """Wall times of `dense` and `compressed`, alternating (which goes first alternates too), after a warm-up."""
    for step in (dense, compressed, dense, compressed):
        step()
    dense_times, compressed_times = [], []
    for repeat in range(repeats):
        order = [(dense, dense_times), (compressed, compressed_times)]
        for step, times in order if repeat % 2 == 0 else reversed(order):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
    return dense_times, compressed_times


def quartiles(values: list[float]) -> tuple[float, float]:
    low, _, high = statistics.quantiles(values, n=4)
    return low, high


def header(args: argparse.Namespace, compressed: CompressedEmbedding) -> None:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    print(f"# command: python {' '.join(sys.argv)}")
    print(
        f"# commit {commit or 'unknown'}, torch {torch.__version__}, {platform.processor() or platform.machine()}, ",
        end="",
    )
    print(f"{os.cpu_count()} CPUs, load average {' '.join(f'{load:.1f}' for load in os.getloadavg())}")
    print(f"# V={args.vocab}, D={args.dim}, ids={args.batch}x{args.seq}, M={args.num_codebooks}, ", end="")
    print(f"K={args.codebook_size}, {args.repeats} interleaved repeats")
    print(f"# {compressed}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--vocab", type=int, default=30522)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("-M", "--num-codebooks", type=int, default=32)
    parser.add_argument("-K", "--codebook-size", type=int, default=16)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--ids", nargs="+", choices=["uniform", "zipf"], default=["uniform", "zipf"])
    args = parser.parse_args()

    generator = torch.Generator().manual_seed(0)
    dense = nn.Embedding(args.vocab, args.dim)
    codes = torch.randint(args.codebook_size, (args.vocab, args.num_codebooks), generator=generator)
    codebook = torch.randn(args.num_codebooks, args.codebook_size, args.dim, generator=generator)
    compressed = CompressedEmbedding.from_codes(codes, codebook)
    ranks = torch.arange(1, args.vocab + 1, dtype=torch.float64)
    batches = {
        "uniform": torch.randint(args.vocab, (args.batch, args.seq), generator=generator),
        "zipf": torch.multinomial(
            1 / ranks, args.batch * args.seq, replacement=True, generator=generator
        ).reshape(args.batch, args.seq),
    }

    header(args, compressed)
    for kind in args.ids:
        print(f"# {kind} ids: {batches[kind].unique().numel()} distinct of {batches[kind].numel()}")
    print(
        f"{'ids':>7} {'threads':>7} {'pass':>16} {'nn.Embedding ms':>16} {'Compressed ms':>14} "
        f"{'ratio':>6} {'ratio 25-75%':>13}"
    )
    for kind in args.ids:
        ids = batches[kind]
        for threads in args.threads:
            torch.set_num_threads(threads)
            for name, make_step in (("forward", forward_step), ("forward+backward", forward_backward_step)):
                dense_times, compressed_times = paired_seconds(
                    make_step(dense, ids), make_step(compressed, ids), args.repeats
                )
                ratios = [c / d for c, d in zip(compressed_times, dense_times, strict=True)]
                low, high = quartiles(ratios)
                print(
                    f"{kind:>7} {threads:>7} {name:>16} {statistics.median(dense_times) * 1e3:>16.2f} "
                    f"{statistics.median(compressed_times) * 1e3:>14.2f} {statistics.median(ratios):>6.2f} "
                    f"{low:>6.2f}-{high:<6.2f}"
                )
    print(f"# load average at the end: {' '.join(f'{load:.1f}' for load in os.getloadavg())}")


if __name__ == "__main__":
    main()
