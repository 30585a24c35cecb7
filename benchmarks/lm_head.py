"""Logits of a tied compressed LM head vs a dense `nn.Linear`, per token count and path, side by side.

    python benchmarks/lm_head.py [--vocab 49152 --dim 576 -M 128 -K 16 --tokens 1 8 64 512 2048
                                  --threads 1 2 --repeats 5 --train-tokens 1024]

For each token count N (forward, no gradients) it times the dense head, the compressed head's two paths forced
(`score`: codeword scores summed per row through byte tables; `decoded`: the table decoded in chunks and
multiplied) and the head as it chooses (`auto`), then forward + backward of the dense and `auto` heads at
`--train-tokens`. The per-element costs of `dense`, `score` and `decoded` set `GATHER_COST` and `DECODE_COST` in
`dccl_hf/integration/layer.py`, hence the switch between the paths. Every repeat times each column once, in turn (interleaved, so load from other
processes hits all columns alike); the table shows medians in ms with the min–max spread, and ratios > 1 mean
the compressed head is faster. Defaults are SmolLM2-135M's table at M=128, K=16.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import time
from collections.abc import Callable

import torch
from torch import nn

from dccl_hf import CompressedEmbedding
from dccl_hf.integration import layer
from dccl_hf.integration.layer import CompressedLMHead


def seconds(step: Callable[[], object]) -> float:
    """Wall time of one call of `step`."""
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def interleaved(steps: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Times of each step over `repeats` rounds, every step once per round, after one warm-up round."""
    for step in steps.values():
        step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            times[name].append(seconds(step))
    return times


def cell(times: list[float]) -> str:
    """Median [min–max] in milliseconds."""
    ms = [value * 1e3 for value in times]
    return f"{statistics.median(ms):.1f} [{min(ms):.1f}-{max(ms):.1f}]"


def no_grad(function: Callable[[torch.Tensor], torch.Tensor], hidden: torch.Tensor) -> Callable[[], object]:
    def step() -> object:
        with torch.no_grad():
            return function(hidden)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocab", type=int, default=49152)
    parser.add_argument("--dim", type=int, default=576)
    parser.add_argument("-M", "--num-codebooks", type=int, default=128)
    parser.add_argument("-K", "--codebook-size", type=int, default=16)
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 8, 64, 512, 2048])
    parser.add_argument("--train-tokens", type=int, default=1024)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    generator = torch.Generator().manual_seed(0)
    vocab, dim, num_codebooks, codebook_size = args.vocab, args.dim, args.num_codebooks, args.codebook_size
    codes = torch.randint(codebook_size, (vocab, num_codebooks), generator=generator)
    codebook = torch.randn(num_codebooks, codebook_size, dim, generator=generator) / num_codebooks**0.5
    embedding = CompressedEmbedding.from_codes(codes, codebook, padding_idx=0)
    compressed = CompressedLMHead(embedding)
    dense = nn.Linear(dim, vocab, bias=False)
    with torch.no_grad():
        dense.weight.copy_(embedding.reconstruct())
    probe = torch.randn(3, dim, generator=generator)
    with torch.no_grad():
        for path in (layer._score_logits, layer._decoded_logits):
            torch.testing.assert_close(path(embedding, probe), dense(probe), atol=1e-3, rtol=1e-3)

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout
    print(f"commit {commit.strip()}, torch {torch.__version__}, {os.cpu_count()} CPUs")
    print(f"load average before: {os.getloadavg()}")
    print(
        f"V={vocab} D={dim} M={num_codebooks} K={codebook_size}, {args.repeats} interleaved repeats; head storage: "
        f"dense fp32 {embedding.dense_bytes / 2**20:.1f} MiB, compressed "
        f"{(embedding.code_bytes + embedding.codebook_bytes) / 2**20:.2f} MiB (codes + codebook)"
    )
    decoded_from = next((n for n in range(1, 1 << 20) if compressed.uses_decoded_path(n)), None)
    print(
        f"auto takes the decoded path from N = {decoded_from}"
        if decoded_from
        else "auto: score path at every N"
    )
    columns = ("dense", "score", "decoded", "auto")
    print(f"{'threads':>7} {'N':>5} " + " ".join(f"{name + ' ms':>22}" for name in columns) + "  dense/auto")
    for threads in args.threads:
        torch.set_num_threads(threads)
        for tokens in args.tokens:
            hidden = torch.randn(tokens, dim, generator=generator)
            functions = (
                dense,
                lambda flat: layer._score_logits(embedding, flat),
                lambda flat: layer._decoded_logits(embedding, flat),
                compressed,
            )
            times = interleaved(
                {name: no_grad(function, hidden) for name, function in zip(columns, functions, strict=True)},
                args.repeats,
            )
            ratio = statistics.median(times["dense"]) / statistics.median(times["auto"])
            print(
                f"{threads:>7} {tokens:>5} "
                + " ".join(f"{cell(times[name]):>22}" for name in columns)
                + f"  {ratio:>9.2f}x"
            )
        print_training(dense, compressed, embedding, args.train_tokens, args.repeats, threads, generator)
    print(f"load average after: {os.getloadavg()}")


def print_training(
    dense: nn.Module,
    compressed: CompressedLMHead,
    embedding: CompressedEmbedding,
    tokens: int,
    repeats: int,
    threads: int,
    generator: torch.Generator,
) -> None:
    """Forward + backward of the dense and the compressed head at `tokens` tokens."""
    hidden = torch.randn(tokens, embedding.embedding_dim, generator=generator, requires_grad=True)
    upstream = torch.randn(tokens, embedding.num_embeddings, generator=generator)

    def step(head: nn.Module) -> Callable[[], object]:
        def run() -> object:
            dense.zero_grad(set_to_none=True)
            embedding.zero_grad(set_to_none=True)
            hidden.grad = None
            head(hidden).backward(upstream)
            return hidden.grad

        return run

    times = interleaved({"dense": step(dense), "auto": step(compressed)}, repeats)
    ratio = statistics.median(times["dense"]) / statistics.median(times["auto"])
    print(
        f"{threads:>7} {tokens:>5} forward+backward: dense {cell(times['dense'])} ms, "
        f"auto {cell(times['auto'])} ms, dense/auto {ratio:.2f}x"
    )


if __name__ == "__main__":
    main()
