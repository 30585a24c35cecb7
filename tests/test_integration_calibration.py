"""`resize_with_codes(..., tokenizer=, calibration=)`: calibration weighting and distillation beat plain codes."""

from __future__ import annotations

import copy

import pytest
import torch
from tiny_text import word_sentences, word_tokenizer
from transformers import BertConfig, BertModel, BertTokenizerFast

import dccl_hf

WORDS = ["the", "a", "cat", "dog", "sat", "on", "mat", "big", "red", "blue", "ran", "fast", "house", "tree"]
FILLER = [f"filler{index}" for index in range(400)]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> BertTokenizerFast:
    return word_tokenizer(tmp_path_factory.mktemp("tokenizer"), [*WORDS, *FILLER])


def sentences(count: int, seed: int) -> list[str]:
    return word_sentences(WORDS, count, seed=seed)


def mean_pooled(model: BertModel, tokenizer: BertTokenizerFast, texts: list[str]) -> torch.Tensor:
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1)


def test_calibration_and_distillation_beat_plain_codes(tokenizer: BertTokenizerFast) -> None:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
        initializer_range=0.5,
    )
    original = BertModel(config).eval()
    held_out = sentences(40, seed=1)
    reference = mean_pooled(original, tokenizer, held_out)

    def fidelity(**options: object) -> float:
        model = copy.deepcopy(original)
        model.resize_with_codes(2, 4, seed=0, max_iterations=3, progress=False, **options)
        pooled = mean_pooled(model.eval(), tokenizer, held_out)
        return torch.nn.functional.cosine_similarity(pooled, reference).mean().item()

    calibration = sentences(120, seed=2)
    plain = fidelity()
    weighted = fidelity(tokenizer=tokenizer, calibration=calibration, distill=False)
    distilled = fidelity(
        tokenizer=tokenizer, calibration=calibration, distill_options={"steps": 60, "progress": False}
    )
    assert weighted > plain + 0.01, (plain, weighted)
    assert distilled > weighted + 0.01, (weighted, distilled)


def test_calibration_conflicts_are_clear_errors(tokenizer: BertTokenizerFast) -> None:
    model = BertModel(
        BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=8,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=16,
        )
    )
    with pytest.raises(TypeError, match="either calibration"):
        dccl_hf.resize_with_codes(
            model, 2, 4, calibration=["the cat"], tokenizer=tokenizer, weights=torch.ones(len(tokenizer))
        )
    with pytest.raises(ValueError, match="needs calibration texts"):
        dccl_hf.resize_with_codes(model, 2, 4, distill=True, max_iterations=1, progress=False)
