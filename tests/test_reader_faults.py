"""Property tests of the readers under damaged files: a truncated or bit-flipped GloVe/word2vec text, word2vec
binary, .npy or .codes file is either refused with an error naming the file or read as exactly what its bytes
say, never silently as a different matrix."""

from __future__ import annotations

import io
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dccl_hf.formats import load_reference
from dccl_hf.readers import read_embeddings

WORDS = ["the", "naïve", "東京", "a-b", "x1"]
MATRIX = (np.random.default_rng(0).integers(-40, 40, size=(len(WORDS), 3)) / 8).astype(np.float32)
FAULTS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def glove_bytes(header: bool) -> bytes:
    lines = [
        word + " " + " ".join(repr(float(value)) for value in row) + "\n"
        for word, row in zip(WORDS, MATRIX, strict=True)
    ]
    return ((f"{len(WORDS)} {MATRIX.shape[1]}\n" if header else "") + "".join(lines)).encode()


def word2vec_binary_bytes() -> bytes:
    body = b"".join(
        word.encode() + b" " + row.astype("<f4").tobytes() + b"\n"
        for word, row in zip(WORDS, MATRIX, strict=True)
    )
    return f"{len(WORDS)} {MATRIX.shape[1]}\n".encode() + body


def npy_bytes() -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, MATRIX)
    return buffer.getvalue()


def codes_bytes() -> bytes:
    return b"".join(f"{word}\t{index % 4} {(index * 3) % 4}\n".encode() for index, word in enumerate(WORDS))


def flip(data: bytes, bit: int) -> bytes:
    changed = bytearray(data)
    changed[bit // 8] ^= 1 << (bit % 8)
    return bytes(changed)


def read_damaged(data: bytes, name: str, read: Callable[[Path], object]) -> object | None:
    """What `read` returns for a file holding `data`, or None when it refuses it with an error naming the file."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / name
        path.write_bytes(data)
        try:
            return read(path)
        except ValueError as error:
            message = str(error)
    assert str(path) in message, message
    return None


def parse_text(data: bytes) -> tuple[list[str], np.ndarray] | None:
    """What a well-formed text file says, or None when it is not one (the oracle for the text reader): a first
    line of two integers is a word2vec header, anything else is a GloVe row."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if not text.endswith("\n"):
        return None
    lines = text.split("\n")[:-1]
    first = lines[0].split() if lines else []
    if len(first) == 2 and all(field.isascii() and field.isdigit() for field in first):
        lines.pop(0)
        if int(first[0]) != len(lines) or int(first[1]) != MATRIX.shape[1]:
            return None
    words, rows = [], []
    for line in lines:
        fields, dim = line.split(), MATRIX.shape[1]
        if len(fields) < dim + 1 or (len(fields) > dim + 1 and is_number(fields[1])):
            return None
        words.append(" ".join(fields[:-dim]))  # a word with spaces in it keeps them (GloVe 840B has some)
        try:
            rows.append([float(field) for field in fields[-dim:]])
        except ValueError:
            return None
    values = np.array(rows, dtype=np.float32)
    return (words, values) if words and np.isfinite(values).all() else None


def is_number(field: str) -> bool:
    try:
        float(field)
    except ValueError:
        return False
    return True


def assert_text_read(result: object, expected: tuple[list[str], np.ndarray] | None) -> None:
    if result is None:
        return  # refused, naming the file
    assert expected is not None, "a damaged file was read"
    assert result.words == expected[0]
    np.testing.assert_array_equal(np.asarray(result.matrix), expected[1])


@pytest.mark.parametrize("header", [False, True])
@FAULTS
@given(data=st.data())
def test_truncated_text_is_refused_or_read_as_the_rows_it_holds(header: bool, data: st.DataObject) -> None:
    complete = glove_bytes(header)
    cut = data.draw(st.integers(1, len(complete) - 1))
    result = read_damaged(complete[:cut], "vectors.txt", read_embeddings)
    if result is not None:  # only a GloVe file cut right after a newline still holds whole rows
        assert not header
        assert complete[:cut].endswith(b"\n")
    assert_text_read(result, parse_text(complete[:cut]))


@pytest.mark.parametrize("header", [False, True])
@FAULTS
@given(data=st.data())
def test_bit_flipped_text_is_refused_or_read_as_written(header: bool, data: st.DataObject) -> None:
    damaged = flip(glove_bytes(header), data.draw(st.integers(0, 8 * len(glove_bytes(header)) - 1)))
    assert_text_read(read_damaged(damaged, "vectors.txt", read_embeddings), parse_text(damaged))


def parse_word2vec_binary(data: bytes) -> tuple[list[str], np.ndarray] | None:
    header, _, body = data.partition(b"\n")
    fields = header.split()
    if len(fields) != 2 or not all(field.isdigit() for field in fields):
        return None
    count, dim = int(fields[0]), int(fields[1])
    words, rows, position = [], [], 0
    for _ in range(count):
        while position < len(body) and body[position : position + 1].isspace():
            position += 1
        space = body.find(b" ", position)
        if space < 0 or space + 1 + 4 * dim > len(body):
            return None
        try:
            words.append(body[position:space].decode("utf-8"))
        except UnicodeDecodeError:
            return None
        rows.append(struct.unpack(f"<{dim}f", body[space + 1 : space + 1 + 4 * dim]))
        position = space + 1 + 4 * dim
    values = np.array(rows, dtype=np.float32).reshape(count, dim)
    if body[position:].strip() or not np.isfinite(values).all() or count == 0 or dim == 0:
        return None
    return words, values


@FAULTS
@given(data=st.data())
def test_damaged_word2vec_binary_is_refused_or_read_as_written(data: st.DataObject) -> None:
    complete = word2vec_binary_bytes()
    if data.draw(st.booleans()):
        damaged = complete[: data.draw(st.integers(1, len(complete) - 1))]
    else:
        damaged = flip(complete, data.draw(st.integers(0, 8 * len(complete) - 1)))
    result = read_damaged(damaged, "vectors.bin", read_embeddings)
    assert_text_read(result, parse_word2vec_binary(damaged))


@FAULTS
@given(data=st.data())
def test_damaged_npy_is_refused_or_read_as_written(data: st.DataObject) -> None:
    complete = npy_bytes()
    if data.draw(st.booleans()):
        damaged = complete[: data.draw(st.integers(1, len(complete) - 1))]
    else:
        damaged = flip(complete, data.draw(st.integers(0, 8 * len(complete) - 1)))
    result = read_damaged(damaged, "vectors.npy", read_embeddings)
    if result is None:
        return
    expected = np.load(io.BytesIO(damaged), allow_pickle=False)
    assert expected.ndim == 2
    np.testing.assert_array_equal(np.asarray(result.matrix), expected.astype(np.float32))


def parse_codes(data: bytes) -> tuple[list[str], list[list[int]]] | None:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if not text.endswith("\n"):
        return None
    words, codes = [], []
    for line in text.split("\n")[:-1]:
        word, tab, numbers = line.partition("\t")
        if not tab or not word or "\t" in numbers:
            return None
        try:
            row = [int(number) for number in numbers.split()]
        except ValueError:
            return None
        words.append(word)
        codes.append(row)
    if not codes or any(len(row) != 2 or not all(0 <= code < 4 for code in row) for row in codes):
        return None
    return words, codes


@FAULTS
@given(data=st.data())
def test_damaged_codes_are_refused_or_read_as_written(data: st.DataObject) -> None:
    complete = codes_bytes()
    if data.draw(st.booleans()):
        damaged = complete[: data.draw(st.integers(1, len(complete) - 1))]
    else:
        damaged = flip(complete, data.draw(st.integers(0, 8 * len(complete) - 1)))
    codebook = np.arange(2 * 4 * 3, dtype=np.float32).reshape(8, 3)

    def read(path: Path) -> tuple[list[str] | None, list[list[int]]]:
        np.save(path.with_name("m.codebook.npy"), codebook)
        module, words = load_reference(path.with_name("m"))
        return words, module.codes.tolist()

    result = read_damaged(damaged, "m.codes", read)
    if result is not None:
        assert result == parse_codes(damaged)
