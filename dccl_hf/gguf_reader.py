"""Read the token embedding table and the vocabulary of a GGUF file (llama.cpp's model format).

The table is ``token_embd.weight`` in any tensor type the `gguf` package can dequantize (F32, F16, BF16, Q4_0 ...
Q8_0, the K-quants, IQ types), dequantized in chunks of rows into float32; the words are the tokenizer's
``tokenizer.ggml.tokens``, row i being token i. The file is memory-mapped: only the rows asked for are read.
"""

from __future__ import annotations

import importlib.metadata
import logging
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

TOKEN_TABLE = "token_embd.weight"
TOKENS_FIELD = "tokenizer.ggml.tokens"
#: Rows dequantized per step: bounds the temporary float32 copies of a quantized table.
CHUNK_ROWS = 8192


def read_gguf_table(
    path: Path, *, limit: int | None = None, tensor: str | None = None, progress: bool = True
) -> tuple[np.ndarray, list[str] | None]:
    """The first `limit` rows of the GGUF file's token table (or of the 2-D tensor named `tensor`) as float32
    (rows, dim), and their tokens (None when the file has no token list of one token per row)."""
    gguf = _import_gguf()
    if path.suffix.lower() == ".gz":
        raise ValueError(f"{path}: a GGUF file is read memory-mapped; decompress it first (gunzip).")
    try:
        reader = gguf.GGUFReader(path)
    except (ValueError, IndexError, KeyError, OverflowError) as error:
        raise ValueError(
            f"{path}: not a readable GGUF file ({error}); is it truncated or corrupted?"
        ) from error
    name = tensor or TOKEN_TABLE
    found = {entry.name: entry for entry in reader.tensors}
    if name not in found:
        listed = ", ".join(sorted(found)[:8]) + (", ..." if len(found) > 8 else "")
        raise ValueError(
            f"{path} has no tensor {name!r}"
            + ("" if tensor else " (the token embedding table)")
            + f"; its {len(found)} tensors are: {listed or 'none'}. Pass the table's name with --tensor."
        )
    entry = found[name]
    if len(entry.shape) != 2:
        raise ValueError(f"{path}: tensor {name!r} has {len(entry.shape)} dimensions; a table needs 2.")
    matrix = _dequantize_rows(gguf, entry, path, limit, progress)
    return matrix, _tokens(reader, path, int(entry.shape[1]), matrix.shape[0])


def _import_gguf() -> Any:
    try:
        import gguf
    except ImportError as error:
        raise ImportError(
            f'reading GGUF files needs the gguf package ({error}); install it with: pip install "dccl-hf[gguf]"'
        ) from error
    return gguf


def _dequantize_rows(gguf: Any, entry: Any, path: Path, limit: int | None, progress: bool) -> np.ndarray:
    """Dequantize the first `limit` rows of a 2-D GGUF tensor into float32, CHUNK_ROWS at a time."""
    dim, total = (int(size) for size in entry.shape)  # GGML lists the fastest-varying dimension first
    rows = min(total, limit or total)
    matrix = np.empty((rows, dim), dtype=np.float32)
    type_name = entry.tensor_type.name
    with tqdm(
        total=rows, desc=f"Dequantizing {path.name} ({type_name})", unit=" rows", disable=not progress
    ) as bar:
        for start in range(0, rows, CHUNK_ROWS):
            stop = min(start + CHUNK_ROWS, rows)
            try:
                block = gguf.quants.dequantize(entry.data[start:stop], entry.tensor_type)
            except NotImplementedError as error:
                version = importlib.metadata.version("gguf")
                raise ValueError(
                    f"{path}: tensor {entry.name!r} has type {type_name}, which gguf {version} cannot dequantize "
                    f"({error}); convert the file to F16, Q8_0 or another supported type (llama.cpp's "
                    "llama-quantize) or upgrade gguf."
                ) from error
            matrix[start:stop] = block.reshape(stop - start, dim)
            bar.update(stop - start)
    return matrix


def _tokens(reader: Any, path: Path, table_rows: int, rows: int) -> list[str] | None:
    """The first `rows` tokens of the tokenizer, or None (with a warning) when they do not match the table."""
    field = reader.fields.get(TOKENS_FIELD)
    if field is None:
        logger.warning("%s has no %s; the table is read without words.", path, TOKENS_FIELD)
        return None
    raw = [bytes(field.parts[index]) for index in field.data]
    if len(raw) != table_rows:
        logger.warning(
            "%s: %d tokens for %d table rows; the table is read without words.", path, len(raw), table_rows
        )
        return None
    tokens = [token.decode("utf-8", errors="replace") for token in raw[:rows]]
    invalid = sum("\ufffd" in token and "\ufffd".encode() not in raw[row] for row, token in enumerate(tokens))
    if invalid:
        logger.warning(
            "%s: %d tokens are not valid UTF-8; their invalid bytes read as U+FFFD.", path, invalid
        )
    return tokens
