"""Tiny random Llama models for the integration tests: small enough to build in milliseconds."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def llama_config(vocab_size: int, hidden_size: int, *, tied: bool = True, **overrides: object) -> LlamaConfig:
    """A Llama of two layers with two heads and an MLP twice as wide; `overrides` replace any field."""
    fields: dict[str, object] = {
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "intermediate_size": 2 * hidden_size,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "max_position_embeddings": 32,
        "tie_word_embeddings": tied,
    }
    fields.update(overrides)
    return LlamaConfig(**fields)


def compressed_llama(vocab_size: int, hidden_size: int, *, tied: bool = True) -> LlamaForCausalLM:
    """A seeded tiny Llama (eval mode) whose input embeddings (and tied head) are compressed at M=4, K=16."""
    torch.manual_seed(0)
    model = LlamaForCausalLM(llama_config(vocab_size, hidden_size, tied=tied)).eval()
    model.resize_with_codes(4, 16, progress=False, max_iterations=1, seed=0)
    return model
