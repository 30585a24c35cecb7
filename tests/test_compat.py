"""The private transformers behaviours `dccl_hf._compat` relies on still hold (a failure here after an upgrade
names the helper to revisit)."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from dccl_hf._compat import allow_dtype_casts


def tiny_llama() -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
    )
    return LlamaForCausalLM(config)


def test_allow_dtype_casts_clears_what_blocks_half_and_float() -> None:
    model = tiny_llama()
    model.is_quantized = True  # what HfQuantizer.preprocess_model sets
    with pytest.raises(ValueError, match="not supported for quantized model"):
        model.half()
    with pytest.raises(ValueError, match="not supported for quantized model"):
        model.float()
    allow_dtype_casts(model)
    assert model.half().model.embed_tokens.weight.dtype == torch.float16
    assert model.float().model.embed_tokens.weight.dtype == torch.float32
