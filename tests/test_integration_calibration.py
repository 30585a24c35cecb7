"""`resize_with_codes(..., tokenizer=, calibration=)`: calibration weighting and distillation beat plain codes;
the input sensitivity metric is measured for untied models (tied heads get the head's, tests/test_head.py)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from tiny_models import llama_config
from tiny_text import WORDS, bert_config, word_sentences, word_tokenizer
from transformers import (
    BertConfig,
    BertModel,
    BertTokenizerFast,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaForCausalLM,
    PreTrainedModel,
)

import dccl_hf
import dccl_hf.integration.model as integration_model
from dccl_hf.fidelity.budget import sentence_embeddings

FILLER = [f"filler{index}" for index in range(400)]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> BertTokenizerFast:
    return word_tokenizer(tmp_path_factory.mktemp("tokenizer"), [*WORDS, *FILLER])


def sentences(count: int, seed: int) -> list[str]:
    return word_sentences(WORDS, count, seed=seed)


def small_bert(vocab_size: int) -> BertModel:
    torch.manual_seed(0)
    return BertModel(bert_config(vocab_size, initializer_range=0.5)).eval()


def causal_lm(kind: str, vocab_size: int) -> PreTrainedModel:
    """A tiny GPT-2 (head tied to the embeddings) or Llama with a tied or untied head."""
    torch.manual_seed(0)
    if kind == "gpt2":
        return GPT2LMHeadModel(
            GPT2Config(vocab_size=vocab_size, n_embd=16, n_layer=1, n_head=2, n_positions=32)
        )
    config = llama_config(vocab_size, 16, tied=kind == "llama-tied", num_hidden_layers=1)
    return LlamaForCausalLM(config)


class SensitivityCalledError(Exception):
    """Raised by the stand-in for `embedding_sensitivity` in tests that must not reach it."""


def refuse_sensitivity(*args: object, **kwargs: object) -> torch.Tensor:
    raise SensitivityCalledError


#: Quick code learning without distillation.
QUICK: dict[str, Any] = {"seed": 0, "max_iterations": 2, "progress": False, "distill": False}


def test_calibration_and_distillation_beat_plain_codes(tokenizer: BertTokenizerFast) -> None:
    torch.manual_seed(0)
    config = bert_config(len(tokenizer), hidden_size=32, intermediate_size=64, initializer_range=0.5)
    original = BertModel(config).eval()
    held_out = sentences(40, seed=1)
    reference = sentence_embeddings(original, tokenizer, held_out)

    def fidelity(**options: object) -> float:
        model = copy.deepcopy(original)
        model.resize_with_codes(2, 4, seed=0, max_iterations=3, progress=False, **options)
        pooled = sentence_embeddings(model.eval(), tokenizer, held_out)
        return torch.nn.functional.cosine_similarity(pooled, reference).mean().item()

    calibration = sentences(120, seed=2)
    plain = fidelity()
    weighted = fidelity(tokenizer=tokenizer, calibration=calibration, distill=False)
    distilled = fidelity(
        tokenizer=tokenizer,
        calibration=calibration,
        distill_options={"steps": 300, "lr": 2e-2, "progress": False},
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


def test_untied_models_are_compressed_under_their_sensitivity_by_default(
    tokenizer: BertTokenizerFast, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = small_bert(len(tokenizer))
    calibration = sentences(30, seed=3)
    calls: list[tuple[list[str], dict[str, Any]]] = []
    real = integration_model.embedding_sensitivity

    def spy(model: PreTrainedModel, tok: BertTokenizerFast, texts: list[str], **options: Any) -> torch.Tensor:
        assert model.get_input_embeddings().weight.shape == (len(tokenizer), 16)  # measured before the swap
        calls.append((texts, options))
        return real(model, tok, texts, **options)

    monkeypatch.setattr(integration_model, "embedding_sensitivity", spy)

    def codebook(**options: Any) -> torch.Tensor:
        model = copy.deepcopy(original)
        return model.resize_with_codes(
            2, 4, tokenizer=tokenizer, calibration=calibration, **QUICK, **options
        ).codebook

    default = codebook(sensitivity_options={"probes": 1, "seed": 5})
    assert calls == [(calibration, {"progress": False, "probes": 1, "seed": 5})]
    plain = codebook(sensitivity=False)
    assert len(calls) == 1
    assert not torch.allclose(default, plain, atol=1e-3)
    # The metric reaches the code learning: passing the same metric by hand gives the same codebook.
    metric = real(original, tokenizer, calibration, probes=1, seed=5, progress=False)
    torch.testing.assert_close(codebook(sensitivity=False, metric=metric), default, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"calibration": {5: 3, 6: 1}}, r"calibration=\[\.\.\.texts\]"),
        ({"calibration": ["the cat sat"], "metric": torch.eye(16)}, "no metric="),
    ],
    ids=["counts", "metric-given"],
)
def test_sensitivity_needs_texts_and_no_metric(
    tokenizer: BertTokenizerFast, monkeypatch: pytest.MonkeyPatch, options: dict[str, Any], message: str
) -> None:
    monkeypatch.setattr(integration_model, "embedding_sensitivity", refuse_sensitivity)
    model = small_bert(len(tokenizer))
    with pytest.raises(ValueError, match=message):
        model.resize_with_codes(2, 4, tokenizer=tokenizer, sensitivity=True, **QUICK, **options)
    assert isinstance(model.get_input_embeddings(), torch.nn.Embedding)  # left as it was
    if "metric" not in options:  # token counts alone never trigger the measurement
        model.resize_with_codes(2, 4, tokenizer=tokenizer, **QUICK, **options)


@pytest.mark.parametrize(
    ("kind", "measured"), [("gpt2", False), ("llama-tied", False), ("llama-untied", True)]
)
def test_tied_heads_are_learned_under_the_head_metric_instead_of_the_input_sensitivity(
    tokenizer: BertTokenizerFast, monkeypatch: pytest.MonkeyPatch, kind: str, measured: bool
) -> None:
    monkeypatch.setattr(integration_model, "embedding_sensitivity", refuse_sensitivity)
    model = causal_lm(kind, len(tokenizer))
    options: dict[str, Any] = {"tokenizer": tokenizer, "calibration": sentences(10, seed=4), **QUICK}
    if measured:
        with pytest.raises(SensitivityCalledError):
            model.resize_with_codes(2, 4, **options)
        model.resize_with_codes(2, 4, sensitivity=False, **options)
    else:  # tests/test_head.py checks what tied heads get instead
        model.resize_with_codes(2, 4, **options)
    assert isinstance(model.get_input_embeddings(), dccl_hf.CompressedEmbedding)


def test_sensitivity_options_without_learning_are_clear_errors(tokenizer: BertTokenizerFast) -> None:
    model = small_bert(len(tokenizer))
    compressed = dccl_hf.compress(
        model.get_input_embeddings().weight.detach(), 2, 4, max_iterations=1, progress=False
    )
    with pytest.raises(TypeError, match="not both"):
        dccl_hf.resize_with_codes(model, compressed, sensitivity=True)
    dccl_hf.resize_with_codes(model, compressed)
    with pytest.raises(TypeError, match="sensitivity_options"):
        dccl_hf.resize_with_codes(model, new_num_tokens=len(tokenizer) + 2, sensitivity_options={"probes": 1})


def test_tokenizers_without_a_padding_token_pad_with_their_end_of_text_token(
    tokenizer: BertTokenizerFast,
) -> None:
    gpt2_like = copy.deepcopy(tokenizer)
    gpt2_like.pad_token, gpt2_like.eos_token = None, "[SEP]"
    model = causal_lm("gpt2", len(tokenizer))
    options = {**QUICK, "distill": True, "distill_options": {"steps": 2}}
    compressed = model.resize_with_codes(
        2, 4, tokenizer=gpt2_like, calibration=sentences(12, seed=6), sensitivity=True, **options
    )
    assert isinstance(model.get_input_embeddings(), dccl_hf.CompressedEmbedding)
    assert compressed.num_embeddings == len(tokenizer)
    assert gpt2_like.pad_token is None  # the caller's tokenizer is left as it was
    gpt2_like.eos_token = None
    with pytest.raises(ValueError, match=r"set tokenizer\.pad_token"):
        causal_lm("gpt2", len(tokenizer)).resize_with_codes(
            2, 4, tokenizer=gpt2_like, calibration=sentences(12, seed=6), **options
        )


def test_padding_idx_and_new_num_tokens_combine_with_calibration(tokenizer: BertTokenizerFast) -> None:
    model = small_bert(len(tokenizer))
    compressed = model.resize_with_codes(
        2,
        4,
        new_num_tokens=len(tokenizer) + 3,
        padding_idx=1,
        tokenizer=tokenizer,
        calibration=sentences(12, seed=7),
        **{**QUICK, "distill": True, "distill_options": {"steps": 2}},
    )
    assert compressed.num_embeddings == len(tokenizer) + 3
    assert compressed.padding_idx == 1
    assert set(model.config.quantization_config.reconstruction) >= {"mean_euclidean_distance"}
