"""Logits of a tied compressed LM head vs a dense `nn.Linear`, forward and forward+backward, side by side.

    python benchmarks/lm_head.py [--vocab 50257 --dim 768 -M 32 -K 16 --tokens 1024 --threads 1 2 --repeats 5]

The compressed head never builds the V×D matrix: one (M·K)×D by D×N product gives every codeword's score and
`embedding_bag` sums the M scores each vocabulary row's codes select. Times are medians over `--repeats` runs
after a warm-up; ratios > 1 mean the compressed head is faster. The machine's load average is printed before and
after, since other processes sharing the cores inflate both columns.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

import torch
from timing import median_seconds
from torch import nn

from dccl_hf import CompressedEmbedding
from dccl_hf.integration.layer import CompressedLMHead


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocab", type=int, default=50257)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("-M", "--num-codebooks", type=int, default=32)
    parser.add_argument("-K", "--codebook-size", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    generator = torch.Generator().manual_seed(0)
    vocab, dim, num_codebooks, codebook_size = args.vocab, args.dim, args.num_codebooks, args.codebook_size
    codes = torch.randint(codebook_size, (vocab, num_codebooks), generator=generator)
    codebook = (
        torch.randn(num_codebooks, codebook_size, dim, generator=generator) / (dim * num_codebooks) ** 0.5
    )
    embedding = CompressedEmbedding.from_codes(codes, codebook)
    compressed = CompressedLMHead(embedding)
    dense = nn.Linear(dim, vocab, bias=False)
    with torch.no_grad():
        dense.weight.copy_(embedding.reconstruct())
    hidden = torch.randn(args.tokens, dim, generator=generator, requires_grad=True)
    upstream = torch.randn(args.tokens, vocab, generator=generator)
    torch.testing.assert_close(compressed(hidden), dense(hidden), atol=1e-4, rtol=1e-3)

    def forward(head: nn.Module) -> Callable[[], object]:
        def step() -> object:
            with torch.no_grad():
                return head(hidden)

        return step

    def forward_backward(head: nn.Module) -> Callable[[], object]:
        def step() -> object:
            head.zero_grad(set_to_none=True)
            embedding.zero_grad(set_to_none=True)
            hidden.grad = None
            head(hidden).backward(upstream)
            return hidden.grad

        return step

    dense_bytes = dense.weight.numel() * dense.weight.element_size()
    print(
        f"V={vocab} D={dim} M={num_codebooks} K={codebook_size} tokens={args.tokens} repeats={args.repeats}"
    )
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, load average before: {os.getloadavg()}")
    print(
        f"head storage: dense fp32 {dense_bytes / 2**20:.1f} MiB, compressed "
        f"{(embedding.code_bytes + embedding.codebook_bytes) / 2**20:.2f} MiB (codes + codebook)"
    )
    print(f"{'threads':>7} {'pass':<17} {'dense (s)':>10} {'compressed (s)':>15} {'dense/compressed':>17}")
    for threads in args.threads:
        torch.set_num_threads(threads)
        for name, make in (("forward", forward), ("forward+backward", forward_backward)):
            dense_time = median_seconds(make(dense), args.repeats)
            compressed_time = median_seconds(make(compressed), args.repeats)
            print(
                f"{threads:>7} {name:<17} {dense_time:>10.3f} {compressed_time:>15.3f} "
                f"{dense_time / compressed_time:>16.2f}x"
            )
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
