"""Words saved with a `CompressedEmbedding` artifact (vocab.txt): round trips, staleness, the Hub."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from hub_server import HubServer
from safetensors.torch import load_file

from dccl_hf import CompressedEmbedding
from dccl_hf.artifacts import (
    CONFIG_NAME,
    CONFIG_RECORD_KEY,
    VOCAB_NAME,
    WEIGHTS_NAME,
    ArtifactError,
    safetensors_bytes,
)

ROWS = 24
WORDS = [f"wörd {row}" for row in range(ROWS)]  # non-ASCII and inner spaces survive


def make_module(words: list[str] | None = WORDS, seed: int = 0) -> CompressedEmbedding:
    generator = torch.Generator().manual_seed(seed)
    codes = torch.randint(16, (ROWS, 4), generator=generator)
    codebook = torch.randn(4, 16, 5, generator=generator)
    return CompressedEmbedding.from_codes(codes, codebook, words=words)


def config_of(directory: Path) -> dict:
    return json.loads((directory / CONFIG_NAME).read_text())


def test_words_are_saved_as_vocab_txt_and_loaded(tmp_path: Path) -> None:
    make_module().save_pretrained(tmp_path)
    vocab = (tmp_path / VOCAB_NAME).read_bytes()
    assert vocab.decode() == "".join(word + "\n" for word in WORDS)
    assert config_of(tmp_path)["vocab_sha256"] == hashlib.sha256(vocab).hexdigest()
    assert "vocab.txt" in (tmp_path / "README.md").read_text()
    assert CompressedEmbedding.from_pretrained(tmp_path).words == tuple(WORDS)


def test_a_table_without_words_records_none_and_ignores_a_stale_vocab(tmp_path: Path) -> None:
    make_module().save_pretrained(tmp_path)
    make_module(words=None, seed=1).save_pretrained(tmp_path)
    assert not (tmp_path / VOCAB_NAME).exists()  # replaced whole: the words went with their artifact
    assert config_of(tmp_path)["vocab_sha256"] is None
    assert CompressedEmbedding.from_pretrained(tmp_path).words is None


def test_vocab_from_another_save_is_an_error(tmp_path: Path) -> None:
    make_module().save_pretrained(tmp_path)
    (tmp_path / VOCAB_NAME).write_text("".join(f"other{row}\n" for row in range(ROWS)))
    with pytest.raises(ArtifactError, match=r"vocab\.txt: SHA-256 differs"):
        CompressedEmbedding.from_pretrained(tmp_path)
    (tmp_path / VOCAB_NAME).unlink()
    with pytest.raises(ArtifactError, match=r"vocab\.txt: missing"):
        CompressedEmbedding.from_pretrained(tmp_path)


def save_without_vocab_sha256(directory: Path) -> None:
    """An artifact as saved before ``vocab_sha256`` existed: neither config.json nor its copy in the weights has it."""
    make_module().save_pretrained(directory)
    config = config_of(directory)
    del config["vocab_sha256"]
    del config["model_sha256"]
    header_size = int.from_bytes((directory / WEIGHTS_NAME).read_bytes()[:8], "little")
    header = json.loads((directory / WEIGHTS_NAME).read_bytes()[8 : 8 + header_size])
    metadata = {
        **header["__metadata__"],
        CONFIG_RECORD_KEY: json.dumps(config, sort_keys=True, separators=(",", ":")),
    }
    tensors = load_file(directory / WEIGHTS_NAME)
    weights = safetensors_bytes(tensors, metadata)
    (directory / WEIGHTS_NAME).write_bytes(weights)
    config["model_sha256"] = hashlib.sha256(weights).hexdigest()
    (directory / CONFIG_NAME).write_text(json.dumps(config))


def test_artifact_saved_before_vocab_sha256_uses_its_vocab(tmp_path: Path) -> None:
    save_without_vocab_sha256(tmp_path)
    assert CompressedEmbedding.from_pretrained(tmp_path).words == tuple(WORDS)
    (tmp_path / VOCAB_NAME).write_text("too\nfew\n")
    with pytest.raises(ArtifactError, match=f"2 words for the {ROWS} rows"):
        CompressedEmbedding.from_pretrained(tmp_path)
    (tmp_path / VOCAB_NAME).unlink()
    assert CompressedEmbedding.from_pretrained(tmp_path).words is None


@pytest.mark.parametrize(
    ("words", "message"),
    [(WORDS[:-1], f"got {ROWS - 1} words for {ROWS} rows"), ([*WORDS[:-1], "a\nb"], "contains a newline")],
)
def test_bad_words_are_refused(words: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_module(words=words)


def test_push_to_hub_uploads_the_words(hub_server: HubServer, tmp_path: Path) -> None:
    make_module().push_to_hub("dccl-tester/with-words")
    files = hub_server.files("dccl-tester/with-words")
    assert files[VOCAB_NAME].content.decode().split("\n")[:2] == WORDS[:2]
    loaded = CompressedEmbedding.from_pretrained("dccl-tester/with-words", cache_dir=tmp_path)
    assert loaded.words == tuple(WORDS)
    make_module(words=None).push_to_hub("dccl-tester/without-words")
    assert VOCAB_NAME not in hub_server.files("dccl-tester/without-words")
    assert CompressedEmbedding.from_pretrained("dccl-tester/without-words", cache_dir=tmp_path).words is None


def test_an_edited_vocab_sha256_is_caught_by_the_config_copy(tmp_path: Path) -> None:
    make_module().save_pretrained(tmp_path)
    config = config_of(tmp_path)
    config["vocab_sha256"] = None  # would silently drop the words
    (tmp_path / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(ArtifactError, match="'vocab_sha256' differ"):
        CompressedEmbedding.from_pretrained(tmp_path)
