"""The reference implementation's ``.codes`` / ``.codebook.npy`` files: layout, both dialects, strict reading."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dccl_hf import CompressedEmbedding
from dccl_hf.formats import ReferenceFormatError, load_reference, save_reference

# Two lines of the reference implementation's own output (M=32, K=16), from its README.
REFERENCE_LINES = [
    "man\t8 11 15 14 11 2 14 14 13 0 3 10 3 4 13 0 13 7 8 13 0 9 5 15 12 6 1 11 6 8 9 2",
    "king\t2 13 3 1 0 11 14 6 8 0 4 2 14 11 0 8 8 15 3 3 15 9 9 12 12 9 13 4 1 9 3 2",
]


def make_module(
    num_embeddings: int = 9, num_codebooks: int = 4, codebook_size: int = 8, seed: int = 0
) -> CompressedEmbedding:
    generator = torch.Generator().manual_seed(seed)
    codes = torch.randint(codebook_size, (num_embeddings, num_codebooks), generator=generator)
    codebook = torch.randn(num_codebooks, codebook_size, 3, generator=generator)
    return CompressedEmbedding.from_codes(codes, codebook)


def assert_same(loaded: CompressedEmbedding, original: CompressedEmbedding) -> None:
    assert (loaded.num_codebooks, loaded.codebook_size) == (original.num_codebooks, original.codebook_size)
    assert torch.equal(loaded.codes, original.codes)
    assert torch.equal(loaded.codebook, original.codebook)
    ids = torch.arange(original.num_embeddings)
    with torch.no_grad():
        assert torch.equal(loaded(ids), original(ids))


def write_pair(prefix: Path, lines: list[str], codebook: np.ndarray) -> None:
    Path(f"{prefix}.codes").write_text("".join(f"{line}\n" for line in lines))
    np.save(f"{prefix}.codebook.npy", codebook)


def test_round_trip_with_words(tmp_path: Path) -> None:
    module = make_module()
    words = [f"w{index}" for index in range(9)]
    words[3] = "new york"
    codes_path, codebook_path = save_reference(module, tmp_path / "model", words)
    assert (codes_path.name, codebook_path.name) == ("model.codes", "model.codebook.npy")
    lines = codes_path.read_text().splitlines()
    assert lines[3] == "new york\t" + " ".join(str(code) for code in module.codes[3].tolist())
    loaded, loaded_words = load_reference(tmp_path / "model")
    assert loaded_words == words
    assert_same(loaded, module)


def test_round_trip_without_words(tmp_path: Path) -> None:
    module = make_module(num_embeddings=12, num_codebooks=3, codebook_size=256)
    codes_path, _ = save_reference(module, tmp_path / "model")
    lines = codes_path.read_text().splitlines()
    assert len(lines) == 12
    assert lines[0] == " ".join(str(code) for code in module.codes[0].tolist())
    assert "\t" not in codes_path.read_text()
    loaded, words = load_reference(tmp_path / "model", codebook_size=256)
    assert words is None
    assert_same(loaded, module)
    padded, _ = load_reference(tmp_path / "model", padding_idx=0)
    assert padded.padding_idx == 0
    with torch.no_grad():
        assert not padded(torch.tensor([0])).any()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model.codebook.npy", "model.codes"]


def test_codebook_file_layout_is_m_times_k_rows_of_float32(tmp_path: Path) -> None:
    module = make_module(num_codebooks=4, codebook_size=8)
    module.codebook.data = module.codebook.data.to(torch.bfloat16)
    _, codebook_path = save_reference(module, tmp_path / "model")
    stored = np.load(codebook_path)
    assert stored.dtype == np.float32
    assert stored.shape == (4 * 8, 3)
    expected = module.codebook.detach().float()
    assert np.array_equal(stored[2 * 8 + 5], expected[2, 5].numpy())
    assert np.array_equal(stored[3 * 8 + 0], expected[3, 0].numpy())


def test_reads_the_reference_implementations_output(tmp_path: Path) -> None:
    codebook = np.random.default_rng(0).standard_normal((32 * 16, 5)).astype(np.float32)
    write_pair(tmp_path / "glove", REFERENCE_LINES, codebook)
    module, words = load_reference(tmp_path / "glove")
    assert words == ["man", "king"]
    assert (module.num_codebooks, module.codebook_size, module.embedding_dim) == (32, 16, 5)
    assert module.codes[1, :4].tolist() == [2, 13, 3, 1]
    expected = sum(codebook[m * 16 + code] for m, code in enumerate([8, 11, 15, 14, 11, 2, 14, 14, 13, 0, 3, 10, 3, 4, 13, 0, 13, 7, 8, 13, 0, 9, 5, 15, 12, 6, 1, 11, 6, 8, 9, 2]))  # fmt: skip
    with torch.no_grad():
        assert np.allclose(module(torch.tensor([0]))[0].numpy(), expected, atol=1e-5)


def test_a_byte_order_mark_is_not_part_of_the_first_word(tmp_path: Path) -> None:
    Path(f"{tmp_path / 'm'}.codes").write_bytes("\ufeffthe\t0 1\nend\t1 0\n".encode())
    np.save(f"{tmp_path / 'm'}.codebook.npy", np.zeros((4, 2), np.float32))
    _, words = load_reference(tmp_path / "m")
    assert words == ["the", "end"]


def test_a_codes_file_cut_inside_its_last_line_is_an_error(tmp_path: Path) -> None:
    Path(f"{tmp_path / 'm'}.codes").write_bytes(b"the\t0 1\nend\t1 1")  # "1 1" could be "1 13" cut short
    np.save(f"{tmp_path / 'm'}.codebook.npy", np.zeros((2 * 16, 2), np.float32))
    with pytest.raises(ReferenceFormatError, match=r"m\.codes, line 2: the file ends inside this line"):
        load_reference(tmp_path / "m")


def test_crlf_line_endings_are_accepted(tmp_path: Path) -> None:
    Path(f"{tmp_path / 'm'}.codes").write_bytes(b"0 1\r\n1 0\r\n")
    np.save(f"{tmp_path / 'm'}.codebook.npy", np.zeros((4, 2), np.float32))
    module, _ = load_reference(tmp_path / "m")
    assert module.codes.tolist() == [[0, 1], [1, 0]]


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (["0 1 2", "3 1 2", "0 1", "1 1 1"], r"m\.codes, line 3: expected 3 codes \(as on line 1\), found 2"),
        (["0 1 2", "0 9 1"], r"m\.codes, line 2: code 9 is outside \[0, 4\)"),
        (["0 1 2", "0 1 -1"], r"m\.codes, line 2: code -1 is outside \[0, 4\)"),
        (["0 1 2", "1 1 1", "2 2 2", "0 x 1"], r"m\.codes, line 4: code 'x' is not an integer"),
        (["0 1 2", "1 1.0 1"], r"m\.codes, line 2: code '1\.0' is not an integer"),
        (["a\t0 1 2", "b\t1 1 1", "1 1 1"], r"m\.codes, line 3: mixed dialects"),
        (["0 1 2", "b\t1 1 1"], r"m\.codes, line 2: mixed dialects"),
        (["0 1 2", "", "1 1 1"], r"m\.codes, line 2: empty line"),
        (["a\t0 1 2", "b\t1\t1 1"], r"m\.codes, line 2: more than one tab"),
        (["a\t0 1 2", "\t1 1 1"], r"m\.codes, line 2: empty word"),
    ],
)
def test_malformed_codes_lines_are_reported_with_line_numbers(
    tmp_path: Path, lines: list[str], message: str
) -> None:
    write_pair(tmp_path / "m", lines, np.zeros((3 * 4, 2), np.float32))
    with pytest.raises(ReferenceFormatError, match=message):
        load_reference(tmp_path / "m")


def test_empty_codes_file_is_an_error(tmp_path: Path) -> None:
    write_pair(tmp_path / "m", [], np.zeros((8, 2), np.float32))
    with pytest.raises(ReferenceFormatError, match=r"m\.codes: the file is empty"):
        load_reference(tmp_path / "m")


@pytest.mark.parametrize(
    ("rows", "codebook_size", "message"),
    [
        (13, None, r"m\.codebook\.npy: 13 codebook rows are not divisible by M = 3"),
        (36, None, r"m\.codebook\.npy: K = 12 .*power of two"),
        (12, 8, r"m\.codebook\.npy: has 12 rows but M·K = 3·8 = 24"),
    ],
)
def test_codebook_that_does_not_fit_the_codes_is_an_error(
    tmp_path: Path, rows: int, codebook_size: int | None, message: str
) -> None:
    write_pair(tmp_path / "m", ["0 1 2", "1 1 1"], np.zeros((rows, 2), np.float32))
    with pytest.raises(ReferenceFormatError, match=message):
        load_reference(tmp_path / "m", codebook_size=codebook_size)


def test_unreadable_or_missing_codebook_is_an_error(tmp_path: Path) -> None:
    Path(f"{tmp_path / 'm'}.codes").write_text("0 1\n")
    with pytest.raises(FileNotFoundError, match=r"m\.codebook\.npy: codebook file not found"):
        load_reference(tmp_path / "m")
    Path(f"{tmp_path / 'm'}.codebook.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(ReferenceFormatError, match=r"m\.codebook\.npy: not a readable \.npy array"):
        load_reference(tmp_path / "m")
    np.save(f"{tmp_path / 'm'}.codebook.npy", np.zeros((4, 2), np.int32))
    with pytest.raises(ReferenceFormatError, match="expected a floating-point array"):
        load_reference(tmp_path / "m")


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf, 1e300])
def test_non_finite_codebook_is_an_error(tmp_path: Path, value: float) -> None:
    codebook = np.zeros((4, 2), np.float64)
    codebook[3, 1] = value  # 1e300 overflows to infinity in float32
    write_pair(tmp_path / "m", ["0 1", "1 1"], codebook)
    with pytest.raises(ReferenceFormatError, match=r"m\.codebook\.npy: row 3 holds NaN or infinity"):
        load_reference(tmp_path / "m", codebook_size=2)


@pytest.mark.parametrize(
    ("words", "message"),
    [
        (["a", "b"], "got 2 words for 9 embedding rows"),
        ([f"w{i}" for i in range(8)] + ["tab\there"], "word 8"),
    ],
)
def test_words_that_cannot_be_written_are_rejected(tmp_path: Path, words: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        save_reference(make_module(), tmp_path / "model", words)
    assert list(tmp_path.iterdir()) == []
