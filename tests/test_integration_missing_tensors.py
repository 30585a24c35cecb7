"""A dccl checkpoint whose codes or codebook are missing or of the wrong size is an error naming the tensor,
never a model with uninitialised memory (also with ``ignore_mismatched_sizes=True``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

import dccl_hf  # noqa: F401 (registers the dccl quantization method)
from dccl_hf import CompressedEmbedding

VOCAB, HIDDEN = 60, 16


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=VOCAB, n_embd=HIDDEN, n_layer=1, n_head=2, n_positions=16, bos_token_id=0, eos_token_id=0
    )
    model = GPT2LMHeadModel(config).eval()
    generator = torch.Generator().manual_seed(0)
    codes = torch.randint(16, (VOCAB, 4), generator=generator)
    model.resize_with_codes(
        CompressedEmbedding.from_codes(codes, torch.randn(4, 16, HIDDEN, generator=generator))
    )
    directory = tmp_path_factory.mktemp("checkpoint") / "model"
    model.save_pretrained(directory)
    return directory


def copy_checkpoint(source: Path, target: Path) -> Path:
    target.mkdir()
    for path in source.iterdir():
        (target / path.name).write_bytes(path.read_bytes())
    return target


def test_the_intact_checkpoint_loads(checkpoint: Path) -> None:
    embedding = AutoModelForCausalLM.from_pretrained(checkpoint).get_input_embeddings()
    assert isinstance(embedding, CompressedEmbedding)
    assert torch.isfinite(embedding.codebook).all()


@pytest.mark.parametrize("tensor", ["codebook", "packed_codes"])
def test_a_missing_tensor_is_an_error_naming_it(checkpoint: Path, tmp_path: Path, tensor: str) -> None:
    directory = copy_checkpoint(checkpoint, tmp_path / "model")
    weights = load_file(directory / "model.safetensors")
    del weights[f"transformer.wte.{tensor}"]
    save_file(weights, directory / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=rf"no 'transformer\.wte\.{tensor}' of shape"):
        AutoModelForCausalLM.from_pretrained(directory)


@pytest.mark.parametrize("key", ["num_codebooks", "codebook_size"])
def test_a_tampered_shape_is_an_error_even_when_mismatches_are_ignored(
    checkpoint: Path, tmp_path: Path, key: str
) -> None:
    directory = copy_checkpoint(checkpoint, tmp_path / "model")
    config = json.loads((directory / "config.json").read_text())
    config["quantization_config"][key] *= 2
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"no 'transformer\.wte\.(codebook|packed_codes)' of shape"):
        AutoModelForCausalLM.from_pretrained(directory, ignore_mismatched_sizes=True)
