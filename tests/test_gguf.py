"""GGUF token tables: F32, F16 and quantized rows equal gguf's dequantized values, with their tokens; clear
errors for files without a table, types gguf cannot dequantize and truncated files; `dccl-hf compress x.gguf`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFWriter
from gguf.quants import dequantize, quantize

from dccl_hf import CompressedEmbedding
from dccl_hf.cli import main
from dccl_hf.gguf_reader import TOKEN_TABLE
from dccl_hf.readers import read_embeddings

ROWS, DIM = 40, 64  # DIM: a multiple of the quantized types' 32-value blocks
TOKENS = ["<s>", "</s>", "▁the", "Ġwörld", *[f"tok{row}" for row in range(ROWS - 4)]]


def table() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(ROWS, DIM)).astype(np.float32)


def write_gguf(
    path: Path,
    data: np.ndarray,
    raw_dtype: GGMLQuantizationType | None = None,
    *,
    name: str = TOKEN_TABLE,
    tokens: list[str] | None = TOKENS,
) -> Path:
    writer = GGUFWriter(path, "llama")
    if tokens is not None:
        writer.add_token_list(tokens)
    writer.add_tensor("output_norm.weight", np.ones(DIM, np.float32))
    writer.add_tensor(name, data, raw_dtype=raw_dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize(
    "tensor_type",
    [
        GGMLQuantizationType.F32,
        GGMLQuantizationType.F16,
        GGMLQuantizationType.Q8_0,
        GGMLQuantizationType.Q4_1,
        GGMLQuantizationType.BF16,
    ],
)
def test_rows_equal_the_dequantized_table_and_words_are_the_tokens(
    tmp_path: Path, tensor_type: GGMLQuantizationType
) -> None:
    stored = quantize(table(), tensor_type)
    path = write_gguf(tmp_path / "model.gguf", stored, raw_dtype=tensor_type)
    source = read_embeddings(path, progress=False)
    expected = dequantize(stored, tensor_type)
    assert source.matrix.dtype == np.float32
    np.testing.assert_array_equal(source.matrix, expected)
    assert source.words == TOKENS
    if tensor_type == GGMLQuantizationType.F32:
        np.testing.assert_array_equal(source.matrix, table())
    limited = read_embeddings(path, limit=7, progress=False)
    np.testing.assert_array_equal(limited.matrix, expected[:7])
    assert limited.words == TOKENS[:7]


def test_chunked_dequantization_keeps_row_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("dccl_hf.gguf_reader.CHUNK_ROWS", 3)
    stored = quantize(table(), GGMLQuantizationType.Q8_0)
    path = write_gguf(tmp_path / "model.gguf", stored, raw_dtype=GGMLQuantizationType.Q8_0)
    source = read_embeddings(path, progress=False)
    np.testing.assert_array_equal(source.matrix, dequantize(stored, GGMLQuantizationType.Q8_0))


def test_a_named_tensor_and_a_file_without_tokens(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "model.gguf", table(), name="output.weight", tokens=None)
    source = read_embeddings(path, tensor="output.weight", progress=False)
    np.testing.assert_array_equal(source.matrix, table())
    assert source.words is None


def test_tokens_not_one_per_row_are_dropped(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "model.gguf", table(), tokens=TOKENS[:-1])
    assert read_embeddings(path, progress=False).words is None


def test_a_file_without_a_token_table_is_an_error(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "model.gguf", table(), name="blk.0.attn_q.weight")
    with pytest.raises(
        ValueError, match=r"has no tensor 'token_embd\.weight' \(the token embedding table\); its 2 "
    ):
        read_embeddings(path, progress=False)


def test_a_type_gguf_cannot_dequantize_is_an_error(tmp_path: Path) -> None:
    block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType.Q8_1]
    raw = np.zeros((ROWS, DIM // block * type_size), np.uint8)
    path = write_gguf(tmp_path / "model.gguf", raw, raw_dtype=GGMLQuantizationType.Q8_1)
    with pytest.raises(ValueError, match=r"has type Q8_1, which gguf .* cannot dequantize"):
        read_embeddings(path, progress=False)


@pytest.mark.parametrize("keep", [0, 10, 200, -100])
def test_a_truncated_file_is_an_error(tmp_path: Path, keep: int) -> None:
    data = write_gguf(tmp_path / "model.gguf", table()).read_bytes()
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(data[:keep])
    with pytest.raises(
        ValueError, match=r"truncated\.gguf: not a readable GGUF file .* truncated or corrupted"
    ):
        read_embeddings(truncated, progress=False)


def test_cli_compresses_a_gguf_table_with_its_tokens(tmp_path: Path) -> None:
    stored = quantize(table(), GGMLQuantizationType.Q8_0)
    path = write_gguf(tmp_path / "model.gguf", stored, raw_dtype=GGMLQuantizationType.Q8_0)
    output = tmp_path / "out"
    arguments = ["compress", str(path), "-M", "4", "-K", "4", "-o", str(output), "--max-iterations", "1"]
    assert main(arguments) == 0
    module = CompressedEmbedding.from_pretrained(output)
    assert (module.num_embeddings, module.embedding_dim) == (ROWS, DIM)
    assert module.words == tuple(TOKENS)
