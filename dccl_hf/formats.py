"""Import and export of the reference implementation's files (neuralcompressor and its PyTorch port).

``<prefix>.codebook.npy`` is float32 of shape (M·K, D): row m·K + k is codeword k of codebook m.
``<prefix>.codes`` has one line per embedding row, in one of two dialects (a file uses one throughout):
``word<TAB>c1 c2 … cM`` or just ``c1 c2 … cM``. The format has no field for ``padding_idx``; pass it to
:func:`load_reference` if the table has one.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import numpy as np
import torch

from dccl_hf.embedding import CompressedEmbedding
from dccl_hf.files import write_files_atomic
from dccl_hf.packing import bits_per_code

logger = logging.getLogger(__name__)

CODES_SUFFIX = ".codes"
CODEBOOK_SUFFIX = ".codebook.npy"


class ReferenceFormatError(ValueError):
    """A reference ``.codes`` / ``.codebook.npy`` file is malformed; names the file and, when known, the line."""

    def __init__(self, path: str | Path, problem: str, line: int | None = None) -> None:
        where = f"{path}, line {line}" if line is not None else str(path)
        super().__init__(f"{where}: {problem}")
        self.path = str(path)
        self.line = line


def reference_paths(prefix: str | Path) -> tuple[Path, Path]:
    """The (codes, codebook) file paths of a reference prefix such as ``data/model``."""
    text = os.fspath(prefix)
    if not text or text.endswith(("/", os.sep)) or Path(text).is_dir():
        raise ValueError(
            f"prefix {text!r} must name the files, not a directory: e.g. {os.path.join(text, 'model')!r} for "
            f"model{CODES_SUFFIX} and model{CODEBOOK_SUFFIX} there."
        )
    return Path(f"{text}{CODES_SUFFIX}"), Path(f"{text}{CODEBOOK_SUFFIX}")


def save_reference(
    module: CompressedEmbedding, prefix: str | Path, words: Sequence[str] | None = None
) -> tuple[Path, Path]:
    """Write `module` as ``<prefix>.codes`` and ``<prefix>.codebook.npy``; returns the two paths.

    With `words` (one per row) the codes file uses the ``word<TAB>codes`` dialect, otherwise codes only.
    """
    codes_path, codebook_path = reference_paths(prefix)
    if words is not None:
        if len(words) != module.num_embeddings:
            raise ValueError(
                f"got {len(words)} words for {module.num_embeddings} embedding rows; pass one per row."
            )
        for index, word in enumerate(words):
            if not isinstance(word, str) or not word or any(char in word for char in "\t\n\r"):
                raise ValueError(
                    f"word {index} ({word!r}) cannot be written to a .codes file: words must be non-empty "
                    "strings without tabs or line breaks."
                )
    names = [str(code) for code in range(module.codebook_size)]
    lines = [" ".join([names[code] for code in row]) for row in module.codes.cpu().tolist()]
    if words is not None:
        lines = [f"{word}\t{line}" for word, line in zip(words, lines, strict=True)]
    codebook = module.codebook.detach().to("cpu", torch.float32).reshape(-1, module.embedding_dim).numpy()
    buffer = io.BytesIO()
    np.save(buffer, codebook, allow_pickle=False)
    # Both complete on disk before either replaces an earlier export.
    write_files_atomic(
        {codebook_path: buffer.getvalue(), codes_path: ("\n".join(lines) + "\n").encode("utf-8")}
    )
    logger.info("Wrote %s and %s", codes_path, codebook_path)
    return codes_path, codebook_path


def _read_codebook(path: Path) -> np.ndarray:
    """Load the (M·K, D) codebook as float32."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: codebook file not found (expected <prefix>{CODEBOOK_SUFFIX}).")
    try:
        codebook = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise ReferenceFormatError(path, f"not a readable .npy array ({error}).") from error
    if codebook.ndim != 2 or codebook.shape[0] == 0 or codebook.shape[1] == 0:
        raise ReferenceFormatError(
            path, f"expected a non-empty 2-D array (M·K, D), got shape {codebook.shape}."
        )
    if not np.issubdtype(codebook.dtype, np.floating):
        raise ReferenceFormatError(path, f"expected a floating-point array, got dtype {codebook.dtype}.")
    with np.errstate(over="ignore"):  # values beyond float32 become infinite, refused below
        codebook = codebook.astype(np.float32, copy=False)
    non_finite = np.flatnonzero(~np.isfinite(codebook).all(axis=1))
    if non_finite.size:
        raise ReferenceFormatError(
            path,
            f"row {int(non_finite[0])} holds NaN or infinity (after conversion to float32); a codebook must be "
            "finite: export it again from the trained model.",
        )
    return codebook


def _read_codes(path: Path) -> tuple[list[str] | None, list[str]]:
    """Split the codes file into words (or None) and the code text of each line, checking the dialect."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: codes file not found (expected <prefix>{CODES_SUFFIX}).")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ReferenceFormatError(path, f"not UTF-8 text ({error}).") from error
    lines = text.removeprefix("\ufeff").split("\n")  # a byte-order mark is not part of the first word
    if lines[-1] == "":
        lines.pop()
    elif lines[-1].strip():
        # A file cut inside its last line would silently read a shorter code ("1" of "13") as a valid one.
        raise ReferenceFormatError(
            path,
            "the file ends inside this line (no final newline), so it is probably truncated; get a complete "
            "copy, or add the final newline if the line is complete.",
            len(lines),
        )
    lines = [line.removesuffix("\r") for line in lines]
    if not lines:
        raise ReferenceFormatError(path, "the file is empty; expected one line of codes per embedding row.")
    with_words = "\t" in lines[0]
    words: list[str] = []
    code_texts: list[str] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            raise ReferenceFormatError(path, "empty line.", number)
        parts = line.split("\t")
        if with_words != (len(parts) > 1):
            raise ReferenceFormatError(
                path,
                "mixed dialects: line 1 is "
                + ("'word<TAB>codes'" if with_words else "'codes' without a word")
                + " but this line is not.",
                number,
            )
        if len(parts) > 2:
            raise ReferenceFormatError(path, "more than one tab; expected 'word<TAB>c1 c2 … cM'.", number)
        if with_words:
            if not parts[0]:
                raise ReferenceFormatError(
                    path, "empty word before the tab; every row needs its word.", number
                )
            words.append(parts[0])
        code_texts.append(parts[-1])
    return (words if with_words else None), code_texts


def _out_of_range(value: object, codebook_size: int) -> str:
    return (
        f"code {value} is outside [0, {codebook_size}) (K = {codebook_size}); is the codebook the right one?"
    )


def _parse_codes(path: Path, code_texts: list[str], num_codebooks: int, codebook_size: int) -> np.ndarray:
    """Integer codes (V, M), reporting the first bad line: wrong count, non-integer, or outside [0, K).

    ``np.loadtxt`` parses well-formed files fast; on any problem a line-by-line scan finds and reports it.
    """
    try:
        codes = np.loadtxt(io.StringIO("\n".join(code_texts)), dtype=np.int64, ndmin=2, comments=None)
    except ValueError:
        codes = None
    if codes is None or codes.shape != (len(code_texts), num_codebooks):
        _raise_first_bad_line(path, code_texts, num_codebooks, codebook_size)
    bad = np.flatnonzero(((codes < 0) | (codes >= codebook_size)).any(axis=1))
    if bad.size:
        row = codes[bad[0]]
        value = row[(row < 0) | (row >= codebook_size)][0]
        raise ReferenceFormatError(path, _out_of_range(value, codebook_size), int(bad[0]) + 1)
    return codes


def _raise_first_bad_line(
    path: Path, code_texts: list[str], num_codebooks: int, codebook_size: int
) -> NoReturn:
    for number, text in enumerate(code_texts, start=1):
        tokens = text.split()
        if len(tokens) != num_codebooks:
            raise ReferenceFormatError(
                path, f"expected {num_codebooks} codes (as on line 1), found {len(tokens)}.", number
            )
        for token in tokens:
            if not (token.isascii() and token.removeprefix("-").removeprefix("+").isdigit()):
                raise ReferenceFormatError(path, f"code {token!r} is not an integer.", number)
            if not 0 <= int(token) < codebook_size:
                raise ReferenceFormatError(path, _out_of_range(token, codebook_size), number)
    raise ReferenceFormatError(path, "could not parse the codes.")


def load_reference(
    prefix: str | Path, codebook_size: int | None = None, padding_idx: int | None = None
) -> tuple[CompressedEmbedding, list[str] | None]:
    """Read ``<prefix>.codes`` and ``<prefix>.codebook.npy`` into a `CompressedEmbedding`.

    Returns the module and the words of the codes file (None for the codes-only dialect). M is the number of
    codes on a line; K is `codebook_size`, or the codebook rows / M when not given (must be a power of two).
    """
    codes_path, codebook_path = reference_paths(prefix)
    codebook = _read_codebook(codebook_path)
    words, code_texts = _read_codes(codes_path)
    num_codebooks = len(code_texts[0].split())
    if num_codebooks == 0:
        raise ReferenceFormatError(codes_path, "no codes on the line.", 1)
    rows = codebook.shape[0]
    if codebook_size is None:
        if rows % num_codebooks:
            raise ReferenceFormatError(
                codebook_path,
                f"{rows} codebook rows are not divisible by M = {num_codebooks} (the codes per line of "
                f"{codes_path.name}); the files do not belong together.",
            )
        codebook_size = rows // num_codebooks
    elif rows != num_codebooks * codebook_size:
        raise ReferenceFormatError(
            codebook_path,
            f"has {rows} rows but M·K = {num_codebooks}·{codebook_size} = {num_codebooks * codebook_size}.",
        )
    try:
        bits_per_code(codebook_size)
    except ValueError as error:
        raise ReferenceFormatError(
            codebook_path, f"K = {codebook_size} ({rows} rows, M = {num_codebooks}) is not usable: {error}"
        ) from error
    codes = _parse_codes(codes_path, code_texts, num_codebooks, codebook_size)
    codebook_tensor = torch.from_numpy(codebook).reshape(num_codebooks, codebook_size, -1)
    module = CompressedEmbedding.from_codes(torch.from_numpy(codes), codebook_tensor, padding_idx=padding_idx)
    logger.info("Loaded %s from %s", module.extra_repr(), prefix)
    return module, words
