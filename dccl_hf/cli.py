"""The `dccl-hf` command: compress an embedding table, evaluate, export/import reference files, export ONNX, push
to the Hub."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import logging
import shutil
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import huggingface_hub

from dccl_hf import __version__, learning
from dccl_hf.artifacts import ARTIFACT_ENTRIES, VOCAB_NAME
from dccl_hf.embedding import CompressedEmbedding
from dccl_hf.fidelity.calibration import token_counts, word_counts
from dccl_hf.fidelity.distill import DEFAULT_MAX_STEPS
from dccl_hf.files import check_replaceable, staged_directory, write_file_atomic
from dccl_hf.formats import load_reference, reference_paths, save_reference
from dccl_hf.keyed_vectors import WORD2VEC_FORMATS, CompressedKeyedVectors
from dccl_hf.learning.checkpoint import RunLock
from dccl_hf.metrics import reconstruction_report
from dccl_hf.readers import (
    FORMATS,
    NAMED_SOURCES,
    EmbeddingSource,
    check_words,
    read_embeddings,
)

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = ".checkpoint"
RUN_FILE = "run.json"
ARTIFACT_CONFIG = "config.json"
#: What a save into -o replaces: the artifact's files and the finished run's checkpoint.
ARTIFACT_REPLACEABLE = ARTIFACT_ENTRIES | {CHECKPOINT_DIR}
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXPORT_FORMATS = ("codes", *WORD2VEC_FORMATS)

INPUT_HELP = (
    "the embedding matrix: a GloVe .txt, word2vec/fastText .vec, word2vec binary .bin, .npy or .safetensors file "
    "(.txt/.vec/.bin may be .gz), a GGUF file (.gguf: its token table and tokens), a Hugging Face model directory or repo id (its input embeddings), or a named "
    f"data set: {', '.join(NAMED_SOURCES)}"
)

COMPRESS_EXAMPLES = """\
examples:
  dccl-hf compress glove-6b-50d --limit 50000 -M 32 -K 16 -o glove-m32k16 --time-budget 300
  dccl-hf compress glove.6B.300d.txt -M 32 -K 16 -o glove300 --time-budget 600
  dccl-hf compress sentence-transformers/all-MiniLM-L6-v2 -M 16 -K 256 -o minilm --device cuda
  dccl-hf compress all-minilm-l6-v2 -M 16 -K 256 -o minilm --calibration sentences.txt --distill-budget 300
  dccl-hf compress vectors.npy --vocab words.txt -M 8 -K 16 -o small --method dccl --max-iterations 2000

An interrupted run (Ctrl-C, a killed process) keeps its state in OUTDIR/.checkpoint: rerun the same command with
--resume to continue where it stopped. OUTDIR receives config.json, model.safetensors, README.md and, when the
input has words, vocab.txt (one word per row); load it with CompressedEmbedding.from_pretrained(OUTDIR).

--calibration on a Hugging Face model loads the whole model: the codes are learned under its sensitivity to the
embeddings and the codebook is then distilled on the text (the distillation is not checkpointed: --resume resumes
the code learning and runs the distillation again).
"""

EVALUATE_EXAMPLES = """\
examples:
  dccl-hf evaluate glove-m32k16 --original glove-6b-50d
  dccl-hf evaluate minilm --original sentence-transformers/all-MiniLM-L6-v2 --limit 10000

Prints the mean euclidean distance between original and reconstructed rows (the reference implementation's
metric), the relative squared error, the mean cosine similarity, bits per row and the compression ratio. By default
the first as many rows of the original as the artifact has are compared.
"""

EXPORT_EXAMPLES = """\
examples:
  dccl-hf export glove-m32k16 -o out/glove
  dccl-hf export glove-m32k16 -o out/glove --format word2vec-binary

Writes out/glove.codes (one line per row: `word<TAB>c1 ... cM` when OUTDIR has vocab.txt, else `c1 ... cM`) and
out/glove.codebook.npy (float32, M*K x D), the files of the reference implementation (neuralcompressor).
--format word2vec writes the reconstructed (dense) vectors with their words as word2vec text, out/glove.txt, and
--format word2vec-binary as word2vec binary, out/glove.bin: what gensim's KeyedVectors.load_word2vec_format and
other word-vector tools read.
"""

IMPORT_EXAMPLES = """\
examples:
  dccl-hf import out/glove -o glove-m32k16

Reads PREFIX.codes and PREFIX.codebook.npy and writes a dccl_hf artifact (plus vocab.txt when the codes file has
words). K is the codebook rows divided by the codes per line unless --codebook-size is given.
"""

EXPORT_ONNX_EXAMPLES = """\
examples:
  dccl-hf export-onnx glove-m32k16 -o glove.onnx
  dccl-hf export-onnx my-compressed-model -o model.onnx --opset 17 --exporter torchscript

Writes an ONNX file of a dccl_hf artifact (input input_ids, output embeddings) or of a transformers model saved
with compressed embeddings (inputs input_ids and attention_mask), codes packed, batch and sequence dynamic. The
file is checked with onnxruntime when it is installed (pip install "dccl-hf[onnx]").
"""

PUSH_EXAMPLES = """\
examples:
  dccl-hf push glove-m32k16 my-user/glove-6b-50d-dccl-m32k16 --private

Uploads OUTDIR (config.json, model.safetensors, README.md model card, vocab.txt) to a Hub model repository,
creating it if needed. The token comes from --token, the HF_TOKEN environment variable or `hf auth login`.
"""


class UsageError(ValueError):
    """The command line itself is wrong (an option's value, a missing --resume or --overwrite): exit code 2."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run `dccl-hf` with `argv` (default: the command line); returns the exit code: 0 on success, 2 for a
    wrong command line, 1 for a failure while running, 130 when interrupted."""
    parser, commands = _build_parsers()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # reported with the usage of the command they were given to, not the top-level one
        commands.get(getattr(args, "command", None), parser).error(
            f"unrecognized arguments: {' '.join(unknown)}"
        )
    verbosity = getattr(args, "verbose", 0)
    quiet = getattr(args, "quiet", False)
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG)
    logging.getLogger("dccl_hf").setLevel(logging.ERROR if quiet else level)
    handler: Callable[[argparse.Namespace], int] | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return handler(args)
    except KeyboardInterrupt:
        print("\nInterrupted.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:
        if getattr(args, "debug", False):
            traceback.print_exc()
        usage = isinstance(error, UsageError)
        expected = isinstance(error, (ValueError, OSError, ImportError))
        message = " ".join(str(error).split()) or type(error).__name__
        if not expected:
            message = f"{type(error).__name__}: {message} (rerun with --debug for the traceback)"
        print(f"dccl-hf {args.command}: error: {message}", file=sys.stderr)
        return EXIT_USAGE if usage else EXIT_FAILURE


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `dccl-hf` and its subcommands."""
    return _build_parsers()[0]


def _build_parsers() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The argument parser of `dccl-hf` and that of each subcommand, by name."""
    parser = argparse.ArgumentParser(
        prog="dccl-hf",
        description="Compress embedding tables into compositional codes (Shu & Nakayama, ICLR 2018) and share them "
        "as Hugging Face artifacts.",
        epilog="Run `dccl-hf COMMAND --help` for the options and examples of each command.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    # Accepted before and after the command; a subcommand's default must not reset the top-level value.
    for options, count, flag in ((parser, 0, False), (common, argparse.SUPPRESS, argparse.SUPPRESS)):
        options.add_argument(
            "-v", "--verbose", action="count", default=count, help="log progress (-vv: debug)"
        )
        options.add_argument(
            "-q",
            "--quiet",
            action="store_true",
            default=flag,
            help="no progress bars, status lines or info logs (results and errors are still printed)",
        )
        options.add_argument(
            "--debug", action="store_true", default=flag, help="print the traceback of an error"
        )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    by_name: dict[str, argparse.ArgumentParser] = {}

    def add_command(
        name: str, summary: str, examples: str, handler: Callable[[argparse.Namespace], int]
    ) -> Any:
        command = commands.add_parser(
            name,
            help=summary,
            description=summary,
            epilog=examples,
            parents=[common],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        command.set_defaults(handler=handler)
        by_name[name] = command
        return command

    compress = add_command(
        "compress",
        "Learn M codes per row and M codebooks for an embedding matrix and save them as an artifact.",
        COMPRESS_EXAMPLES,
        _compress,
    )
    compress.add_argument("input", metavar="INPUT", help=INPUT_HELP)
    compress.add_argument(
        "-M",
        "--num-codebooks",
        type=int,
        default=32,
        metavar="M",
        help="codes per row, M (default: %(default)s)",
    )
    compress.add_argument(
        "-K",
        "--codebook-size",
        type=int,
        default=16,
        metavar="K",
        help="codewords per codebook, K (default: %(default)s)",
    )
    compress.add_argument(
        "-o", "--output", required=True, metavar="OUTDIR", help="directory for the artifact"
    )
    _add_input_options(compress)
    compress.add_argument(
        "--method",
        choices=("additive", "dccl"),
        default="additive",
        help="additive: beam-search codes with least-squares codebooks (best quality, the default); "
        "dccl: the paper's Gumbel-softmax autoencoder",
    )
    compress.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    compress.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    compress.add_argument(
        "--calibration",
        metavar="FILE",
        help="text like what the table will embed, one text per line: rows are weighted by how often their token "
        "(a Hugging Face model's tokenizer) or word (a table with words) occurs in it ((count + 1)^0.75, squared "
        "error, as compress(calibration=...) does). For a model, the codes are "
        "also learned under the model's sensitivity to its embeddings and the codebook is distilled so that the "
        "model's outputs on this text match the original's",
    )
    compress.add_argument(
        "--no-sensitivity",
        action="store_true",
        help="with --calibration and a model: skip the sensitivity metric (plain weighted reconstruction error)",
    )
    compress.add_argument(
        "--no-distill",
        action="store_true",
        help="with --calibration and a model: skip the codebook distillation",
    )
    compress.add_argument(
        "--distill-budget",
        type=float,
        metavar="SECONDS",
        help="stop the codebook distillation after about this many seconds (default: one pass over the "
        f"calibration text, at most {DEFAULT_MAX_STEPS} steps)",
    )
    compress.add_argument(
        "--padding-idx", type=int, metavar="ROW", help="row kept exactly zero (e.g. a padding token)"
    )
    compress.add_argument(
        "--time-budget",
        type=float,
        metavar="SECONDS",
        help="stop learning after about this many seconds, counting an interrupted run's time on --resume "
        "(default: no limit; learning stops on a plateau)",
    )
    compress.add_argument(
        "--max-iterations",
        type=int,
        metavar="N",
        help="stop learning after N refit rounds (additive, default 100) or N training steps (dccl, default: its "
        "epoch limit)",
    )
    compress.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted run whose checkpoint is in OUTDIR (without one, a new run starts)",
    )
    compress.add_argument("--overwrite", action="store_true", help="replace an artifact already in OUTDIR")

    evaluate = add_command(
        "evaluate",
        "Compare an artifact's reconstruction with the original matrix and print the error report.",
        EVALUATE_EXAMPLES,
        _evaluate,
    )
    evaluate.add_argument("artifact", metavar="OUTDIR", help="directory written by `dccl-hf compress`")
    evaluate.add_argument("--original", required=True, metavar="INPUT", help=INPUT_HELP)
    _add_input_options(evaluate)

    export = add_command(
        "export",
        "Write an artifact as the reference implementation's PREFIX.codes and PREFIX.codebook.npy, or as word2vec "
        "vectors.",
        EXPORT_EXAMPLES,
        _export,
    )
    export.add_argument("artifact", metavar="OUTDIR", help="directory written by `dccl-hf compress`")
    target = export.add_mutually_exclusive_group(required=True)
    target.add_argument("-o", "--output", metavar="PREFIX", help="path prefix of the files written")
    target.add_argument("--prefix", metavar="PREFIX", help="deprecated spelling of -o/--output")
    export.add_argument(
        "--format",
        choices=EXPORT_FORMATS,
        default="codes",
        help="codes: PREFIX.codes + PREFIX.codebook.npy; word2vec: PREFIX.txt; word2vec-binary: PREFIX.bin "
        "(default: %(default)s)",
    )
    export.add_argument(
        "--no-words", action="store_true", help="write codes only, even when vocab.txt exists"
    )
    export.add_argument("--overwrite", action="store_true", help="replace files already at PREFIX")

    import_ = add_command(
        "import",
        "Turn the reference implementation's PREFIX.codes and PREFIX.codebook.npy into an artifact.",
        IMPORT_EXAMPLES,
        _import,
    )
    import_.add_argument("prefix", metavar="PREFIX", help="path prefix of the .codes and .codebook.npy files")
    import_.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="directory for the artifact")
    import_.add_argument(
        "-K", "--codebook-size", type=int, metavar="K", help="codewords per codebook (default: inferred)"
    )
    import_.add_argument(
        "--padding-idx", type=int, metavar="ROW", help="row of the padding token, if the table has one"
    )
    import_.add_argument("--overwrite", action="store_true", help="replace an artifact already in OUTDIR")

    export_onnx = add_command(
        "export-onnx",
        "Write an artifact or a compressed transformers model as an ONNX file.",
        EXPORT_ONNX_EXAMPLES,
        _export_onnx,
    )
    export_onnx.add_argument("source", metavar="DIR", help="an artifact or a compressed model directory")
    export_onnx.add_argument("-o", "--output", required=True, metavar="FILE", help="the .onnx file to write")
    export_onnx.add_argument(
        "--exporter",
        choices=("dynamo", "torchscript"),
        default="dynamo",
        help="PyTorch's exporter (default: %(default)s)",
    )
    export_onnx.add_argument(
        "--opset", type=int, default=18, help="ONNX opset version (default: %(default)s)"
    )
    export_onnx.add_argument("--overwrite", action="store_true", help="replace an existing FILE")

    push = add_command(
        "push", "Upload an artifact directory to a Hugging Face Hub model repository.", PUSH_EXAMPLES, _push
    )
    push.add_argument("artifact", metavar="OUTDIR", help="directory written by `dccl-hf compress`")
    push.add_argument("repo_id", metavar="REPO_ID", help="the Hub repository, e.g. user/name")
    push.add_argument("--private", action="store_true", help="create the repository as private")
    push.add_argument("--token", help="Hub access token (default: HF_TOKEN or the saved login)")
    push.add_argument("--revision", help="branch to push to (default: main)")
    push.add_argument(
        "--commit-message",
        default="Upload compressed embeddings with dccl-hf",
        help="message of the commit on the Hub (default: %(default)s)",
    )
    return parser, by_name


def _add_input_options(command: argparse.ArgumentParser) -> None:
    command.add_argument("--limit", type=int, metavar="N", help="use only the first N rows")
    command.add_argument(
        "--format",
        choices=FORMATS,
        metavar="FORMAT",
        help=f"input format: {', '.join(FORMATS)} (default: from the file extension)",
    )
    command.add_argument(
        "--tensor", metavar="NAME", help="tensor to read from a safetensors or GGUF file or checkpoint"
    )
    command.add_argument("--vocab", metavar="FILE", help="words of a .npy/.safetensors matrix, one per line")
    command.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="let transformers run the Python code a model directory or repo names in its auto_map (only for "
        "models whose code you trust; without this flag such models are refused)",
    )


def _read_input(source: str, args: argparse.Namespace, limit: int | None) -> EmbeddingSource:
    return read_embeddings(
        source,
        limit=limit,
        format=args.format,
        tensor=args.tensor,
        vocab=args.vocab,
        progress=not args.quiet,
        trust_remote_code=args.trust_remote_code,
    )


def _status(args: argparse.Namespace, line: str) -> None:
    """A status line on stdout, unless --quiet."""
    if not args.quiet:
        print(line)


def _calibration(path: Path | None, source: EmbeddingSource, trust_remote_code: bool) -> dict[str, Any]:
    """`compress` options that weight rows by a calibration text file, as the Python API does: token counts for
    a model (with its tokenizer), word counts for a word table."""
    if path is None:
        return {}
    if source.model is not None:
        tokenizer = _model_tokenizer(source.model, trust_remote_code)
        rows = source.shape[0]
        # Counted over the whole vocabulary, so that with --limit the tokens past the kept rows are just ignored.
        counts = token_counts(tokenizer, path, max(rows, len(tokenizer)))
        return {"calibration": counts[:rows]}
    if source.words is None:
        raise ValueError(
            "--calibration needs to know what each row stands for: give a table with words (GloVe/word2vec, or "
            "--vocab FILE) or a Hugging Face model with its tokenizer."
        )
    return {"calibration": word_counts(source.words, path)}


def _calibration_file(calibration: str | None) -> Path | None:
    if calibration is None:
        return None
    path = Path(calibration)
    if not path.is_file():
        raise FileNotFoundError(f"--calibration {calibration}: no such file.")
    with path.open("rb") as file:
        for number, line in enumerate(file, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as error:
                raise ValueError(
                    f"--calibration {path}, line {number}: not valid UTF-8 ({error.reason}); save the text as UTF-8."
                ) from error
    return path


def _model_tokenizer(model: str, trust_remote_code: bool) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        raise ValueError(
            f"--calibration needs the tokenizer of {model}, which could not be loaded: {error}"
        ) from error


def _calibrates_model(args: argparse.Namespace, source: EmbeddingSource) -> bool:
    """Whether the whole model takes part: --calibration on a model's embeddings with sensitivity or distillation."""
    if args.calibration is None or source.model is None or (args.no_sensitivity and args.no_distill):
        return False
    if args.limit is not None:
        raise UsageError(
            "--limit keeps only the first rows, but the sensitivity metric and the distillation run the whole "
            "model; drop --limit, or pass --no-sensitivity --no-distill to only weight the rows."
        )
    return True


def _learn(
    args: argparse.Namespace,
    source: EmbeddingSource,
    calibration: Path | None,
    checkpoint_dir: Path,
    *,
    with_model: bool,
) -> CompressedEmbedding:
    """Learn the codes: from the matrix alone, or `with_model`, its sensitivity and codebook distillation."""
    options: dict[str, Any] = {
        "method": args.method,
        "device": args.device,
        "seed": args.seed,
        "time_budget": args.time_budget,
        "max_iterations": args.max_iterations,
        "checkpoint_dir": checkpoint_dir,
        "progress": not args.quiet,
    }
    if not with_model:
        return learning.compress(
            source.matrix,
            args.num_codebooks,
            args.codebook_size,
            padding_idx=args.padding_idx,
            **_calibration(calibration, source, args.trust_remote_code),
            **options,
        )
    from transformers import AutoModel

    from dccl_hf.integration.model import resize_with_codes

    model = AutoModel.from_pretrained(
        source.model, use_safetensors=True, trust_remote_code=args.trust_remote_code
    )
    model = model.to(learning.resolve_device(args.device)).eval()
    if args.padding_idx is not None:
        options["padding_idx"] = args.padding_idx
    return resize_with_codes(
        model,
        args.num_codebooks,
        args.codebook_size,
        tokenizer=_model_tokenizer(source.model, args.trust_remote_code),
        calibration=calibration,
        sensitivity=False if args.no_sensitivity else None,
        distill=not args.no_distill,
        distill_options={"time_budget": args.distill_budget} if args.distill_budget else None,
        **options,
    )


def _compress(args: argparse.Namespace) -> int:
    output = Path(args.output)
    checkpoint_dir = output / CHECKPOINT_DIR
    settings = {
        key: getattr(args, key)
        for key in (
            "input",
            "limit",
            "format",
            "tensor",
            "num_codebooks",
            "codebook_size",
            "method",
            "seed",
            "calibration",
            "no_sensitivity",
            "no_distill",
        )
    }
    try:  # everything that can be checked without the input is checked before reading it
        if args.num_codebooks < 1:
            raise ValueError(f"-M must be a positive number of codebooks, got {args.num_codebooks}.")
        learning.check_arguments(
            args.num_codebooks, args.codebook_size, args.seed, args.time_budget, args.max_iterations
        )
        learning.resolve_device(args.device)
    except (ValueError, TypeError) as error:
        raise UsageError(str(error)) from error
    _check_output_location(output)
    with _output_lock(output):
        if _check_output(output, checkpoint_dir, settings, resume=args.resume, overwrite=args.overwrite):
            _status(args, f"Resuming the run in {checkpoint_dir}")
        created = not output.exists()
        try:
            return _compress_into(args, output, checkpoint_dir, settings)
        finally:
            if created and output.is_dir() and not any(output.iterdir()):
                output.rmdir()  # a run that failed before its first checkpoint leaves nothing behind


def _compress_into(
    args: argparse.Namespace, output: Path, checkpoint_dir: Path, settings: dict[str, Any]
) -> int:
    calibration = _calibration_file(args.calibration)
    source = _read_input(args.input, args, args.limit)
    words = source.words
    if words is not None:
        try:
            check_words(words)
        except ValueError as error:
            logger.warning("Not writing vocab.txt: %s", error)
            words = None
    rows, dim = source.shape
    if args.padding_idx is not None and not -rows <= args.padding_idx < rows:
        raise UsageError(f"--padding-idx {args.padding_idx} is not a row of {source.origin} ({rows} rows).")
    with_model = _calibrates_model(args, source)
    _status(
        args,
        f"Compressing {source.origin}: {rows} rows x {dim} dims, M={args.num_codebooks}, K={args.codebook_size}"
        + (", calibrated with the model" if with_model else ""),
    )
    write_file_atomic(checkpoint_dir / RUN_FILE, json.dumps(settings, indent=2).encode())
    start = time.perf_counter()
    try:
        module = _learn(args, source, calibration, checkpoint_dir, with_model=with_model)
    except KeyboardInterrupt:
        if _discard_empty_run(checkpoint_dir):
            print("\nInterrupted before the first checkpoint; nothing to resume.", file=sys.stderr)
        else:
            print(
                f"\nInterrupted. The run's checkpoint is in {checkpoint_dir}: rerun the same command with "
                "--resume to continue.",
                file=sys.stderr,
            )
        return EXIT_INTERRUPTED
    except BaseException:
        _discard_empty_run(checkpoint_dir)
        raise
    elapsed = time.perf_counter() - start
    _save_artifact(module, output, words)
    print(
        f"Learned in {elapsed:.1f} s; saved to {output}" + (" (with vocab.txt)" if words is not None else "")
    )
    print(reconstruction_report(source.matrix, module))
    return 0


def _discard_empty_run(checkpoint_dir: Path) -> bool:
    """Remove a checkpoint directory that holds only run.json (no learning state yet); True if removed."""
    if [path.name for path in checkpoint_dir.iterdir()] != [RUN_FILE]:
        return False
    shutil.rmtree(checkpoint_dir)
    return True


def _check_output(
    output: Path, checkpoint_dir: Path, settings: dict[str, Any], *, resume: bool, overwrite: bool
) -> bool:
    """Refuse to silently restart or clobber: an unfinished run needs --resume, a finished artifact --overwrite.
    True when an unfinished run is resumed."""
    run_file = checkpoint_dir / RUN_FILE
    if checkpoint_dir.exists():
        if not resume:
            raise UsageError(
                f"{checkpoint_dir} holds an unfinished run; pass --resume to continue it, or delete that "
                "directory to start over."
            )
        if run_file.is_file():
            previous = _read_run_file(run_file)
            changed = [
                f"{key}: {previous.get(key)!r} -> {value!r}"
                for key, value in settings.items()
                if previous.get(key) != value
            ]
            if changed:
                raise UsageError(
                    f"--resume with different settings than the interrupted run in {checkpoint_dir} "
                    f"({'; '.join(changed)}); rerun with the original settings or delete that directory."
                )
        return True
    if resume:
        logger.warning("No checkpoint in %s; starting a new run.", checkpoint_dir)
    _refuse_overwrite(output, overwrite)
    return False


def _read_run_file(path: Path) -> dict[str, Any]:
    """The settings an interrupted run saved in run.json, or a clear error naming the file when it is damaged."""
    try:
        settings = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        settings = None
    if not isinstance(settings, dict):
        raise ValueError(
            f"{path} is damaged (not a JSON object of settings); delete {path.parent} to start the run over."
        )
    return settings


def _check_output_location(output: Path) -> None:
    """-o must be a directory or a path where one can be created."""
    existing = next(path for path in (output, *output.parents) if path.exists())
    if not existing.is_dir():
        raise UsageError(f"-o {output}: {existing} exists and is not a directory; choose another -o.")


def _output_lock(output: Path) -> RunLock:
    """The claim of this command on -o, a hidden file beside it: two runs writing one directory would mix their
    checkpoints and artifacts."""
    resolved = output.resolve()  # so that "-o ." and "-o ../x" name their directory
    return RunLock(resolved.parent / f".{resolved.name}.dccl-hf.lock", what=f"-o {output}")


def _refuse_overwrite(output: Path, overwrite: bool) -> None:
    _check_output_location(output)
    if (output / ARTIFACT_CONFIG).exists() and not overwrite:
        raise UsageError(
            f"{output} already holds an artifact; pass --overwrite to replace it or choose another -o."
        )
    check_replaceable(output.resolve(), ARTIFACT_REPLACEABLE)


def _save_artifact(module: CompressedEmbedding, output: Path, words: list[str] | None) -> None:
    """The artifact and its words (vocab.txt, checksummed in config.json) published in one staged save that
    replaces `output` whole, the finished run's checkpoint and an earlier artifact's vocab.txt included: new
    weights never meet old words."""
    module.words = words
    with staged_directory(output, replaceable=ARTIFACT_REPLACEABLE) as staging:
        module.save_pretrained(staging)


def _load_artifact(directory: str) -> CompressedEmbedding:
    path = Path(directory)
    if not (path / ARTIFACT_CONFIG).is_file():
        raise FileNotFoundError(
            f"{path} is not an artifact directory (no {ARTIFACT_CONFIG}); see `dccl-hf compress`."
        )
    try:
        return CompressedEmbedding.from_pretrained(path)
    except RecursionError as error:  # json's parser recurses once per nesting level
        raise ValueError(
            f"{path / ARTIFACT_CONFIG} is not an artifact config (JSON nested too deeply); get an intact copy."
        ) from error


def _evaluate(args: argparse.Namespace) -> int:
    module = _load_artifact(args.artifact)
    rows = module.num_embeddings
    if args.limit is not None and args.limit > rows:
        raise ValueError(f"--limit {args.limit} exceeds the {rows} rows of the artifact {args.artifact}.")
    limit = args.limit or rows
    source = _read_input(args.original, args, limit)
    if source.shape != (limit, module.embedding_dim):
        raise ValueError(
            f"{source.origin} gives {source.shape[0]} rows x {source.shape[1]} dims but the artifact needs "
            f"{limit} x {module.embedding_dim}; is it the matrix the artifact was compressed from?"
        )
    vocabulary = module.words
    if vocabulary is not None and source.words is not None:
        for row, (saved, original) in enumerate(zip(vocabulary, source.words, strict=False)):
            if saved != original:
                raise ValueError(
                    f"row {row}: the artifact's vocab.txt has {saved!r} but {source.origin} has {original!r}; "
                    "is it the matrix the artifact was compressed from?"
                )
    compression_ratio = module.compression_ratio  # the artifact's, not that of the rows compared
    if limit < rows:
        padding = (
            module.padding_idx if module.padding_idx is not None and module.padding_idx < limit else None
        )
        module = CompressedEmbedding.from_codes(
            module.codes[:limit], module.codebook.detach(), padding_idx=padding
        )
    report = reconstruction_report(source.matrix, module)
    print(f"{args.artifact} vs {source.origin} ({limit} rows):")
    print(dataclasses.replace(report, compression_ratio=compression_ratio))
    return 0


def _export(args: argparse.Namespace) -> int:
    prefix = args.output
    if args.prefix is not None:
        logger.warning("export --prefix is deprecated and will be removed; use -o/--output PREFIX.")
        prefix = args.prefix
    word2vec_path = None
    if args.format == "codes":
        try:
            paths = reference_paths(prefix)
        except ValueError as error:
            raise UsageError(str(error)) from error
    else:
        word2vec_path = Path(f"{prefix}.{'bin' if args.format == 'word2vec-binary' else 'txt'}")
        paths = (word2vec_path,)
    existing = [path for path in paths if path.exists()]
    if existing and not args.overwrite:
        raise UsageError(
            f"{' and '.join(map(str, existing))} already exist(s); pass --overwrite to replace, or choose another "
            "-o PREFIX."
        )
    module = _load_artifact(args.artifact)
    if word2vec_path is not None:
        return _export_word2vec(module, args, word2vec_path)
    words = None if args.no_words else module.words
    codes_path, codebook_path = save_reference(module, prefix, words=words)
    print(f"Wrote {codes_path} ({'with' if words is not None else 'without'} words) and {codebook_path}")
    return 0


def _export_word2vec(module: CompressedEmbedding, args: argparse.Namespace, path: Path) -> int:
    """The reconstructed vectors and their words as word2vec text (PREFIX.txt) or binary (PREFIX.bin)."""
    if module.words is None or args.no_words:
        raise UsageError(
            f"--format {args.format} writes a word per row, but "
            + ("--no-words was given." if args.no_words else f"{args.artifact} has no {VOCAB_NAME}.")
        )
    CompressedKeyedVectors(module).save_word2vec_format(path, binary=args.format == "word2vec-binary")
    print(f"Wrote {path}: {module.num_embeddings} words x {module.embedding_dim} dims ({args.format})")
    return 0


def _export_onnx(args: argparse.Namespace) -> int:
    from dccl_hf.onnx import export_onnx, load_compressed

    output = Path(args.output)
    if output.exists() and not args.overwrite:
        raise UsageError(f"{output} already exists; pass --overwrite to replace it, or choose another -o.")
    model = load_compressed(args.source)
    path = export_onnx(model, output, dynamo=args.exporter == "dynamo", opset_version=args.opset)
    print(f"Wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


def _import(args: argparse.Namespace) -> int:
    output = Path(args.output)
    _check_output_location(output)
    with _output_lock(output):
        _refuse_overwrite(output, args.overwrite)
        module, words = load_reference(
            args.prefix, codebook_size=args.codebook_size, padding_idx=args.padding_idx
        )
        _save_artifact(module, output, words)
    print(
        f"Wrote {output}: {module.num_embeddings} rows x {module.embedding_dim} dims, M={module.num_codebooks}, "
        f"K={module.codebook_size}" + (", with vocab.txt" if words is not None else "")
    )
    return 0


def _push(args: argparse.Namespace) -> int:
    _load_artifact(args.artifact)
    api = huggingface_hub.HfApi(token=args.token)
    try:
        repo = api.create_repo(args.repo_id, private=args.private, exist_ok=True)
        commit = api.upload_folder(
            repo_id=repo.repo_id,
            folder_path=args.artifact,
            revision=args.revision,
            commit_message=args.commit_message,
            ignore_patterns=[f"{CHECKPOINT_DIR}/*", ".*"],
        )
    except _network_errors() as error:
        raise OSError(
            f"cannot reach the Hugging Face Hub at {huggingface_hub.constants.ENDPOINT} ({error}); check the "
            "network connection (or HF_ENDPOINT) and try again."
        ) from error
    print(f"Pushed {args.artifact} to {repo}: {commit.commit_url}")
    return 0


def _network_errors() -> tuple[type[BaseException], ...]:
    """Transport errors (no network, connection refused) of the HTTP clients huggingface_hub may use; its HTTP
    status errors are `OSError`s already."""
    errors: list[type[BaseException]] = []
    for module, name in (("httpx2", "TransportError"), ("httpx", "TransportError")):
        try:
            errors.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue
    return tuple(errors)
