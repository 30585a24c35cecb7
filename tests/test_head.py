"""A table tied to an LM head: the head's hidden-state metric, floor weights for every row, and the default of
`resize_with_codes` serving both sides (rare rows' spurious logits bounded, frequent rows still accurate)."""

from __future__ import annotations

import copy

import pytest
import torch
from tiny_models import llama_config
from tiny_text import WORDS, word_sentences, word_tokenizer
from transformers import BertTokenizerFast, LlamaForCausalLM

import dccl_hf.integration.model as integration_model
from dccl_hf.fidelity.calibration import token_counts, weights_from_counts
from dccl_hf.fidelity.head import head_second_moment, tied_head_weights

RARE = [f"rare{index}" for index in range(300)]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> BertTokenizerFast:
    return word_tokenizer(tmp_path_factory.mktemp("tokenizer"), [*WORDS, *RARE])


def tiny_llama(vocab_size: int, *, tied: bool = True, hidden_size: int = 16) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = llama_config(vocab_size, hidden_size, tied=tied, num_hidden_layers=1, initializer_range=0.5)
    return LlamaForCausalLM(config).eval()


def test_head_second_moment_is_the_normalised_moment_of_the_final_hidden_states(
    tokenizer: BertTokenizerFast,
) -> None:
    model = tiny_llama(len(tokenizer))
    texts = word_sentences(WORDS, 10, seed=0)
    moment = head_second_moment(model, tokenizer, texts, batch_size=3, progress=False)
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch, output_hidden_states=True).hidden_states[-1]
    hidden = hidden[batch["attention_mask"].bool()].double()
    expected = hidden.T @ hidden
    torch.testing.assert_close(moment, expected * (16 / expected.trace()))
    assert torch.isclose(moment.trace(), torch.tensor(16.0, dtype=torch.float64))


def test_head_second_moment_needs_a_head_and_texts(tokenizer: BertTokenizerFast) -> None:
    model = tiny_llama(len(tokenizer))
    with pytest.raises(ValueError, match="non-empty list"):
        head_second_moment(model, tokenizer, [], progress=False)
    with pytest.raises(ValueError, match="max_texts"):
        head_second_moment(model, tokenizer, ["the cat"], max_texts=0, progress=False)


def test_tied_head_weights_put_a_floor_under_every_row() -> None:
    counts = torch.tensor([0.0, 0.0, 10.0, 1000.0])
    frequency = weights_from_counts(counts)
    torch.testing.assert_close(tied_head_weights(counts, floor=0.0), frequency)
    torch.testing.assert_close(tied_head_weights(counts, floor=1.0), torch.ones(4))
    weights = tied_head_weights(counts, floor=0.5)
    assert float(weights.mean()) == pytest.approx(1.0)
    assert float(weights[0]) >= 0.5
    with pytest.raises(ValueError, match=r"floor must be in \[0, 1\]"):
        tied_head_weights(counts, floor=1.5)


def spurious_logits(model: LlamaForCausalLM, table: torch.Tensor, texts: list[str], tokenizer, rows) -> float:
    """The largest logit error h_tᵀΔ_i over `rows`, averaged over the positions of `texts`: how far the worst of
    those rows rises above where it belongs."""
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch, output_hidden_states=True).hidden_states[-1][batch["attention_mask"].bool()]
    error = table[rows] - model.get_input_embeddings().weight.detach()[rows]
    return float((hidden @ error.T).max(1).values.mean())


def test_the_default_for_a_tied_head_serves_the_head_and_the_input_side(tokenizer: BertTokenizerFast) -> None:
    """Calibration text uses only the everyday words: the rare rows are never seen, but the head reads them at
    every position. The default objective bounds their spurious logits far better than frequency weights alone
    (the input side's objective) or uniform weights, and still rebuilds the frequent rows far better than uniform
    weights do."""
    original = tiny_llama(len(tokenizer), hidden_size=32)
    calibration = word_sentences(WORDS, 1000, seed=1)
    held_out = word_sentences(WORDS, 30, seed=2)
    counts = token_counts(tokenizer, calibration, len(tokenizer), progress=False)
    rare = torch.tensor([tokenizer.convert_tokens_to_ids(word) for word in RARE])
    frequent = torch.tensor([tokenizer.convert_tokens_to_ids(word) for word in WORDS])
    dense = original.get_input_embeddings().weight.detach().clone()
    options = {"seed": 0, "max_iterations": 4, "progress": False, "distill": False}

    def table(**extra: object) -> torch.Tensor:
        model = copy.deepcopy(original)
        return (
            model.resize_with_codes(4, 16, tokenizer=tokenizer, **options, **extra)
            .to_embedding()
            .weight.detach()
        )

    default = table(calibration=calibration)
    frequency_only = table(weights=weights_from_counts(counts))
    default_spurious = spurious_logits(original, default, held_out, tokenizer, rare)
    frequency_spurious = spurious_logits(original, frequency_only, held_out, tokenizer, rare)
    assert default_spurious < 0.8 * frequency_spurious, (default_spurious, frequency_spurious)

    def frequent_error(rebuilt: torch.Tensor) -> float:
        return float((rebuilt[frequent] - dense[frequent]).pow(2).sum(1).mean())

    uniform = table(weights=torch.ones(len(tokenizer)))
    assert frequent_error(default) < 0.5 * frequent_error(uniform), (
        frequent_error(default),
        frequent_error(uniform),
    )


def test_tied_heads_measure_the_head_untied_ones_the_input_sensitivity(
    tokenizer: BertTokenizerFast, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    real_head, real_input = integration_model.head_second_moment, integration_model.embedding_sensitivity

    def head_spy(*args: object, **options: object) -> torch.Tensor:
        calls.append("head")
        return real_head(*args, **options)

    def input_spy(*args: object, **options: object) -> torch.Tensor:
        calls.append("input")
        return real_input(*args, **options)

    monkeypatch.setattr(integration_model, "head_second_moment", head_spy)
    monkeypatch.setattr(integration_model, "embedding_sensitivity", input_spy)
    options = {"seed": 0, "max_iterations": 1, "progress": False, "distill": False}
    calibration = word_sentences(WORDS, 20, seed=3)
    tiny_llama(len(tokenizer)).resize_with_codes(
        2, 4, tokenizer=tokenizer, calibration=calibration, **options
    )
    assert calls == ["head"]
    untied = tiny_llama(len(tokenizer), tied=False)
    head_before = untied.get_output_embeddings().weight.detach().clone()
    untied.resize_with_codes(2, 4, tokenizer=tokenizer, calibration=calibration, **options)
    assert calls == ["head", "input"]
    assert torch.equal(untied.get_output_embeddings().weight, head_before)  # an untied head stays as it is
    tiny_llama(len(tokenizer)).resize_with_codes(
        2, 4, tokenizer=tokenizer, calibration=calibration, sensitivity=False, **options
    )
    assert calls == ["head", "input"]
    with pytest.raises(TypeError, match="pass no weights"):
        tiny_llama(len(tokenizer)).resize_with_codes(
            2, 4, tokenizer=tokenizer, calibration=calibration, weights=torch.ones(len(tokenizer)), **options
        )


def test_a_tied_head_is_distilled_on_logits_within_time_budgets_by_default(
    tokenizer: BertTokenizerFast, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, dict[str, object]] = {}
    real_compress, real_distill = integration_model.compress, integration_model.distill_codebook

    def compress_spy(*args: object, **options: object) -> object:
        seen["compress"] = options
        return real_compress(*args, **{**options, "time_budget": None})

    def distill_spy(*args: object, **options: object) -> object:
        seen["distill"] = options
        return real_distill(*args, **{**options, "time_budget": None, "steps": 1})

    monkeypatch.setattr(integration_model, "compress", compress_spy)
    monkeypatch.setattr(integration_model, "distill_codebook", distill_spy)
    calibration = word_sentences(WORDS, 20, seed=4)
    options = {"seed": 0, "max_iterations": 1, "progress": False}
    tiny_llama(len(tokenizer)).resize_with_codes(
        2, 4, tokenizer=tokenizer, calibration=calibration, **options
    )
    assert seen["compress"]["time_budget"] == integration_model.TIED_HEAD_COMPRESS_BUDGET
    assert seen["distill"] == integration_model.TIED_HEAD_DISTILLATION
    tiny_llama(len(tokenizer)).resize_with_codes(
        2, 4, tokenizer=tokenizer, calibration=calibration, distill_options={"steps": 1}, **options
    )
    assert seen["distill"] == {"loss": "logits", "batch_size": 8, "steps": 1}  # steps replace the time budget
    tiny_llama(len(tokenizer), tied=False).resize_with_codes(
        2, 4, tokenizer=tokenizer, calibration=calibration, **options
    )
    assert "time_budget" not in seen["compress"]  # untied: the encoders' defaults
    assert seen["distill"] == {}
