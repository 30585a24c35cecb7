"""`CompressedKeyedVectors`: queries on the codes equal gensim's brute force over the reconstructed table;
lookups, exports (gensim, word2vec text and binary, the CLI) and loading from artifacts and the Hub."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from gensim.models import KeyedVectors
from hub_server import HubServer

from dccl_hf import CompressedEmbedding, CompressedKeyedVectors
from dccl_hf.cli import main
from dccl_hf.readers import read_embeddings

ROWS, DIM = 120, 6
WORDS = [f"w{row}" for row in range(ROWS)]


def make_vectors(
    num_codebooks: int = 5, codebook_size: int = 16, padding_idx: int | None = None, seed: int = 0
) -> CompressedKeyedVectors:
    # Distinct code rows: rows with equal codes tie exactly, and gensim and the codes may order ties differently.
    numbers = torch.tensor(random.Random(seed).sample(range(codebook_size**num_codebooks), ROWS))
    codes = numbers.unsqueeze(1) // codebook_size ** torch.arange(num_codebooks) % codebook_size
    generator = torch.Generator().manual_seed(seed)
    codebook = torch.randn(num_codebooks, codebook_size, DIM, generator=generator)
    embedding = CompressedEmbedding.from_codes(codes, codebook, padding_idx=padding_idx, words=WORDS)
    return CompressedKeyedVectors(embedding)


def dense(vectors: CompressedKeyedVectors) -> KeyedVectors:
    """gensim on the reconstructed table: the brute-force reference."""
    reference = KeyedVectors(DIM)
    reference.add_vectors(WORDS, vectors.embedding.reconstruct().detach().numpy())
    return reference


def assert_same_results(ours: list[tuple[str, float]], theirs: list[tuple[str, float]]) -> None:
    assert [word for word, _ in ours] == [word for word, _ in theirs]
    np.testing.assert_allclose(
        [score for _, score in ours], [score for _, score in theirs], rtol=1e-5, atol=1e-5
    )


# K = 2, 4, 16, 256 score from packed bytes (1 to 4 bytes per row: pairs and a last single byte); K = 8 and
# 1024 from unpacked codes.
@pytest.mark.parametrize(
    ("num_codebooks", "codebook_size"),
    [(5, 16), (2, 16), (8, 16), (9, 2), (7, 4), (3, 256), (5, 8), (3, 1024)],
)
def test_queries_equal_gensim_on_the_reconstructed_table(num_codebooks: int, codebook_size: int) -> None:
    vectors = make_vectors(num_codebooks, codebook_size)
    reference = dense(vectors)
    assert_same_results(vectors.most_similar("w3", topn=7), reference.most_similar("w3", topn=7))
    analogy = {"positive": ["w5", "w7"], "negative": ["w9"], "topn": 5}
    assert_same_results(vectors.most_similar(**analogy), reference.most_similar(**analogy))
    assert_same_results(vectors.most_similar_cosmul(**analogy), reference.most_similar_cosmul(**analogy))
    weighted = {"positive": [("w1", 2.0), "w2"], "negative": [("w4", -0.5)], "restrict_vocab": 60}
    assert_same_results(vectors.most_similar(**weighted), reference.most_similar(**weighted))
    np.testing.assert_allclose(
        vectors.most_similar("w3", topn=None), reference.most_similar("w3", topn=None), atol=1e-6
    )
    query = np.random.default_rng(0).normal(size=DIM).astype(np.float32)
    assert_same_results(vectors.similar_by_vector(query), reference.similar_by_vector(query))
    assert vectors.similarity("w1", "w2") == pytest.approx(float(reference.similarity("w1", "w2")), abs=1e-6)
    assert vectors.distance("w1", "w2") == pytest.approx(float(reference.distance("w1", "w2")), abs=1e-6)


@pytest.mark.parametrize("codebook_size", [16, 8])
def test_rows_scored_and_decoded_in_chunks_equal_one_pass(
    monkeypatch: pytest.MonkeyPatch, codebook_size: int
) -> None:
    vectors = make_vectors(codebook_size=codebook_size, padding_idx=50)
    whole = vectors.most_similar(positive=["w1", "w2"], negative=["w3"], topn=None)
    monkeypatch.setattr("dccl_hf.keyed_vectors.CHUNK_ROWS", 7)
    monkeypatch.setattr("dccl_hf.keyed_vectors.DECODE_ROWS", 5)
    chunked_vectors = CompressedKeyedVectors(vectors.embedding)
    np.testing.assert_array_equal(chunked_vectors.norms, vectors.norms)
    chunked = chunked_vectors.most_similar(positive=["w1", "w2"], negative=["w3"], topn=None)
    np.testing.assert_allclose(chunked, whole, atol=1e-6)
    reference = dense(vectors).most_similar(
        positive=["w1", "w2"], negative=["w3"], topn=None, restrict_vocab=40
    )
    restricted = vectors.most_similar(positive=["w1", "w2"], negative=["w3"], topn=None, restrict_vocab=40)
    np.testing.assert_allclose(restricted, reference, atol=1e-6)


def test_queries_never_rebuild_the_table(monkeypatch: pytest.MonkeyPatch) -> None:
    vectors = make_vectors()
    decoded: list[int] = []
    original = CompressedEmbedding.forward

    def counting(self: CompressedEmbedding, ids: torch.Tensor) -> torch.Tensor:
        decoded.append(ids.numel())
        return original(self, ids)

    monkeypatch.setattr(CompressedEmbedding, "forward", counting)
    monkeypatch.setattr(CompressedEmbedding, "reconstruct", lambda self: pytest.fail("table rebuilt"))
    vectors.most_similar(positive=["w5", "w7"], negative=["w9"])
    vectors.most_similar_cosmul(positive=["w5", "w7"], negative=["w9"])
    assert decoded == [1, 1, 1, 1, 1, 1]  # only the query words' rows


def test_padding_row_scores_zero_like_the_reconstructed_zero_row() -> None:
    vectors = make_vectors(padding_idx=4)
    assert vectors.norms[4] == 0
    table = vectors.embedding.reconstruct().detach()
    unit = table / table.norm(dim=1, keepdim=True).clamp_min(1e-30)
    expected = unit @ unit[0]
    similarities = vectors.most_similar("w0", topn=None)
    assert similarities[4] == 0
    np.testing.assert_allclose(similarities, expected.numpy(), atol=1e-6)
    assert dict(vectors.most_similar("w0", topn=ROWS))["w4"] == 0


def test_lookups_like_keyed_vectors() -> None:
    vectors = make_vectors()
    table = vectors.embedding.reconstruct().detach().numpy()
    assert len(vectors) == ROWS
    assert vectors.vector_size == DIM
    assert vectors.key_to_index["w7"] == 7
    assert vectors.index_to_key[7] == "w7"
    assert "w7" in vectors
    assert "nope" not in vectors
    np.testing.assert_allclose(vectors["w7"], table[7], atol=1e-6)
    np.testing.assert_allclose(vectors[["w7", "w2"]], table[[7, 2]], atol=1e-6)
    np.testing.assert_allclose(
        vectors.get_vector(7, norm=True), table[7] / np.linalg.norm(table[7]), atol=1e-6
    )
    assert vectors.get_index("nope", default=-1) == -1
    with pytest.raises(KeyError, match="'nope' not present"):
        vectors["nope"]
    with pytest.raises(KeyError, match="'nope' not present"):
        vectors.most_similar(positive=["w1"], negative=["nope"])


def test_a_table_without_words_is_refused() -> None:
    embedding = CompressedEmbedding(10, 4, 2, 4)
    with pytest.raises(ValueError, match="has no words"):
        CompressedKeyedVectors(embedding)


def test_duplicated_words_look_up_their_first_row() -> None:
    embedding = make_vectors().embedding
    embedding.words = ["same", *WORDS[1:-1], "same"]
    vectors = CompressedKeyedVectors(embedding)
    assert vectors.key_to_index["same"] == 0
    results = vectors.most_similar("same", topn=ROWS)
    assert len(results) == ROWS - 1  # row 0, the query, is left out; row 119 is another row
    assert dict(results)["same"] == pytest.approx(vectors.similarity(0, ROWS - 1), abs=1e-6)


def test_to_gensim_holds_the_reconstructed_table() -> None:
    vectors = make_vectors()
    exported = vectors.to_gensim()
    assert exported.index_to_key == WORDS
    np.testing.assert_allclose(exported.vectors, vectors.embedding.reconstruct().detach().numpy(), atol=1e-6)


@pytest.mark.parametrize("binary", [False, True])
def test_word2vec_files_load_in_gensim_and_dccl_hf(tmp_path: Path, binary: bool) -> None:
    vectors = make_vectors()
    table = vectors.embedding.reconstruct().detach().numpy()
    path = vectors.save_word2vec_format(tmp_path / ("v.bin" if binary else "v.txt"), binary=binary)
    loaded = KeyedVectors.load_word2vec_format(path, binary=binary)
    assert loaded.index_to_key == WORDS
    np.testing.assert_array_equal(loaded.vectors, table)  # both dialects keep float32 exactly
    source = read_embeddings(path, progress=False)
    assert source.words == WORDS
    np.testing.assert_array_equal(source.matrix, table)


def test_word2vec_refuses_words_with_whitespace_and_writes_nothing(tmp_path: Path) -> None:
    embedding = make_vectors().embedding
    embedding.words = [*WORDS[:-1], "two words"]
    with pytest.raises(ValueError, match=r"word 119 \('two words'\) is empty or contains whitespace"):
        CompressedKeyedVectors(embedding).save_word2vec_format(tmp_path / "v.txt")
    assert list(tmp_path.iterdir()) == []


def test_from_pretrained_and_the_hub(hub_server: HubServer, tmp_path: Path) -> None:
    vectors = make_vectors()
    vectors.save_pretrained(tmp_path / "artifact")
    loaded = CompressedKeyedVectors.from_pretrained(tmp_path / "artifact")
    assert_same_results(loaded.most_similar("w3"), vectors.most_similar("w3"))
    vectors.push_to_hub("dccl-tester/keyed-vectors")
    pulled = CompressedKeyedVectors.from_pretrained("dccl-tester/keyed-vectors", cache_dir=tmp_path / "cache")
    assert pulled.index_to_key == WORDS
    assert_same_results(pulled.most_similar("w3"), vectors.most_similar("w3"))


@pytest.mark.parametrize(
    ("format", "suffix", "binary"), [("word2vec", "txt", False), ("word2vec-binary", "bin", True)]
)
def test_cli_exports_word2vec(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], format: str, suffix: str, binary: bool
) -> None:
    vectors = make_vectors()
    vectors.save_pretrained(tmp_path / "artifact")
    arguments = ["export", str(tmp_path / "artifact"), "-o", str(tmp_path / "out"), "--format", format]
    assert main(arguments) == 0
    assert f"out.{suffix}: {ROWS} words x {DIM} dims" in capsys.readouterr().out
    loaded = KeyedVectors.load_word2vec_format(tmp_path / f"out.{suffix}", binary=binary)
    np.testing.assert_array_equal(loaded.vectors, vectors.embedding.reconstruct().detach().numpy())
    assert main(arguments) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert main([*arguments, "--overwrite"]) == 0


def test_cli_word2vec_export_needs_words(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    CompressedEmbedding(10, 4, 2, 4).save_pretrained(tmp_path / "artifact")
    assert (
        main(["export", str(tmp_path / "artifact"), "-o", str(tmp_path / "o"), "--format", "word2vec"]) == 2
    )
    assert "has no vocab.txt" in capsys.readouterr().err
