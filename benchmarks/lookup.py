"""Lookup speed of `CompressedEmbedding` against `nn.Embedding`, side by side in one run.

Shape of all-MiniLM-L6-v2's word embeddings (V=30522, D=384), a batch of 64×512 ids, M=32, K=16 by default.
The ids are drawn uniformly from the vocabulary, or as words of text are (Zipf's law: probability ∝ 1 / rank, so
a batch repeats its frequent ids).
Run: python benchmarks/lookup.py > benchmarks/results/lookup.txt
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import torch
from timing import median_seconds
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
    parser.add_argument("--repeats", type=int, default=15)
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

    print(f"# command: python {' '.join(sys.argv)}")
    print(f"# torch {torch.__version__}, V={args.vocab}, D={args.dim}, ids={args.batch}x{args.seq}, ", end="")
    print(f"M={args.num_codebooks}, K={args.codebook_size}, median of {args.repeats}")
    print(f"# {compressed}")
    for kind in args.ids:
        print(f"# {kind} ids: {batches[kind].unique().numel()} distinct of {batches[kind].numel()}")
    header = (
        f"{'ids':>7} {'threads':>7} {'pass':>16} {'nn.Embedding ms':>16} {'Compressed ms':>14} {'ratio':>6}"
    )
    print(header)
    for kind in args.ids:
        ids = batches[kind]
        for threads in args.threads:
            torch.set_num_threads(threads)
            for name, make_step in (("forward", forward_step), ("forward+backward", forward_backward_step)):
                dense_time = median_seconds(make_step(dense, ids), args.repeats)
                compressed_time = median_seconds(make_step(compressed, ids), args.repeats)
                print(
                    f"{kind:>7} {threads:>7} {name:>16} {dense_time * 1e3:>16.2f} {compressed_time * 1e3:>14.2f} "
                    f"{compressed_time / dense_time:>6.2f}"
                )


if __name__ == "__main__":
    main()
