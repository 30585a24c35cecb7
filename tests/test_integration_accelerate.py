"""Dtype casts, the meta device and accelerate's dispatch on compressed models (tiny random Llama, tied head)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from accelerate import init_empty_weights, load_checkpoint_and_dispatch
from tiny_models import compressed_llama
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedModel

import dccl_hf
from dccl_hf import CompressedEmbedding
from dccl_hf.integration.layer import CompressedLMHead

VOCAB, HIDDEN = 120, 32


def build(tied: bool = True) -> PreTrainedModel:
    return compressed_llama(VOCAB, HIDDEN, tied=tied)


def logits(model: PreTrainedModel) -> torch.Tensor:
    ids = torch.randint(0, VOCAB, (2, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model(ids.to(model.device)).logits.float().cpu()


@pytest.mark.parametrize(
    "cast",
    [
        lambda model: model.half(),
        lambda model: model.to(torch.float16),
        lambda model: model.to(dtype=torch.bfloat16),
        lambda model: model.bfloat16(),
    ],
    ids=["half", "to-float16", "to-dtype-bfloat16", "bfloat16"],
)
def test_dtype_casts_cast_the_codebook_and_keep_the_codes(cast) -> None:
    model = build()
    codes = model.get_input_embeddings().packed_codes.clone()
    expected = logits(model)
    cast(model)
    embedding = model.get_input_embeddings()
    assert embedding.codebook.dtype in (torch.float16, torch.bfloat16)
    assert torch.equal(embedding.packed_codes, codes)
    torch.testing.assert_close(logits(model), expected, atol=0.05, rtol=0.05)
    model.float()
    assert embedding.codebook.dtype == torch.float32
    torch.testing.assert_close(logits(model), expected, atol=0.05, rtol=0.05)


def test_loaded_model_casts_too(tmp_path: Path) -> None:
    build().save_pretrained(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float16)
    assert model.get_input_embeddings().codebook.dtype == torch.float16
    model.float()
    assert model.get_input_embeddings().codebook.dtype == torch.float32
    assert model.hf_quantizer is not None  # still a dccl model for save_pretrained and dequantize


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_meta_device_build_then_accelerate_dispatch(tied: bool, tmp_path: Path) -> None:
    model = build(tied)
    model.save_pretrained(tmp_path)
    with init_empty_weights():
        empty = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(tmp_path))
    dccl_hf.init_compressed_modules(empty)
    embedding = empty.get_input_embeddings()
    assert isinstance(embedding, CompressedEmbedding)
    assert embedding.codebook.device.type == "meta"
    assert isinstance(empty.get_output_embeddings(), CompressedLMHead) == tied
    dispatched = load_checkpoint_and_dispatch(empty, str(tmp_path), device_map="auto").eval()
    assert torch.equal(
        dispatched.get_input_embeddings().packed_codes, model.get_input_embeddings().packed_codes
    )
    torch.testing.assert_close(logits(dispatched), logits(model))


def test_from_pretrained_with_device_map_auto(tmp_path: Path) -> None:
    model = build()
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, device_map="auto")
    assert loaded.device.type == "cpu"
    torch.testing.assert_close(logits(loaded), logits(model))


def test_init_compressed_modules_needs_a_dccl_config() -> None:
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=1, num_attention_heads=2)
    with pytest.raises(ValueError, match="no dccl quantization_config"):
        dccl_hf.init_compressed_modules(LlamaForCausalLM(config))
